"""Catalog → Kubernetes, the pure part: which Services (and EndpointSlices) the catalog calls for, and the
creates, updates and deletes that get the write namespace there.

Every catalog service that did not come from this syncer's own cluster (it lacks this syncer's tag) becomes
an `ExternalName` Service `<prefix><name>` → `<name>.service.<domain>`, as consul-k8s does (a federated
datacenter's catalog, `--to-k8s-datacenter`, gives `<name>.service.<dc>.<domain>`); or, in
"endpoints" mode (beyond consul-k8s), a selector-less ClusterIP Service with EndpointSlices listing the
healthy instances, so kube-proxy only ever sends traffic to passing instances and no DNS search path is
involved. Objects are labelled as owned by this syncer's node; nothing unlabelled is ever changed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .to_consul import SYNCED_FROM_CONSUL

Obj = dict[str, Any]
OWNER_LABEL = "proconsul.io/k8s-sync-node"
SYNCED_LABEL = SYNCED_FROM_CONSUL
MANAGED_BY = "proconsul-k8s-sync"
SKIP = ("consul",)  # the servers' own service (a Kubernetes cluster running Consul has its own `consul` Service)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class K8sActions:
    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (resource, name)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def k8s_name(prefix: str, name: str) -> str | None:
    """The Kubernetes Service name for a catalog service, or None when it cannot be one (DNS-1035)."""
    cand = re.sub(r"[^a-z0-9-]", "-", (prefix + name).lower()).strip("-")
    return cand if DNS1035.match(cand) and len(cand) <= 63 else None


def _labels(node: str) -> dict[str, str]:
    return {SYNCED_LABEL: "true", OWNER_LABEL: node}


def desired_objects(catalog: dict[str, list[str]], healthy: dict[str, list[tuple[str, int]]], *, node: str,
                    tag: str, domain: str, prefix: str, namespace: str, mode: str,
                    datacenter: str = "") -> dict[tuple[str, str], Obj]:
    """(resource, name) → manifest for every catalog service to mirror. `catalog`: name → tags;
    `healthy`: name → (address, port) of passing instances (used in endpoints mode); `datacenter`: the
    (federated) datacenter they live in when it is named, so ExternalName targets name it too."""
    out: dict[tuple[str, str], Obj] = {}
    dc_label = f".{datacenter}" if datacenter else ""
    for name in sorted(catalog):
        if tag in catalog[name] or name in SKIP:
            continue  # it came from this syncer's cluster, or it is the servers' own service
        kname = k8s_name(prefix, name)
        if kname is None:
            continue
        meta = {"name": kname, "namespace": namespace, "labels": _labels(node),
                "annotations": {"consul.hashicorp.com/service-name": name}}
        if mode == "externalname":
            out[("services", kname)] = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                                        "spec": {"type": "ExternalName",
                                                 "externalName": f"{name}.service{dc_label}.{domain}"}}
            continue
        addrs = sorted({(a, p) for a, p in healthy.get(name, []) if _ipv4(a) and p > 0})
        ports = sorted({p for _, p in addrs})
        main_port = max(ports, key=lambda p: (sum(1 for _, q in addrs if q == p), -p)) if ports else 80
        out[("services", kname)] = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": "ClusterIP", "ports": [{"name": "default", "port": main_port, "targetPort": main_port,
                                            "protocol": "TCP"}]}}
        for p in ports or [main_port]:
            sname = f"{kname}-{p}"
            out[("endpointslices", sname)] = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": sname, "namespace": namespace, "labels": {
                    **_labels(node), "kubernetes.io/service-name": kname,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
                "addressType": "IPv4", "ports": [{"name": "default", "port": p, "protocol": "TCP"}],
                "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a, q in addrs if q == p]}
    return out


def _ipv4(addr: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(addr), ipaddress.IPv4Address)
    except ValueError:
        return False


def _fields(obj: Obj) -> Obj:
    """The parts of an object this syncer sets (what a change is judged by)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    out = {"labels": {k: v for k, v in (meta.get("labels") or {}).items() if k in (SYNCED_LABEL, OWNER_LABEL,
                                                                                    "kubernetes.io/service-name")},
           "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k == "consul.hashicorp.com/service-name"}}
    if obj.get("kind") == "EndpointSlice":
        out["ports"] = obj.get("ports")
        out["endpoints"] = [sorted(e.get("addresses") or []) for e in obj.get("endpoints") or []]
    else:
        out["type"] = spec.get("type")
        out["externalName"] = spec.get("externalName")
        out["ports"] = [(p.get("port"), p.get("targetPort")) for p in spec.get("ports") or []]
    return out


def plan_to_k8s(desired: dict[tuple[str, str], Obj], actual: dict[tuple[str, str], Obj], node: str, *,
                may_reap: bool) -> K8sActions:
    """Creates, updates and deletes in the write namespace; objects not labelled as ours are never touched."""
    acts = K8sActions()
    for key, want in desired.items():
        have = actual.get(key)
        if have is None:
            acts.create.append(want)
        elif ((have.get("metadata") or {}).get("labels") or {}).get(OWNER_LABEL) != node:
            continue  # someone else's object of that name: leave it
        elif _fields(have) != _fields(want):
            acts.update.append(want)
    if may_reap:
        for key, have in actual.items():
            if key not in desired and ((have.get("metadata") or {}).get("labels") or {}).get(OWNER_LABEL) == node:
                acts.delete.append(key)
    return acts
