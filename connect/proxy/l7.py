"""What both L7 modes decide per request, the same way: HTTP/1.1 (http.py) and HTTP/2 and gRPC streams
(h2relay.py) — which instance an attempt goes to, the request timeout, whether a response or a failure
earns another attempt, and what is told about a finished request (access log, tap, tracing span).

Time is an argument; the runtime's pools, retry budget and settings are what the decisions read (and the
budget and pools what they count in). The modes keep their own framing and connection handling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proconsul.connect.proxy.accesslog import fixed_fields
from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance, UpstreamPool
from proconsul.connect.proxy.config import ProxyConfig, Upstream
from proconsul.connect.proxy.routing import Decision, Target
from proconsul.connect.proxy.tracing import CONNECTION_ATTRIBUTES, TraceContext, connection_attributes

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

DENIED_DETAILS = "rbac_access_denied_matched_policy[none]"  # Envoy's response code details of a denied request
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})

# gRPC status codes the proxy answers with itself (trailers-only responses)
GRPC_DEADLINE_EXCEEDED, GRPC_PERMISSION_DENIED, GRPC_UNIMPLEMENTED, GRPC_UNAVAILABLE = 4, 7, 12, 14


def grpc_status_for(status: int) -> int:
    """The gRPC status of an answer the proxy makes itself (gRPC's HTTP-to-gRPC mapping, as Envoy's local
    replies; a request timeout is DEADLINE_EXCEEDED, as Envoy answers since it stopped mapping 504)."""
    if status == 504:
        return GRPC_DEADLINE_EXCEEDED
    if status == 403:
        return GRPC_PERMISSION_DENIED
    if status == 404:
        return GRPC_UNIMPLEMENTED
    if status == 401:
        return 16  # UNAUTHENTICATED
    if status in (429, 502, 503):
        return GRPC_UNAVAILABLE
    return 2 if status >= 400 else 0  # UNKNOWN


def may_retry(method: bytes, status: int, held: bool, retry_on_5xx: bool) -> bool:
    """The proxy's default (no retry policy on the route): a 502/503/504 to an idempotent request whose body
    we still hold is worth another instance (pure)."""
    return retry_on_5xx and held and status in RETRY_STATUSES and method in IDEMPOTENT


def retry_on_response(d: Decision | None, retry_on_5xx: bool, method: bytes, status: int, held: bool,
                      grpc_status: int | None = None) -> bool:
    """Whether this response (before any of it went to the caller) matches the route's retry conditions:
    `RetryOnStatusCodes`/`RetryOn` HTTP statuses, `RetryOn` gRPC statuses (`cancelled`, `unavailable`, … read
    from a trailers-only response), else the proxy's default."""
    policy = d.route.retry if d is not None else None
    if policy is not None and policy.statuses is not None:
        if not held:
            return False
        return status in policy.statuses or (grpc_status is not None and grpc_status in policy.grpc_statuses)
    return may_retry(method, status, held, retry_on_5xx)


def retry_on_failure(d: Decision | None) -> bool:
    """Whether a connect failure or a reset before the response is retried (the route's
    `RetryOnConnectFailure`/`RetryOn` connect-failure, reset, refused-stream; default yes)."""
    return d is None or d.route.retry.on_connect_failure


def num_retries(rt: Runtime, d: Decision | None) -> int:
    n = d.route.retry.num_retries if d is not None else None
    return n if n is not None else rt.config.retry.num_retries


def another_attempt(rt: Runtime, d: Decision | None, attempt: int, now: float) -> bool:
    """Attempt number `attempt + 1` is within the route's retries and the retry budget (counted if so)."""
    return attempt + 1 <= num_retries(rt, d) and rt.budget.try_retry(now)


def request_timeout(up: Upstream, d: Decision | None) -> float:
    """The route's RequestTimeout, else the resolver's, else the upstream's request_timeout_ms."""
    t = d.timeout if d is not None else None
    return t if t is not None else up.request_timeout


