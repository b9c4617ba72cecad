"""The discovery chain: config entries compiled, by one pure function, into the routing table that
`/v1/discovery-chain/:service` answers and every sidecar applies (Consul's CompiledDiscoveryChain shape).

A chain starts at a router (`router:<svc>.default.default`, when the service has a service-router and an
L7 protocol), else a splitter (`splitter:…`), else a resolver (`resolver:<target>`). Routes and splits
lead to splitters or resolvers; nested splitters are flattened into one split with multiplied weights;
resolvers apply Redirect and DefaultSubset and name one target plus failover targets. Targets are named
`[<subset>.]<service>.<namespace>.<partition>.<dc>` and carry the subset's Filter for the instance query.

Errors that only show when entries meet (a subset that does not exist, a router or splitter on a tcp
service, a redirect or split loop) raise `ChainError` naming the entry and the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proconsul.connect.chain import durations
from proconsul.connect.chain.entries import CHAIN_KINDS, L7_PROTOCOLS, PROTOCOLS
from proconsul.connect.errors import ChainError

NS = "default"
PARTITION = "default"
DEFAULT_CONNECT_TIMEOUT = 5.0
Entries = Mapping[tuple[str, str], dict[str, Any]]  # (kind, name) → validated entry


def index_entries(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Config entries (as stored) by (Kind, Name)."""
    return {(r["Kind"], r["Name"]): r for r in rows}


def protocol_of(entries: Entries, service: str) -> str:
    """A service's protocol as Consul resolves it: its service-defaults, else proxy-defaults' Config, else tcp."""
    sd = entries.get(("service-defaults", service)) or {}
    if sd.get("Protocol"):
        return str(sd["Protocol"]).lower()
    cfg = (entries.get(("proxy-defaults", "global")) or {}).get("Config") or {}
    proto = str(cfg.get("protocol", cfg.get("Protocol", "")) or "").lower()
    return proto if proto in PROTOCOLS else "tcp"


def target_id(service: str, subset: str, datacenter: str) -> str:
    return f"{subset + '.' if subset else ''}{service}.{NS}.{PARTITION}.{datacenter}"


def target_sni(service: str, subset: str, datacenter: str, trust_domain: str) -> str:
    return f"{subset + '.' if subset else ''}{service}.{NS}.{datacenter}.internal.{trust_domain}"


