"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with the API server's columns."""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def human_duration(seconds: float) -> str:
    """apimachinery's HumanDuration (what kubectl shows in AGE columns)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y"


def age(obj: Obj, now: float) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    return human_duration(now - calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))


def _col(name: str, typ: str = "string", priority: int = 0, fmt: str = "", desc: str = "") -> Obj:
    return {"name": name, "type": typ, "format": fmt, "description": desc or name, "priority": priority}


def _more(items: list[str], n: int = 3) -> str:
    if not items:
        return "<none>"
    shown = ",".join(items[:n])
    return shown + (f" + {len(items) - n} more..." if len(items) > n else "")


def _service(o: Obj) -> list[Any]:
    spec = o.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    ext = list(spec.get("externalIPs") or [])
    if stype == "ExternalName":
        external = spec.get("externalName", "")
    elif stype == "LoadBalancer":
        lb = [i.get("ip") or i.get("hostname") for i in ((o.get("status") or {}).get("loadBalancer") or {})
              .get("ingress") or []]
        external = ",".join(lb + ext) or "<pending>"
    else:
        external = ",".join(ext) or "<none>"
    ports = []
    for p in spec.get("ports") or []:
        ports.append(f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}" if p.get("nodePort")
                     else f"{p['port']}/{p.get('protocol', 'TCP')}")
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    return [stype, spec.get("clusterIP") or "<none>", external, ",".join(ports) or "<none>", selector]


def _endpoints(o: Obj) -> list[Any]:
    items = []
    for s in o.get("subsets") or []:
        for a in s.get("addresses") or []:
            for p in s.get("ports") or [{}]:
                items.append(f"{a['ip']}:{p['port']}" if p.get("port") else a["ip"])
    return [_more(items)]


def _slice(o: Obj) -> list[Any]:
    ports = ",".join(str(p["port"]) if p.get("port") is not None else "<unset>" for p in o.get("ports") or [])
    addrs = [a for ep in o.get("endpoints") or [] for a in ep.get("addresses") or []]
    return [o.get("addressType", ""), ports or "<unset>", _more(addrs)]


def _node(o: Obj) -> list[Any]:
    status = o.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    roles = sorted(k.split("/", 1)[1] for k in ((o.get("metadata") or {}).get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/")) or ["<none>"]
    info = status.get("nodeInfo") or {}
    addr = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [state, ",".join(roles), info.get("kubeletVersion", ""), addr.get("InternalIP", "<none>"),
            addr.get("ExternalIP", "<none>"), info.get("osImage", "<unknown>"), info.get("kernelVersion", "<unknown>"),
            info.get("containerRuntimeVersion", "<unknown>")]


def _event(o: Obj) -> list[Any]:
    inv = o.get("involvedObject") or {}
    return [o.get("type", ""), o.get("reason", ""), f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}",
            o.get("message", "")]


# resource -> (columns after Name, columns after Age, cells function giving them in that order)
LAYOUT: dict[str, tuple[list[Obj], list[Obj], Callable[[Obj], list[Any]]]] = {
    "services": ([_col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)")],
                 [_col("Selector", priority=1)], _service),
    "endpoints": ([_col("Endpoints")], [], _endpoints),
    "endpointslices": ([_col("AddressType"), _col("Ports"), _col("Endpoints")], [], _slice),
    "namespaces": ([_col("Status")], [], lambda o: [(o.get("status") or {}).get("phase", "")]),
    "nodes": ([_col("Status"), _col("Roles")], [_col("Version"), _col("Internal-IP", priority=1),
               _col("External-IP", priority=1), _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
               _col("Container-Runtime", priority=1)], _node),
    "events": ([_col("Type"), _col("Reason"), _col("Object"), _col("Message")], [], _event),
}


def table(resource: str, objs: list[Obj], meta: Obj, now: float, include: str = "Metadata",
          headers: bool = True) -> Obj:
    """A Table of `objs`; `include` is the includeObject query parameter (None, Metadata, Object)."""
    before, after, cells = LAYOUT[resource]
    cols = [_col("Name", fmt="name"), *before, _col("Age"), *after]
    rows = []
    for o in objs:
        vals = cells(o)
        row: Obj = {"cells": [o["metadata"]["name"], *vals[:len(before)], age(o, now), *vals[len(before):]]}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": o["metadata"]}
        rows.append(row)
    out: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows}
    out["columnDefinitions"] = cols if headers else []
    return out