def target_of(d: Decision, inst: Instance | None) -> Target:
    """The chain target `inst` was picked from (the leg's own, or the failover target of its service)."""
    leg = d.leg
    if inst is None or inst.service == leg.target.service:
        return leg.target
    return next((t for t in leg.failover if t.service == inst.service), leg.target)


def dial_settings(up: Upstream, d: Decision | None, inst: Instance) -> Upstream:
    """The upstream's settings for dialing `inst`, with its chain target's ConnectTimeout when it has one."""
    if d is not None:
        t = target_of(d, inst).connect_timeout
        if t is not None and t != up.connect_timeout:
            return replace(up, connect_timeout=t)
    return up


def pick(rt: Runtime, up: Upstream, d: Decision | None, tried: set[str], hash_key: bytes | None,
         now: float) -> tuple[UpstreamPool, Instance]:
    """An instance for the next attempt: the leg's target, else its failover targets in order (the
    upstream's own pool without a chain). Raises NoHealthyInstance."""
    if d is None:
        pool = rt.pools.get(up.key)
        if pool is None:
            raise NoHealthyInstance(f"upstream {up.destination_name!r} is not known yet")
        return pool, pool.pick(now, rt.rng, tried)
    leg = d.leg
    error: NoHealthyInstance | None = None
    for target in (leg.target, *leg.failover):
        pool = rt.pool_for(up, target)
        if pool is None:
            continue
        try:
            return pool, pool.pick(now, rt.rng, tried, hash_key)
        except NoHealthyInstance as e:
            error = error or e
    raise error or NoHealthyInstance(f"upstream {up.destination_name!r}: target {leg.target.id} has no "
                                     "instances known yet")


def another_instance(rt: Runtime, up: Upstream, d: Decision | None, tried: set[str], now: float) -> bool:
    """Whether a retry would find an instance this request has not tried (`pick`'s targets, in its order).
    When none is left the last answer or failure stands: a retry would only turn it into "no healthy
    upstream"."""
    if d is None:
        pool = rt.pools.get(up.key)
        return pool is not None and pool.has_ready(now, tried)
    for target in (d.leg.target, *d.leg.failover):
        pool = rt.pool_for(up, target)
        if pool is not None and pool.has_ready(now, tried):
            return True
    return False


def app_timeout_warning(method: bytes, target: bytes, source: str, timeout: float) -> str:
    """The inbound side's log line when its application did not answer within local_request_timeout_ms."""
    return (f"inbound {method.decode('latin-1')} {target.decode('latin-1')} from {source}: the application did not "
            f"answer within {timeout:.1f}s")


def upstream_fields(rec: dict[str, Any], up: Upstream, d: Decision | None, inst: Instance | None) -> None:
    """The access-log fields of the upstream side: service, instance, cluster (chain target), route, split."""
    rec["upstream_service"] = inst.service if inst is not None else up.destination_name
    rec["upstream_instance"] = inst.id if inst is not None else ""
    rec["upstream_host"] = f"{inst.address}:{inst.port}" if inst is not None else ""
    if d is not None:
        rec["upstream_cluster"] = target_of(d, inst).id
        rec["route_name"] = f"{up.destination_name}/{d.route.index}"
        rec["split"] = d.leg.name
    else:
        rec["upstream_cluster"] = up.destination_name


def wants_record(rt: Runtime, trace: TraceContext | None) -> bool:
    """Whether anyone reads a finished request's record (access log, a tap watcher, a sampled span): when
    not, the record is not even built."""
    return rt.access_log is not None or rt.tap is not None or (trace is not None and trace.sampled)


def publish(rt: Runtime, rec: dict[str, Any], started: float, now: float, inbound: bool,
            trace: TraceContext | None, status: int, flag: str, extra: dict[str, Any] | None = None) -> None:
    """A finished request's record to the access log, the tap's watchers and its span."""
    if rt.access_log is not None:
        rt.access_log.request(rec)
    tap = rt.tap
    if tap is not None:
        rec["latency_ms"] = round((now - started) * 1000, 3)
        tap.offer(rec, inbound, now)
    if trace is not None and trace.sampled and rt.tracer is not None:
        attributes = {"http.request.method": rec["method"], "url.path": rec["path"], "http.response.status_code": status,
                      **{attr: rec.get(name) for attr, name in CONNECTION_ATTRIBUTES},
                      "proconsul.response_flags": flag if flag != "-" else None}
        if extra:
            attributes.update(extra)
        rt.tracer.finish(trace, f"{rec['method']} {rec.get('upstream_service', '')}", status, attributes)