@dataclass
class _Compiler:
    entries: Entries
    service: str
    datacenter: str
    trust_domain: str
    protocol: str
    connect_timeout: float | None  # an override for every target
    mesh_gateway: str = ""  # the caller's MeshGateway.Mode override (an upstream's own mode)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    used_entries: bool = False

    def fail(self, kind: str, name: str, field_: str, message: str) -> ChainError:
        return ChainError(f"Invalid {kind} {name!r}: {field_}: {message}" if field_ else
                          f"Invalid {kind} {name!r}: {message}", kind=kind, name=name, field=field_)

    def entry(self, kind: str, name: str) -> dict[str, Any] | None:
        e = self.entries.get((kind, name))
        if e is not None and kind in CHAIN_KINDS:
            self.used_entries = True
        return e

    # ------------------------------------------------------------------ routers
    def start(self) -> str:
        router = self.entries.get(("service-router", self.service))
        if router is not None:
            self.used_entries = True
            if self.protocol not in L7_PROTOCOLS:
                raise self.fail("service-router", self.service, "Protocol",
                                f"the service's protocol is {self.protocol!r}, which does not permit routes; "
                                "set Protocol \"http\" (or http2, grpc) in its service-defaults")
            return self.router(router)
        return self.split_or_resolve(self.service, "", "", ("service-router", self.service, ""))

    def router(self, entry: dict[str, Any]) -> str:
        name = f"{self.service}.{NS}.{PARTITION}"
        routes = []
        for i, route in enumerate(entry.get("Routes") or []):
            dest = dict(route.get("Destination") or {})
            dest["Service"] = dest.get("Service") or self.service
            dest.setdefault("Namespace", NS)
            dest.setdefault("Partition", PARTITION)
            definition = dict(route, Destination=dest)
            if not (route.get("Match") or {}).get("HTTP"):
                definition["Match"] = {"HTTP": {"PathPrefix": "/"}}
            why = ("service-router", self.service, f"Routes[{i}].Destination")
            self.same_protocol(dest["Service"], why)
            routes.append({"Definition": definition,
                           "NextNode": self.split_or_resolve(dest["Service"], dest.get("ServiceSubset", ""), "",
                                                             why)})
        routes.append({"Definition": {"Match": {"HTTP": {"PathPrefix": "/"}},
                                      "Destination": {"Service": self.service, "Namespace": NS,
                                                      "Partition": PARTITION}},
                       "NextNode": self.split_or_resolve(self.service, "", "", ("service-router", self.service, ""))})
        key = f"router:{name}"
        self.nodes[key] = {"Type": "router", "Name": name, "Routes": routes}
        return key

    def same_protocol(self, service: str, why: tuple[str, str, str]) -> None:
        proto = protocol_of(self.entries, service)
        if proto not in L7_PROTOCOLS:
            raise self.fail(why[0], why[1], why[2], f"service {service!r} has protocol {proto!r}; routes and "
                                                    f"splits can only lead to http, http2 or grpc services")

    # ------------------------------------------------------------------ splitters
    def split_or_resolve(self, service: str, subset: str, datacenter: str, why: tuple[str, str, str]) -> str:
        if not subset and not datacenter:
            splitter = self.entry("service-splitter", service)
            if splitter is not None:
                return self.splitter(service, splitter)
        return self.resolve(service, subset, datacenter, why, ())

    def splitter(self, service: str, entry: dict[str, Any]) -> str:
        if protocol_of(self.entries, service) not in L7_PROTOCOLS:
            raise self.fail("service-splitter", service, "Protocol",
                            f"the service's protocol is {protocol_of(self.entries, service)!r}, which does not "
                            "permit splits; set Protocol \"http\" (or http2, grpc) in its service-defaults")
        name = f"{service}.{NS}.{PARTITION}"
        key = f"splitter:{name}"
        if key not in self.nodes:
            legs = self.flatten(service, entry, 100.0, (service,))
            merged: dict[str, dict[str, Any]] = {}
            for leg in legs:  # the same resolver reached by two paths: one leg with the summed weight
                prev = merged.get(leg["NextNode"])
                if prev is None:
                    merged[leg["NextNode"]] = leg
                else:
                    prev["Weight"] = round(prev["Weight"] + leg["Weight"], 2)
            self.nodes[key] = {"Type": "splitter", "Name": name,
                               "Splits": [s for s in merged.values() if s["Weight"] > 0]}
        return key

    def flatten(self, service: str, entry: dict[str, Any], scale: float, stack: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        for i, split in enumerate(entry.get("Splits") or []):
            weight = round(split.get("Weight", 0.0) * scale / 100.0, 2)
            dest = split.get("Service") or service
            subset = split.get("ServiceSubset", "")
            why = ("service-splitter", service, f"Splits[{i}]")
            self.same_protocol(dest, why)
            definition = dict(split, Weight=split.get("Weight", 0.0))
            inner = self.entry("service-splitter", dest) if not subset and dest != service else None
            if inner is not None:
                if dest in stack:
                    raise self.fail("service-splitter", service, f"Splits[{i}].Service",
                                    f"split loop: {' → '.join((*stack, dest))}")
                for leg in self.flatten(dest, inner, weight, (*stack, dest)):
                    out.append(leg)
                continue
            out.append({"Definition": definition, "Weight": weight,
                        "NextNode": self.resolve(dest, subset, "", why, ())})
        return out

    # ------------------------------------------------------------------ resolvers
    def resolve(self, service: str, subset: str, datacenter: str, why: tuple[str, str, str],
                redirects: tuple[str, ...]) -> str:
        resolver = self.entry("service-resolver", service)
        r = resolver or {}
        redirect = r.get("Redirect")
        if redirect:
            to = redirect.get("Service") or service
            here = target_id(service, subset, datacenter or self.datacenter)
            if here in redirects or to == service and not redirect.get("ServiceSubset") and \
                    (redirect.get("Datacenter") or self.datacenter) == (datacenter or self.datacenter):
                raise self.fail("service-resolver", service, "Redirect",
                                f"redirect loop: {' → '.join((*redirects, here))}")
            return self.resolve(to, redirect.get("ServiceSubset", ""), redirect.get("Datacenter", ""),
                                ("service-resolver", service, "Redirect"), (*redirects, here))
        if not subset:
            subset = r.get("DefaultSubset", "")
        self.check_subset(service, subset, why)
        dc = datacenter or self.datacenter
        tid = self.target(service, subset, dc, r)
        key = f"resolver:{tid}"
        if key in self.nodes:
            return key
        node_r: dict[str, Any] = {"ConnectTimeout": self.nodes_timeout(r), "Target": tid}
        if resolver is None:
            node_r["Default"] = True
        if r.get("RequestTimeout"):
            node_r["RequestTimeout"] = round(durations.parse(r["RequestTimeout"]) * 1e9)
        failover = self.failover(service, subset, dc, r)
        if failover:
            node_r["Failover"] = {"Targets": failover}
        node: dict[str, Any] = {"Type": "resolver", "Name": tid, "Resolver": node_r}
        if r.get("LoadBalancer"):
            node["LoadBalancer"] = r["LoadBalancer"]
        self.nodes[key] = node
        return key

    def check_subset(self, service: str, subset: str, why: tuple[str, str, str]) -> None:
        if not subset:
            return
        subsets = (self.entries.get(("service-resolver", service)) or {}).get("Subsets") or {}
        if subset not in subsets:
            raise self.fail(why[0], why[1], why[2] + ".ServiceSubset" if why[2] and not why[2].endswith("Subset")
                            else why[2], f"service {service!r} does not have a subset named {subset!r}")

    def nodes_timeout(self, r: dict[str, Any]) -> str:
        if self.connect_timeout is not None:
            return durations.format(self.connect_timeout)
        return r.get("ConnectTimeout") or durations.format(DEFAULT_CONNECT_TIMEOUT)

    def failover(self, service: str, subset: str, dc: str, r: dict[str, Any]) -> list[str]:
        fos = r.get("Failover") or {}
        fo = fos.get(subset) if subset in fos else fos.get("*")
        if not fo:
            return []
        key = subset if subset in fos else "*"
        where = ("service-resolver", service, f"Failover[{key!r}]")
        wanted: list[tuple[str, str, str]] = []
        if fo.get("Targets"):
            wanted = [(t.get("Service") or service, t.get("ServiceSubset", ""), t.get("Datacenter") or dc)
                      for t in fo["Targets"]]
        elif fo.get("Datacenters"):
            wanted = [(fo.get("Service") or service, fo.get("ServiceSubset", "") if fo.get("Service") else
                       fo.get("ServiceSubset", subset), d) for d in fo["Datacenters"]]
        else:
            wanted = [(fo.get("Service") or service, fo.get("ServiceSubset", ""), dc)]
        out = []
        for svc, sub, d in wanted:
            other = self.entries.get(("service-resolver", svc)) or {}
            if not sub and svc != service:
                sub = other.get("DefaultSubset", "")
            self.check_subset(svc, sub, where)
            tid = self.target(svc, sub, d, other)
            if tid != target_id(service, subset, dc) and tid not in out:
                out.append(tid)
        return out

    def gateway_mode(self, service: str) -> dict[str, str]:
        """How a target is reached when it is in another datacenter (Consul's order): the caller's override,
        else the target service's service-defaults MeshGateway, else proxy-defaults'; {} is "none" (direct)."""
        mode = self.mesh_gateway
        if not mode:
            mode = str(((self.entries.get(("service-defaults", service)) or {}).get("MeshGateway") or {})
                       .get("Mode") or "")
        if not mode:
            mode = str(((self.entries.get(("proxy-defaults", "global")) or {}).get("MeshGateway") or {})
                       .get("Mode") or "")
        return {"Mode": mode} if mode else {}

    def target(self, service: str, subset: str, dc: str, r: dict[str, Any]) -> str:
        tid = target_id(service, subset, dc)
        if tid not in self.targets:
            spec = ((r.get("Subsets") or {}).get(subset) or {}) if subset else {}
            sni = target_sni(service, subset, dc, self.trust_domain)
            t: dict[str, Any] = {"ID": tid, "Service": service, "Namespace": NS, "Partition": PARTITION,
                                 "Datacenter": dc, "MeshGateway": self.gateway_mode(service),
                                 "Subset": {k: v for k, v in spec.items() if v}, "TransparentProxy": {},
                                 "ConnectTimeout": self.nodes_timeout(r), "SNI": sni, "Name": sni}
            if subset:
                t["ServiceSubset"] = subset
            self.targets[tid] = t
        return tid


def compile_chain(entries: Entries, service: str, *, datacenter: str, trust_domain: str,
                  override_protocol: str = "", override_connect_timeout: float | None = None,
                  override_mesh_gateway: str = "") -> dict[str, Any]:
    """The compiled discovery chain of `service` (Consul's `Chain` object), as evaluated in `datacenter`."""
    protocol = (override_protocol or protocol_of(entries, service)).lower()
    c = _Compiler(entries, service, datacenter, trust_domain, protocol, override_connect_timeout,
                  override_mesh_gateway.lower())
    start = c.start()
    chain: dict[str, Any] = {"ServiceName": service, "Namespace": NS, "Partition": PARTITION, "Datacenter": datacenter}
    if override_protocol or override_connect_timeout is not None or override_mesh_gateway:
        seed = (f"{override_protocol}|{override_connect_timeout}"
                + (f"|{override_mesh_gateway.lower()}" if override_mesh_gateway else "")).encode()
        chain["CustomizationHash"] = hashlib.sha256(seed).hexdigest()[:8]
    if not c.used_entries:
        chain["Default"] = True
    chain["Protocol"] = protocol
    meta = (entries.get(("service-defaults", service)) or {}).get("Meta")
    if meta:
        chain["ServiceMeta"] = meta
    chain.update({"StartNode": start, "Nodes": c.nodes, "Targets": c.targets, "AutoVirtualIPs": None,
                  "ManualVirtualIPs": None})
    return chain


def chain_services(entries: Entries) -> list[str]:
    """Every service whose chain the entries shape (what a write must still compile)."""
    return sorted({name for kind, name in entries if kind in CHAIN_KINDS})


def validate_graph(entries: Entries, *, datacenter: str, trust_domain: str = "") -> None:
    """Compile every chain the entries shape, and check that ingress listeners match their services'
    protocols; the first ChainError stops a write that would break one."""
    for service in chain_services(entries):
        compile_chain(entries, service, datacenter=datacenter, trust_domain=trust_domain or "validate")
    for (kind, name), e in entries.items():
        if kind != "ingress-gateway":
            continue
        for i, lst in enumerate(e.get("Listeners") or []):
            for j, svc in enumerate(lst.get("Services") or []):
                if svc.get("Name") in (None, "", "*"):
                    continue
                proto, want = protocol_of(entries, svc["Name"]), lst.get("Protocol") or "tcp"
                if proto != want:
                    raise ChainError(f"Invalid ingress-gateway {name!r}: Listeners[{i}].Services[{j}]: service "
                                     f"{svc['Name']!r} has protocol {proto!r}, which does not match the listener's "
                                     f"protocol {want!r}", kind="ingress-gateway", name=name,
                                     field=f"Listeners[{i}].Services[{j}]")
