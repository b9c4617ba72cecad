"""A compiled discovery chain (the agent's `/v1/discovery-chain/:svc` answer) as the proxy applies it.

`RouteTable.from_chain` turns the chain into matchers and weighted legs once per change; `decide` is
then a pure function of one request (method, target, headers) and a random number: which route matched,
which split leg it took, which target (and failover targets) to send to, with what timeout, retry
policy, path rewrite and header changes. The asyncio shell (`http.py`) does the sending.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from proconsul.connect.chain import durations
from proconsul.connect.proxy.balancer import Sizing

# service-router RetryOn's gRPC conditions: retry when a trailers-only response carries this grpc-status
GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}


class ChainFormatError(ValueError):
    """The agent's chain has a shape this proxy cannot apply (a bug or a newer agent): the upstream keeps its
    previous table."""


@dataclass(frozen=True, slots=True)
class Target:
    id: str
    service: str
    datacenter: str
    filter: str = ""  # the subset's Filter, applied by the proxy to the target's health rows
    only_passing: bool = False  # the subset's OnlyPassing: an instance with a warning check is left out too
    connect_timeout: float | None = None  # the resolver's ConnectTimeout (None: no resolver entry, the upstream's)
    sni: str = ""  # Consul's SNI for the target, `[<subset>.]<svc>.default.<dc>.internal.<trust-domain>`
    mesh_gateway: str = ""  # in another datacenter: "local" or "remote" (through mesh gateways), else direct


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """RequestHeaders / ResponseHeaders: Add (appends), Set (replaces), Remove."""

    add: tuple[tuple[bytes, bytes], ...] = ()
    set: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)

    def apply(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        drop = self.remove | {k for k, _ in self.set}
        out = [(k, v) for k, v in headers if k not in drop]
        out.extend(self.set)
        out.extend(self.add)
        return out

    @staticmethod
    def parse(raw: Any) -> HeaderOps:
        raw = raw or {}

        def pairs(m: Any) -> tuple[tuple[bytes, bytes], ...]:
            return tuple((str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (m or {}).items())

        return HeaderOps(add=pairs(raw.get("Add")), set=pairs(raw.get("Set")),
                         remove=frozenset(str(k).lower().encode("latin-1") for k in raw.get("Remove") or []))

    def then(self, other: HeaderOps) -> HeaderOps:
        return HeaderOps(self.add + other.add, self.set + other.set, self.remove | other.remove)


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    policy: str = ""  # "" = the upstream's own lb_policy
    hash_policies: tuple[dict[str, Any], ...] = ()
    sizing: Sizing = Sizing()

    @classmethod
    def from_entry(cls, lb: dict[str, Any] | None) -> LoadBalancer:
        """A resolver's (validated) `LoadBalancer` block."""
        lb = lb or {}
        return cls(policy=str(lb.get("Policy") or ""), hash_policies=tuple(lb.get("HashPolicies") or ()),
                   sizing=Sizing.from_entry(lb))

    def hash_key(self, headers: list[tuple[bytes, bytes]], target: bytes, source_ip: str) -> bytes | None:
        """The request's hash key for ring_hash/maglev (Envoy's rule: policies in order, a Terminal one that
        yields a value stops; no value at all: None, the pool picks at random)."""
        parts: list[bytes] = []
        for hp in self.hash_policies:
            value: bytes | None = None
            if hp.get("SourceIP"):
                value = source_ip.encode()
            elif hp.get("Field") == "header":
                name = str(hp.get("FieldValue", "")).lower().encode("latin-1")
                value = next((v for k, v in headers if k == name), None)
            elif hp.get("Field") == "cookie":
                value = _cookie(headers, str(hp.get("FieldValue", "")))
            elif hp.get("Field") == "query_parameter":
                query = target.split(b"?", 1)[1].decode("latin-1") if b"?" in target else ""
                value = next((v.encode() for k, v in parse_qsl(query, keep_blank_values=True)
                              if k == hp.get("FieldValue")), None)
            if value is not None:
                parts.append(value)
                if hp.get("Terminal"):
                    break
        return b"\x00".join(parts) if parts else None


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> bytes | None:
    want = name.encode("latin-1")
    for k, v in headers:
        if k == b"cookie":
            for part in v.split(b";"):
                key, _, val = part.strip().partition(b"=")
                if key == want:
                    return val
    return None


