"""Kubernetes → catalog, the pure part: which catalog instances the Services and EndpointSlices call for.

consul-k8s's rules: ExternalName Services are never synced; a Service with externalIPs becomes one instance
per IP; LoadBalancer uses its ingress addresses (or its endpoints with sync_lb_services_endpoints); NodePort
uses the addresses of the nodes its endpoints run on (by node_port_sync_type) and the node port; ClusterIP
uses endpoint addresses and the endpoints' (target) port. Instance IDs are `<name>-<sha1(name-addr)[:12]>`, so
the same endpoint always gets the same ID. Every endpoint-backed instance carries a readiness check from its
EndpointSlice conditions (ready unset counts as ready, as the EndpointSlice API defines it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .config import Options

Obj = dict[str, Any]
ANN = "consul.hashicorp.com/"
SOURCE_META = {"external-source": "kubernetes"}
CHECK_NAME = "Kubernetes Readiness Check"
CHECK_TYPE = "kubernetes-readiness"
PASSING_OUTPUT = "Kubernetes health checks passing"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SYNCED_FROM_CONSUL = "synced-from-consul"  # the label on Services written by the to-k8s side


@dataclass(frozen=True, slots=True)
class Instance:
    """One catalog instance this syncer wants on its node, with its readiness check (if endpoint-backed)."""

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]
    k8s_namespace: str
    weight: int = 0
    ready: bool | None = None  # None: no readiness check
    not_ready_output: str = ""

    @property
    def check_id(self) -> str:
        return f"{self.k8s_namespace}/{self.id}"

    def service_body(self) -> Obj:
        body: Obj = {"ID": self.id, "Service": self.service, "Tags": list(self.tags), "Address": self.address,
                     "Port": self.port, "Meta": dict(self.meta)}
        if self.weight:
            body["Weights"] = {"Passing": self.weight, "Warning": 1}
        return body

    def check_body(self, node: str) -> Obj | None:
        if self.ready is None:
            return None
        return {"Node": node, "CheckID": self.check_id, "Name": CHECK_NAME, "Type": CHECK_TYPE,
                "ServiceID": self.id, "Status": "passing" if self.ready else "critical",
                "Output": PASSING_OUTPUT if self.ready else self.not_ready_output}


def service_id(name: str, addr: str) -> str:
    """consul-k8s's deterministic instance ID."""
    return f"{name}-{hashlib.sha1(f'{name}-{addr}'.encode()).hexdigest()[:12]}"


def parse_tags(raw: str) -> list[str]:
    """Comma-separated tags; `\\,` keeps a comma inside a tag; blanks are dropped."""
    out, cur, i = [], "", 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] == ",":
            cur += ","
            i += 2
            continue
        if raw[i] == ",":
            out.append(cur.strip())
            cur = ""
        else:
            cur += raw[i]
        i += 1
    out.append(cur.strip())
    return [t for t in out if t]


def _bool(raw: str) -> bool | None:
    v = raw.strip().lower()
    if v in ("1", "t", "true"):
        return True
    if v in ("0", "f", "false"):
        return False
    return None


def should_sync(svc: Obj, opts: Options) -> bool:
    """consul-k8s's shouldSync: namespace allow/deny, type, then the service-sync annotation or the default;
    never a Service that a syncer wrote from the catalog (selector-less ClusterIP ones in endpoints mode)."""
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    ns = meta.get("namespace", "")
    if (meta.get("labels") or {}).get(SYNCED_FROM_CONSUL) == "true":
        return False  # written by a syncer from the catalog: sending it back would loop
    if ns in opts.denied_namespaces():
        return False
    allowed = opts.allowed_namespaces()
    if "*" not in allowed and ns not in allowed:
        return False
    stype = spec.get("type", "ClusterIP")
    if stype == "ExternalName" or (stype == "ClusterIP" and not opts.sync_clusterip_services):
        return False
    raw = (meta.get("annotations") or {}).get(ANN + "service-sync")
    if raw is not None:
        v = _bool(raw)
        if v is not None:
            return v
    return opts.k8s_default_sync


def service_name(svc: Obj, opts: Options) -> str:
    meta = svc["metadata"]
    ann = (meta.get("annotations") or {}).get(ANN + "service-name")
    if ann and ann.strip():
        return ann.strip()
    name = opts.consul_service_prefix + meta["name"]
    return f"{name}-{meta.get('namespace', '')}" if opts.add_k8s_namespace_suffix else name


def _slices_by_service(slices: dict[Any, Obj]) -> dict[tuple[str, str], list[Obj]]:
    out: dict[tuple[str, str], list[Obj]] = {}
    for s in slices.values():
        meta = s.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            out.setdefault((meta.get("namespace", ""), owner), []).append(s)
    for lst in out.values():
        lst.sort(key=lambda s: s["metadata"]["name"])
    return out


def _endpoint_meta(base: dict[str, str], ep: Obj) -> dict[str, str]:
    meta = dict(base)
    ref = ep.get("targetRef") or {}
    if ref.get("name"):
        meta["external-k8s-ref-kind"] = ref.get("kind", "")
        meta["external-k8s-ref-name"] = ref["name"]
    if ep.get("nodeName"):
        meta["external-k8s-node-name"] = ep["nodeName"]
    if ep.get("zone"):
        meta["external-k8s-topology-zone"] = ep["zone"]
    return meta


def _ready(ep: Obj) -> bool:
    cond = ep.get("conditions") or {}
    return cond.get("ready") is not False


