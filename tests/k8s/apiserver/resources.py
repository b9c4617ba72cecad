"""The served kinds, with the defaulting and validation the real API server applies to them."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .store import ApiError, Kind, Obj, Store

KINDS: dict[str, Kind] = {k.resource: k for k in (
    Kind("namespaces", "Namespace", namespaced=False, short_names=("ns",), fields=frozenset({"status.phase"}),
         status=True),
    Kind("services", "Service", short_names=("svc",), fields=frozenset({"spec.clusterIP", "spec.type"}),
         status=True, categories=("all",)),
    Kind("nodes", "Node", namespaced=False, short_names=("no",), fields=frozenset({"spec.unschedulable"}),
         status=True),
    Kind("endpoints", "Endpoints", short_names=("ep",)),
    Kind("events", "Event", short_names=("ev",), fields=frozenset({
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
        "reportingComponent", "source", "type"})),
    Kind("endpointslices", "EndpointSlice", group="discovery.k8s.io", fields=frozenset({"addressType"})),
)}

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
               "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex "
               "used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
DNS1123_SUB_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                   "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                   "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


class Invalid:
    """Collects field errors; raises one 422 Invalid naming every field, as the API server does."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name, self.causes = kind, name, []

    def value(self, field: str, value: Any, msg: str) -> None:
        shown = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value
        self.causes.append({"reason": "FieldValueInvalid", "field": field,
                            "message": f"Invalid value: {shown}: {msg}"})

    def required(self, field: str, msg: str = "") -> None:
        self.causes.append({"reason": "FieldValueRequired", "field": field,
                            "message": "Required value" + (f": {msg}" if msg else "")})

    def forbidden(self, field: str, msg: str) -> None:
        self.causes.append({"reason": "FieldValueForbidden", "field": field, "message": f"Forbidden: {msg}"})

    def unsupported(self, field: str, value: Any, allowed: tuple[str, ...]) -> None:
        quoted = ", ".join(f'"{a}"' for a in allowed)
        self.causes.append({"reason": "FieldValueNotSupported", "field": field,
                            "message": f'Unsupported value: "{value}": supported values: {quoted}'})

    def raise_if_any(self) -> None:
        if not self.causes:
            return
        parts = [f"{c['field']}: {c['message']}" for c in self.causes]
        joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
        raise ApiError(422, "Invalid", f'{self.kind} "{self.name}" is invalid: {joined}',
                       {"name": self.name, "kind": self.kind, "causes": self.causes})


def check_meta(kind: Kind, obj: Obj, inv: Invalid, name_re: re.Pattern[str] = DNS1123_SUBDOMAIN,
               name_msg: str = DNS1123_SUB_MSG) -> None:
    name = obj["metadata"].get("name", "")
    if not name:
        inv.required("metadata.name", "name or generateName is required")
    elif not name_re.match(name) or len(name) > (63 if name_re is DNS1035 else 253):
        inv.value("metadata.name", name, name_msg)
    for field in ("labels", "annotations"):
        val = obj["metadata"].get(field)
        if val is not None and (not isinstance(val, dict) or not all(isinstance(v, str) for v in val.values())):
            inv.value(f"metadata.{field}", str(val), "must be a map of strings")


def prepare(store: Store, resource: str, obj: Obj, old: Obj | None) -> None:
    """Default and validate `obj` for create (old is None) or update; raises ApiError 422 when invalid."""
    kind = KINDS[resource]
    inv = Invalid(kind.kind, obj["metadata"].get("name", ""))
    if resource == "services":
        check_meta(kind, obj, inv, DNS1035, DNS1035_MSG)
        inv.raise_if_any()
        _service(store, obj, old, inv)
    else:
        check_meta(kind, obj, inv)
        if resource == "namespaces":
            name = obj["metadata"].get("name", "")
            if name and not DNS1123_LABEL.match(name):
                inv.causes.clear()
                inv.value("metadata.name", name, "a lowercase RFC 1123 label must consist of lower case "
                          "alphanumeric characters or '-', and must start and end with an alphanumeric character")
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif resource == "endpointslices":
            _endpointslice(obj, inv)
    inv.raise_if_any()


def _endpointslice(obj: Obj, inv: Invalid) -> None:
    at = obj.get("addressType")
    if not at:
        inv.required("addressType")
    elif at not in ("IPv4", "IPv6", "FQDN"):
        inv.unsupported("addressType", at, ("FQDN", "IPv4", "IPv6"))
    eps = obj.get("endpoints")
    if eps is None:
        obj["endpoints"] = eps = []
    for i, ep in enumerate(eps):
        addrs = ep.get("addresses") or []
        if not 1 <= len(addrs) <= 100:
            inv.required(f"endpoints[{i}].addresses", "must contain at least 1 address")
        for j, a in enumerate(addrs):
            if at in ("IPv4", "IPv6"):
                try:
                    ipaddress.ip_address(a)
                except ValueError:
                    inv.value(f"endpoints[{i}].addresses[{j}]", a, f"must be a valid {at} address")
    for i, p in enumerate(obj.get("ports") or []):
        p.setdefault("protocol", "TCP")
        p.setdefault("name", "")
        port = p.get("port")
        if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
            inv.value(f"ports[{i}].port", port, "must be between 1 and 65535, inclusive")


def _used(store: Store, skip: tuple[str, str]) -> tuple[set[str], set[int]]:
    ips: set[str] = set()
    ports: set[int] = set()
    for key, svc in store.objects["services"].items():
        if key == skip:
            continue
        spec = svc.get("spec") or {}
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            ips.add(spec["clusterIP"])
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                ports.add(p["nodePort"])
    return ips, ports