@dataclass(frozen=True, slots=True)
class Leg:
    """Where a split (or a route without split) sends: a resolver's target and its failover targets."""

    target: Target
    failover: tuple[Target, ...]
    request_timeout: float | None  # the resolver's RequestTimeout
    lb: LoadBalancer
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    name: str = ""  # the split's resolver node, for logs


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    num_retries: int | None = None  # None: the proxy's configured default
    on_connect_failure: bool = True
    statuses: frozenset[int] | None = None  # None: the proxy's default (502, 503, 504 to idempotent requests)
    any_method: bool = False  # RetryOn/RetryOnStatusCodes set explicitly: the route's owner chose to retry
    grpc_statuses: frozenset[int] = frozenset()  # RetryOn's gRPC conditions (cancelled, unavailable, …) as codes


@dataclass(slots=True)
class Route:
    index: int
    path_exact: str = ""
    path_prefix: str = ""
    path_regex: re.Pattern[str] | None = None
    headers: tuple[tuple[bytes, str, Any, bool], ...] = ()  # (name, how, value, invert)
    query: tuple[tuple[str, str, Any], ...] = ()
    methods: frozenset[bytes] = frozenset()
    legs: tuple[Leg, ...] = ()
    cumulative: tuple[int, ...] = ()  # legs' weights in 1/100 %, summed
    prefix_rewrite: str | None = None
    request_timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()

    def matches(self, method: bytes, path: str, query: str, headers: list[tuple[bytes, bytes]]) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.path_exact and path != self.path_exact:
            return False
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and not self.path_regex.fullmatch(path):
            return False
        for name, how, want, invert in self.headers:
            value = next((v for k, v in headers if k == name), None)
            if _match_header(value, how, want) == invert:
                return False
        if self.query:
            params = dict(parse_qsl(query, keep_blank_values=True))
            for name, how, want in self.query:
                got = params.get(name)
                if how == "present":
                    if got is None:
                        return False
                elif how == "exact":
                    if got != want:
                        return False
                elif how == "regex" and (got is None or not want.fullmatch(got)):
                    return False
        return True


def _match_header(value: bytes | None, how: str, want: Any) -> bool:
    if how == "present":
        return value is not None
    if value is None:
        return False
    v = value.decode("latin-1")
    if how == "exact":
        return v == want
    if how == "prefix":
        return v.startswith(want)
    if how == "suffix":
        return v.endswith(want)
    if how == "contains":
        return want in v
    if how == "regex":
        return bool(want.fullmatch(v))
    return False


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    leg: Leg
    target: bytes | None  # the request target after PrefixRewrite (None: unchanged)
    request_ops: HeaderOps | None  # the route's and the split's RequestHeaders (None: none)
    response_ops: HeaderOps | None

    @property
    def timeout(self) -> float | None:
        return self.route.request_timeout if self.route.request_timeout is not None else self.leg.request_timeout