class Fixed:
    """What is told about a connection's requests to one route and instance that is the same for all of them:
    its access-log fields, formatted once, and its span's attributes, encoded once (`Fixed.of`)."""

    __slots__ = ("decision", "inst", "scope", "service", "log", "span")

    def __init__(self, decision: Decision | None, inst: Instance | None, scope: object, fields: dict[str, Any]) -> None:
        self.decision, self.inst, self.scope = decision, inst, scope  # kept: what it was made for
        self.service: str = fields.get("upstream_service") or ""
        self.log = fixed_fields(fields)
        self.span = connection_attributes(fields)

    @staticmethod
    def of(cache: dict[tuple[int, int, int], Fixed], d: Decision | None, inst: Instance | None, scope: object,
           fields: Callable[[Decision | None, Instance | None, object], dict[str, Any]]) -> Fixed:
        """The entry of a connection's `cache` for (route decision, instance, `scope`: the upstream or the
        config the fields come from), made by `fields(d, inst, scope)` when missing. The entry holds the objects
        its key's ids belong to, so an id is never another object's."""
        key = (id(d), id(inst), id(scope))
        got = cache.get(key)
        if got is None or got.decision is not d or got.inst is not inst or got.scope is not scope:
            if len(cache) >= 64:
                cache.clear()
            got = cache[key] = Fixed(d, inst, scope, fields(d, inst, scope))
        return got


class IntentionGate:
    """One inbound connection's L7 intention check: whether its requests must be decided one by one (an
    intention with Permissions governs its source, or the connection alone would be denied) is worked out
    again only when the policy object changes."""

    __slots__ = ("policy", "per_request", "reason")

    def __init__(self) -> None:
        self.policy: Any = None
        self.per_request = False
        self.reason = ""  # the intention that denied the last request denied (for its access-log line)

    def denies(self, rt: Runtime, uri: str, method: bytes, path: str, target: bytes,
               headers: list[tuple[bytes, bytes]]) -> bool:
        """True when the intentions deny this request (the refusal is recorded and logged)."""
        policy = rt.policy
        if policy is None:
            return False
        if policy is not self.policy:
            self.policy = policy
            self.per_request = policy.needs_requests(uri) or not policy.connection(uri).allowed
        if not self.per_request:
            return False
        d = policy.request(uri, method.decode(), path, {k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
        if d.allowed:
            return False
        self.reason = d.reason
        rt.refused(d.source, f"{method.decode()} {target.decode('latin-1')}: {d.reason}")
        return True


def inbound_fields(rec: dict[str, Any], rt: Runtime, uri: str, denied: bool, intention: str = "",
                   cluster: str = "local_app", host: str | None = None, cfg: ProxyConfig | None = None) -> None:
    """The access-log fields of the inbound side: the caller's identity and where the request went (the
    local application; at a terminating gateway the outside service's `cluster` and instance `host`). A
    denied request names the deciding `intention`. `cfg`: the proxy's config the request saw (default: now)."""
    cfg = cfg if cfg is not None else rt.config
    rec.update({"downstream_peer_uri_san": uri, "upstream_cluster": cluster, "upstream_service": cfg.service,
                "upstream_host": f"{cfg.local_address}:{cfg.local_port}" if host is None else host})
    if denied:
        denied_fields(rec, intention)


def denied_fields(rec: dict[str, Any], intention: str) -> None:
    """A denied request's fields: Envoy's response code details and the `intention` that decided it."""
    rec["response_code_details"] = DENIED_DETAILS
    if intention:
        rec["intention"] = intention