def node_addresses(nodes: dict[Any, Obj]) -> dict[str, list[Obj]]:
    return {(n.get("metadata") or {}).get("name", ""): (n.get("status") or {}).get("addresses") or []
            for n in nodes.values()}


def slice_owner(obj: Obj) -> tuple[str, str] | None:
    """The (namespace, Service name) an EndpointSlice belongs to, from its kubernetes.io/service-name label."""
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return (meta.get("namespace", ""), owner) if owner else None


def service_instances(svc: Obj, slices: list[Obj], node_addrs: dict[str, list[Obj]], opts: Options) -> list[Instance]:
    """The instances one Service calls for (none when it is not synced); `slices` are its EndpointSlices."""
    if not should_sync(svc, opts):
        return []
    ordered = sorted(slices, key=lambda s: s["metadata"]["name"])
    meta = svc["metadata"]
    return _instances(svc, {(meta.get("namespace", ""), meta["name"]): ordered}, node_addrs, opts)


def desired_instances(services: dict[Any, Obj], slices: dict[Any, Obj], nodes: dict[Any, Obj],
                      opts: Options) -> dict[str, Instance]:
    """Every instance the synced Services call for, by instance ID."""
    by_service = _slices_by_service(slices)
    addrs = node_addresses(nodes)
    out: dict[str, Instance] = {}
    for svc in services.values():
        meta = svc.get("metadata") or {}
        for inst in service_instances(svc, by_service.get((meta.get("namespace", ""), meta.get("name", "")), []),
                                      addrs, opts):
            out[inst.id] = inst
    return out


def _instances(svc: Obj, by_service: dict[tuple[str, str], list[Obj]], node_addrs: dict[str, list[Obj]],
               opts: Options) -> list[Instance]:
    meta = svc["metadata"]
    spec = svc.get("spec") or {}
    ns = meta.get("namespace", "")
    ann = meta.get("annotations") or {}
    name = service_name(svc, opts)
    tags = [opts.consul_k8s_tag, *parse_tags(ann.get(ANN + "service-tags", ""))]
    base_meta = {**SOURCE_META, "external-k8s-ns": ns}
    ports = spec.get("ports") or []
    for p in ports:
        base_meta[f"port-{p.get('name', '')}"] = str(p.get("port", ""))
    for k, v in ann.items():
        if k.startswith(ANN + "service-meta-"):
            base_meta[k[len(ANN + "service-meta-"):]] = v
    weight = 0
    if ann.get(ANN + "service-weight", "").strip().isdigit():
        weight = int(ann[ANN + "service-weight"].strip())
    stype = spec.get("type", "ClusterIP")
    # The default port: the annotated one (by number or name), else the first.
    port_ann = ann.get(ANN + "service-port", "").strip()
    override_number = int(port_ann) if port_ann.isdigit() else 0
    override_name = port_ann if port_ann and not port_ann.isdigit() else ""
    chosen = next((p for p in ports if override_name and p.get("name") == override_name), ports[0] if ports else {})
    svc_port = override_number or (chosen.get("nodePort") if stype == "NodePort" and chosen.get("nodePort")
                                   else chosen.get("port", 0)) or 0

    def make(addr: str, key: str, port: int, ep_meta: dict[str, str], ready: bool | None, why: str = "") -> Instance:
        return Instance(service_id(name, key), name, addr, int(port), tuple(tags), tuple(sorted(ep_meta.items())),
                        ns, weight, ready, why)

    external = spec.get("externalIPs") or []
    if external:
        return [make(ip, ip, svc_port, base_meta, None) for ip in dict.fromkeys(external)]
    if stype == "LoadBalancer" and not opts.sync_lb_services_endpoints:
        out = []
        for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            addr = ing.get("ip") or ing.get("hostname")
            if addr and all(i.address != addr for i in out):
                out.append(make(addr, addr, svc_port, base_meta, None))
        return out
    slices = by_service.get((ns, meta["name"]), [])
    out = []
    seen: set[str] = set()
    for sl in slices:
        ep_port = svc_port
        if stype != "NodePort":  # endpoint-backed ClusterIP / LoadBalancer: the endpoint's port
            if override_name:
                ep_port = next((p.get("port") for p in sl.get("ports") or [] if p.get("name") == override_name),
                               ep_port)
            elif not override_number and sl.get("ports"):
                ep_port = sl["ports"][0].get("port") or ep_port
        for ep in sl.get("endpoints") or []:
            ready = _ready(ep)
            ref = ep.get("targetRef") or {}
            why = (f"Pod \"{ref.get('namespace') or ns}/{ref['name']}\" is not ready" if ref.get("name")
                   else "Kubernetes health checks failing")
            for addr in ep.get("addresses") or []:
                if addr in seen:
                    continue
                if stype == "NodePort":
                    host = _node_address(node_addrs.get(ep.get("nodeName") or "", []), opts.node_port_sync_type)
                    if not ep.get("nodeName") or host is None:
                        continue
                    seen.add(addr)
                    out.append(make(host, addr, svc_port, _endpoint_meta(base_meta, ep), ready, why))
                else:
                    seen.add(addr)
                    out.append(make(addr, addr, ep_port, _endpoint_meta(base_meta, ep), ready, why))
    return out


def _node_address(addresses: list[Obj], mode: str) -> str | None:
    want = "InternalIP" if mode == "InternalOnly" else "ExternalIP"
    found = next((a["address"] for a in addresses if a.get("type") == want and a.get("address")), None)
    if found is None and mode == "ExternalFirst":
        found = next((a["address"] for a in addresses if a.get("type") == "InternalIP" and a.get("address")), None)
    return found