@dataclass(slots=True)
class RouteTable:
    service: str
    routes: list[Route]
    targets: dict[str, Target]
    default: bool = True
    # the Decisions of a route without PrefixRewrite, one per leg, made on first use (a Decision depends on the
    # route and leg only, so each request of such a route reuses one instead of building it and its HeaderOps)
    _fixed: dict[int, tuple[Decision, ...]] = field(default_factory=dict, repr=False, compare=False)

    def decide(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], draw: float) -> Decision | None:
        """The first route that matches and the split leg `draw` (uniform in [0, 1)) falls in; None when no
        route matches (a router without a catch-all cannot happen: the compiler adds one)."""
        raw_path, _, raw_query = target.partition(b"?")
        path = raw_path.decode("latin-1")
        query = raw_query.decode("latin-1")
        for i, route in enumerate(self.routes):
            if route.matches(method, path, query, headers):
                legs = route.legs
                n = 0 if len(legs) == 1 else min(bisect.bisect_right(route.cumulative, int(draw * 10000)),
                                                 len(legs) - 1)
                if route.prefix_rewrite is None:
                    fixed = self._fixed.get(i)
                    if fixed is None:
                        fixed = self._fixed[i] = tuple(
                            Decision(route, leg, None, _both(route.request_headers, leg.request_headers),
                                     _both(route.response_headers, leg.response_headers)) for leg in legs)
                    return fixed[n]
                leg = legs[n]
                prefix = route.path_prefix or route.path_exact
                new_path = route.prefix_rewrite + path[len(prefix):]
                if not new_path.startswith("/"):
                    new_path = "/" + new_path
                new_target = new_path.encode("latin-1") + (b"?" + raw_query if raw_query else b"")
                return Decision(route, leg, new_target, _both(route.request_headers, leg.request_headers),
                                _both(route.response_headers, leg.response_headers))
        return None

    @staticmethod
    def from_chain(chain: dict[str, Any]) -> RouteTable:
        try:
            return _build(chain)
        except (KeyError, TypeError, ValueError, AttributeError, re.error) as e:
            raise ChainFormatError(f"cannot apply the discovery chain of {chain.get('ServiceName')!r}: "
                                   f"{type(e).__name__}: {e}") from None


def _both(a: HeaderOps, b: HeaderOps) -> HeaderOps | None:
    if a and b:
        return a.then(b)
    return a or b or None


def _seconds(value: Any) -> float | None:
    """A chain duration: a Go string ("5s") or integer nanoseconds (what Go's JSON gives a time.Duration)."""
    if value in (None, "", 0):
        return None
    return durations.parse(value) or None  # Go's forms: "2.5s", "500µs", or integer nanoseconds


def _build(chain: dict[str, Any]) -> RouteTable:
    nodes: dict[str, Any] = chain["Nodes"]
    targets: dict[str, Target] = {}
    for tid, t in (chain.get("Targets") or {}).items():
        resolver = (nodes.get(f"resolver:{tid}") or {}).get("Resolver") or {"Default": True}
        targets[tid] = Target(id=tid, service=t["Service"], datacenter=t.get("Datacenter", ""),
                              filter=(t.get("Subset") or {}).get("Filter", ""),
                              only_passing=bool((t.get("Subset") or {}).get("OnlyPassing")),
                              connect_timeout=None if resolver.get("Default") else _seconds(t.get("ConnectTimeout")),
                              sni=str(t.get("SNI") or ""),
                              mesh_gateway=str((t.get("MeshGateway") or {}).get("Mode") or "").lower())

    def legs_of(node_key: str) -> tuple[list[Leg], list[int]]:
        node = nodes[node_key]
        if node["Type"] == "resolver":
            return [_leg(node, targets)], [10000]
        if node["Type"] != "splitter":
            raise ValueError(f"node {node_key!r} of type {node['Type']!r} cannot follow a route")
        legs, weights = [], []
        for split in node.get("Splits") or []:
            inner = nodes[split["NextNode"]]
            if inner["Type"] != "resolver":
                raise ValueError(f"split to {split['NextNode']!r}: the compiler flattens splitters")
            d = split.get("Definition") or {}
            leg = _leg(inner, targets)
            legs.append(Leg(leg.target, leg.failover, leg.request_timeout, leg.lb,
                            HeaderOps.parse(d.get("RequestHeaders")), HeaderOps.parse(d.get("ResponseHeaders")),
                            split["NextNode"]))
            weights.append(round(float(split.get("Weight", 0)) * 100))
        return legs, weights

    start = nodes[chain["StartNode"]]
    routes: list[Route] = []
    if start["Type"] == "router":
        for i, r in enumerate(start.get("Routes") or []):
            legs, weights = legs_of(r["NextNode"])
            routes.append(_route(i, r.get("Definition") or {}, legs, weights))
    else:
        legs, weights = legs_of(chain["StartNode"])
        routes.append(_route(0, {}, legs, weights))
    return RouteTable(service=chain["ServiceName"], routes=routes, targets=targets,
                      default=bool(chain.get("Default")))