def _service(store: Store, obj: Obj, old: Obj | None, inv: Invalid) -> None:
    meta = obj["metadata"]
    spec = obj.setdefault("spec", {})
    old_spec = (old or {}).get("spec") or {}
    stype = spec.setdefault("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        inv.unsupported("spec.type", stype, SERVICE_TYPES)
        inv.raise_if_any()
    spec.setdefault("sessionAffinity", "None")
    ports = spec.get("ports") or []
    if old is not None and stype != "ExternalName" and old_spec.get("type") != "ExternalName":
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):  # an update that omits it keeps it
            spec["clusterIP"] = old_spec["clusterIP"]
            spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
        elif spec.get("clusterIP") != old_spec.get("clusterIP"):
            inv.value("spec.clusterIPs[0]", f'[]string{{"{spec.get("clusterIP")}"}}', "may not change once set")
        for p in ports:  # node ports stay allocated across updates that omit them
            match = next((o for o in old_spec.get("ports") or [] if o.get("port") == p.get("port")), None)
            if match and match.get("nodePort") and not p.get("nodePort") and stype in ("NodePort", "LoadBalancer"):
                p["nodePort"] = match["nodePort"]
    if stype == "ExternalName":
        ext = spec.get("externalName", "")
        if not ext:
            inv.required("spec.externalName")
        elif not DNS1123_SUBDOMAIN.match(ext.rstrip(".").lower()):
            inv.value("spec.externalName", ext, DNS1123_SUB_MSG)
        for f in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if old is not None and spec.get(f) == old_spec.get(f):
                spec.pop(f, None)
        if spec.get("clusterIP"):
            inv.forbidden("spec.clusterIPs", "may not be set for ExternalName services")
    elif not ports and spec.get("clusterIP") != "None":
        inv.required("spec.ports")
    names: set[str] = set()
    for i, p in enumerate(ports):
        port = p.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            inv.value(f"spec.ports[{i}].port", port, "must be between 1 and 65535, inclusive")
        p.setdefault("protocol", "TCP")
        if p["protocol"] not in ("TCP", "UDP", "SCTP"):
            inv.unsupported(f"spec.ports[{i}].protocol", p["protocol"], ("SCTP", "TCP", "UDP"))
        if stype != "ExternalName":
            p.setdefault("targetPort", port)
        name = p.get("name", "")
        if len(ports) > 1 and not name:
            inv.required(f"spec.ports[{i}].name")
        elif name in names:
            inv.causes.append({"reason": "FieldValueDuplicate", "field": f"spec.ports[{i}].name",
                               "message": f'Duplicate value: "{name}"'})
        names.add(name)
        if p.get("nodePort") and stype not in ("NodePort", "LoadBalancer"):
            inv.forbidden(f"spec.ports[{i}].nodePort", f"may not be used when `type` is '{stype}'")
    inv.raise_if_any()
    key = (meta.get("namespace", ""), meta["name"])
    used_ips, used_ports = _used(store, key)
    if stype != "ExternalName":
        ip = spec.get("clusterIP")
        if not ip:
            for host in SERVICE_CIDR.hosts():
                if int(host) - int(SERVICE_CIDR.network_address) < 10:
                    continue  # the first addresses are kept for the kubernetes and DNS Services
                if str(host) not in used_ips:
                    ip = str(host)
                    break
            spec["clusterIP"] = ip
        elif ip != "None":
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                addr = None
            if addr is None or addr not in SERVICE_CIDR:
                inv.value("spec.clusterIPs[0]", ip, f"provided IP is not in the valid range. The range of valid "
                          f"IPs is {SERVICE_CIDR}")
            elif ip in used_ips:
                inv.value("spec.clusterIPs[0]", f'[]string{{"{ip}"}}', "failed to allocate IP "
                          f"{ip}: provided IP is already allocated")
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
        if stype == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        for i, p in enumerate(ports):
            np = p.get("nodePort")
            if np:
                if np not in NODE_PORTS:
                    inv.value(f"spec.ports[{i}].nodePort", np, "provided port is not in the valid range. "
                              "The range of valid ports is 30000-32767")
                elif np in used_ports:
                    inv.value(f"spec.ports[{i}].nodePort", np, "provided port is already allocated")
                used_ports.add(np)
            else:
                np = next(n for n in NODE_PORTS if n not in used_ports)
                p["nodePort"] = np
                used_ports.add(np)
    else:
        spec.pop("externalTrafficPolicy", None)
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


# ---------------------------------------------------------------------- strict field validation
MODELS = {"services": "V1Service", "endpoints": "V1Endpoints", "endpointslices": "V1EndpointSlice",
          "nodes": "V1Node", "namespaces": "V1Namespace", "events": "CoreV1Event"}


def unknown_fields(resource: str, obj: Obj) -> list[str]:
    """Fields of `obj` its kind does not declare (fieldValidation=Strict), using the official client's models."""
    from kubernetes import client  # the official client is a test dependency; its models carry the schema

    return _unknown(client, getattr(client, MODELS[resource]), obj, "")


def _unknown(client: Any, model: Any, value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    by_json = {j: model.openapi_types[a] for a, j in model.attribute_map.items()}
    out = []
    for k, v in value.items():
        sub = f"{path}.{k}" if path else k
        t = by_json.get(k)
        if t is None:
            out.append(sub)
        elif t.startswith("List[") and isinstance(v, list):
            inner = getattr(client, t[5:-1], None)
            if inner is not None:
                for i, item in enumerate(v):
                    out += _unknown(client, inner, item, f"{sub}[{i}]")
        elif hasattr(client, t) and isinstance(v, dict):
            out += _unknown(client, getattr(client, t), v, sub)
    return out
