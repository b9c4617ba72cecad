"""What a linked service's `service-resolver` decides at the terminating gateway (pure: entries in, choices out).

Consul's terminating gateway makes, for each linked service, one cluster for the service and one per subset of
its resolver (reached by the subset's SNI, `<subset>.<service>.default.<dc>.internal.<trust-domain>`), balanced
by the resolver's `LoadBalancer`, with its `ConnectTimeout` and `RequestTimeout`. `GatewayResolver` is that
view of one resolver entry:

- `subset_for` maps the subset an SNI names (or none) to the subset served: the named one, else the
  resolver's `DefaultSubset`; a name the resolver does not have raises `UnknownSubset` (Envoy has no
  cluster for it, so the connection is closed);
- `instances` chooses, from the outside service's catalog rows (`/v1/health/service/<svc>`, every health
  state), those of a subset: its `Filter` (Consul's filter language over `Service.Meta`, `Service.Tags`, …)
  and health as Envoy sees it — a critical check excludes an instance, a warning one only when the subset
  says `OnlyPassing`;
- `policy` and `lb` are the `LoadBalancer` (its hash policies make the request's key as a sidecar's do);
- `host_rewrite` is the `Host` an http request gets: the instance's address when it is a hostname (Envoy's
  `auto_host_rewrite` on the LOGICAL_DNS cluster Consul makes for hostname addresses), else none.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from proconsul.catalog.filter import FilterError, Predicate, compile_filter
from proconsul.connect.chain import durations
from proconsul.connect.proxy.addresses import dialable
from proconsul.connect.proxy.balancer import Instance
from proconsul.connect.proxy.routing import LoadBalancer

DIAL_TIMEOUT = 5.0
REQUEST_TIMEOUT = 15.0  # http services: Envoy's default route timeout


class UnknownSubset(Exception):  # noqa: N818 — named for what the caller asked for
    """The SNI names a subset the linked service's resolver does not define."""


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    filter: str = ""
    only_passing: bool = False
    predicate: Predicate | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class GatewayResolver:
    connect_timeout: float = DIAL_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    subsets: tuple[Subset, ...] = ()
    default_subset: str = ""
    lb: LoadBalancer = LoadBalancer()

    @property
    def policy(self) -> str:
        return self.lb.policy or "round_robin"

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    def subset_for(self, sni_subset: str) -> str:
        """The subset a connection whose SNI names `sni_subset` ("" for none) is served from ("" = the whole
        service)."""
        if not sni_subset:
            return self.default_subset if self.subset(self.default_subset) is not None else ""
        if self.subset(sni_subset) is None:
            raise UnknownSubset(f"its service-resolver has no subset named {sni_subset!r}")
        return sni_subset

    def instances(self, rows: list[dict[str, Any]], service: str, subset: str) -> list[Instance]:
        """The instances of `service` (its catalog rows with their checks) that serve `subset`."""
        spec = self.subset(subset) if subset else None
        only_passing = spec is not None and spec.only_passing
        pred = spec.predicate if spec is not None else None
        return [Instance(id=f"{node.get('Node', '')}/{svc.get('ID', '')}", address=address, port=int(svc["Port"]),
                         service=service, weight=w)
                for node, svc, address, w in dialable(rows if pred is None else filter(pred, rows), only_passing)]

    def snapshot(self) -> dict[str, Any]:
        """What /stats shows of it."""
        return {"ConnectTimeout": self.connect_timeout, "RequestTimeout": self.request_timeout,
                "LoadBalancer": {"Policy": self.policy,
                                 **({"HashPolicies": list(self.lb.hash_policies)} if self.lb.hash_policies else {})},
                **({"DefaultSubset": self.default_subset} if self.default_subset else {})}


def host_rewrite(address: str) -> str:
    """The Host an http request to an instance at `address` gets: the address when it is a hostname, "" (the
    caller's Host kept) when it is an IP address."""
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    return ""


def _seconds(value: Any, default: float) -> float:
    """A Go duration (a string or integer nanoseconds); `default` when unset, zero or unreadable."""
    try:
        seconds = durations.parse(value) if value not in (None, "") else 0.0
    except ValueError:
        return default
    return seconds if seconds > 0 else default


def parse_resolver(entry: dict[str, Any] | None) -> GatewayResolver:
    """A linked service's `service-resolver` entry (None: it has none) as the gateway applies it. The agent
    validated the entry; what still cannot be read (a filter this version does not parse) leaves that subset
    with no instance rather than every instance."""
    entry = entry or {}
    subsets = []
    for name, raw in sorted((entry.get("Subsets") or {}).items()):
        raw = raw or {}
        flt = str(raw.get("Filter") or "")
        subsets.append(Subset(name, flt, bool(raw.get("OnlyPassing")), subset_filter(flt)))
    return GatewayResolver(connect_timeout=_seconds(entry.get("ConnectTimeout"), DIAL_TIMEOUT),
                           request_timeout=_seconds(entry.get("RequestTimeout"), REQUEST_TIMEOUT),
                           subsets=tuple(subsets), default_subset=str(entry.get("DefaultSubset") or ""),
                           lb=LoadBalancer.from_entry(entry.get("LoadBalancer")))


def subset_filter(expression: str) -> Predicate | None:
    """A subset's Filter as a predicate over catalog rows (None: no filter). The agent checked it on write;
    one this version cannot read (a newer agent's syntax) matches nothing rather than everything."""
    if not expression:
        return None
    try:
        return compile_filter(expression)
    except FilterError:
        return _nothing


def _nothing(_row: Any) -> bool:
    return False