def _leg(node: dict[str, Any], targets: dict[str, Target]) -> Leg:
    r = node["Resolver"]
    return Leg(target=targets[r["Target"]],
               failover=tuple(targets[t] for t in (r.get("Failover") or {}).get("Targets") or []),
               request_timeout=_seconds(r.get("RequestTimeout")),
               lb=LoadBalancer.from_entry(node.get("LoadBalancer")),
               name=node["Name"])


def _route(i: int, d: dict[str, Any], legs: list[Leg], weights: list[int]) -> Route:
    http = (d.get("Match") or {}).get("HTTP") or {}
    dest = d.get("Destination") or {}
    cum, total = [], 0
    for w in weights:
        total += w
        cum.append(total)
    headers = []
    for h in http.get("Header") or []:
        name = str(h["Name"]).lower().encode("latin-1")
        for how in ("Exact", "Prefix", "Suffix", "Contains", "Regex", "Present"):
            if h.get(how) not in (None, "", False):
                want = re.compile(h[how]) if how == "Regex" else h[how]
                headers.append((name, how.lower(), want, bool(h.get("Invert"))))
                break
        else:
            headers.append((name, "present", True, bool(h.get("Invert"))))
    query = []
    for q in http.get("QueryParam") or []:
        for how in ("Exact", "Regex", "Present"):
            if q.get(how) not in (None, "", False):
                query.append((q["Name"], how.lower(), re.compile(q[how]) if how == "Regex" else q[how]))
                break
    statuses = None
    retry_on = dest.get("RetryOn") or []
    if dest.get("RetryOnStatusCodes") or retry_on:
        s = set(dest.get("RetryOnStatusCodes") or [])
        if "5xx" in retry_on:
            s |= set(range(500, 600))
        if "gateway-error" in retry_on:
            s |= {502, 503, 504}
        if "retriable-4xx" in retry_on:
            s.add(409)
        statuses = frozenset(s)
    on_connect = bool(dest.get("RetryOnConnectFailure")) or any(
        c in retry_on for c in ("connect-failure", "reset", "refused-stream"))
    retry = RetryPolicy(num_retries=dest.get("NumRetries") if "NumRetries" in dest else None,
                        on_connect_failure=on_connect if (dest.get("RetryOnConnectFailure") is not None or retry_on)
                        else True,
                        statuses=statuses, any_method=statuses is not None,
                        grpc_statuses=frozenset(GRPC_RETRY_ON[c] for c in retry_on if c in GRPC_RETRY_ON))
    return Route(
        index=i, path_exact=http.get("PathExact", ""), path_prefix=http.get("PathPrefix", ""),
        path_regex=re.compile(http["PathRegex"]) if http.get("PathRegex") else None,
        headers=tuple(headers), query=tuple(query),
        methods=frozenset(m.upper().encode() for m in http.get("Methods") or []),
        legs=tuple(legs), cumulative=tuple(cum),
        prefix_rewrite=dest["PrefixRewrite"] if dest.get("PrefixRewrite") else None,
        request_timeout=_seconds(dest.get("RequestTimeout")), retry=retry,
        request_headers=HeaderOps.parse(dest.get("RequestHeaders")),
        response_headers=HeaderOps.parse(dest.get("ResponseHeaders")))
