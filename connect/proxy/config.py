"""The proxy's configuration, read from its `connect-proxy` service registration (Consul's shapes).

The agent hands the registration out at `/v1/agent/service/:proxy_id` (JSON, PascalCase). Consul
accepts snake_case inside `Proxy.Config` and the upstream blocks of config files; both are read here.
Pure: no I/O. A registration that cannot be run raises `ProxyConfigError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from proconsul.connect.errors import ConnectError

PROTOCOLS = ("tcp", "http", "http2", "grpc")
GATEWAY_MODES = ("", "none", "local", "remote")  # Consul's mesh_gateway { mode }: "" is the default (none)
LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")


class ProxyConfigError(ConnectError):
    """A proxy registration or its Proxy.Config has a missing or wrong field."""


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """Passive health checking of upstream instances (Consul's PassiveHealthCheck names)."""

    max_failures: int = 5  # consecutive connect failures (or 5xx in L7) before ejection
    base_ejection: float = 30.0  # seconds; doubles with every ejection in a row
    max_ejection_percent: int = 50  # never eject more than this share of an upstream's instances
    enforcing_consecutive_5xx: int = 100  # % chance an ejection for consecutive 5xx is carried out (Envoy's)
    interval: float = 10.0  # Envoy's analysis sweep; here failures count as they happen (accepted, documented)


@dataclass(frozen=True, slots=True)
class Limits:
    """Circuit breaking for one upstream (Consul's UpstreamConfig.Limits; 0 = no limit)."""

    max_connections: int = 0  # requests in flight at once (HTTP/1.1: one connection each); more wait…
    max_pending_requests: int = 0  # …in a queue this long (0 with max_connections set: Envoy's 1024)
    max_concurrent_requests: int = 0  # requests in flight at once; more are answered 503 at once

    def __bool__(self) -> bool:
        return bool(self.max_connections or self.max_concurrent_requests)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Retries under a budget (on by default), so a failing service is never hit by a retry storm."""

    num_retries: int = 2  # extra attempts per request (L7) or connection (connect failures)
    budget_ratio: float = 0.2  # retries may add at most this share of requests…
    budget_min_per_second: float = 10.0  # …plus this floor, so a quiet service can still retry
    retry_on_5xx: bool = True  # L7: retry idempotent requests answered 502/503/504


@dataclass(frozen=True, slots=True)
class Upstream:
    destination_name: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"
    destination_type: str = "service"
    datacenter: str = ""
    connect_timeout: float = 5.0
    protocol: str = "tcp"  # "" until resolved: Config.protocol, then service-defaults, then proxy-defaults
    lb_policy: str = "round_robin"
    request_timeout: float = 15.0  # L7: whole request, headers to end of response
    mesh_gateway: str = ""  # for another datacenter: "local" (through our gateway), "remote" (theirs), "none"/""
    limits: Limits = field(default_factory=Limits)
    outlier: OutlierSettings | None = None  # None: the proxy's Proxy.Config.passive_health_check
    # "name:address:port", the runtime's key for the upstream's pool, chain and breaker: looked up several
    # times a request in HTTP mode, so made once (a property formatted it each time)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.destination_name}:{self.local_bind_address}:{self.local_bind_port}")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    proxy_id: str  # the connect-proxy service ID
    proxy_name: str
    service: str  # the destination service this proxy fronts (its identity)
    service_id: str
    bind_address: str
    bind_port: int
    local_address: str
    local_port: int
    upstreams: tuple[Upstream, ...] = ()
    protocol: str = "tcp"
    local_connect_timeout: float = 5.0
    local_request_timeout: float = 15.0
    handshake_timeout: float = 10.0
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    upstream_raw: tuple[dict[str, Any], ...] = field(default=(), compare=False)  # as registered, for layering


def _get(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    """A field by any of Consul's spellings (PascalCase, snake_case)."""
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _duration(value: Any, what: str, default: float) -> float:
    """Milliseconds as a number (Consul's `*_ms` keys) or a Go-style duration string."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ProxyConfigError(f"{what} must be a number of milliseconds or a duration, not {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise ProxyConfigError(f"{what} must be positive, got {value}")
        return float(value) / 1000.0
    if isinstance(value, str):
        from proconsul.connect.proxy.durations import parse_seconds

        try:
            return parse_seconds(value)
        except ValueError as e:
            raise ProxyConfigError(f"{what}: {e}") from None
    raise ProxyConfigError(f"{what} must be a number of milliseconds or a duration, not {value!r}")


def _int(value: Any, what: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProxyConfigError(f"{what} must be a whole number, not {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ProxyConfigError(f"{what} must be a whole number, not {value!r}") from None
    if not lo <= n <= hi:
        raise ProxyConfigError(f"{what} must be between {lo} and {hi}, got {n}")
    return n


def _protocol(value: Any, what: str, default: str) -> str:
    p = str(value or default).lower()
    if p and p not in PROTOCOLS:
        raise ProxyConfigError(f"{what} {p!r} is not one of {', '.join(PROTOCOLS)}")
    return p


def _gateway_mode(raw: Any, what: str, default: str = "") -> str:
    """`MeshGateway: {Mode}` / `mesh_gateway { mode }` (HCL blocks arrive as a list of one object)."""
    block = _get(raw, "MeshGateway", "mesh_gateway", default=None) if isinstance(raw, dict) else None
    if isinstance(block, list) and len(block) == 1:
        block = block[0]
    if block in (None, {}):
        return default
    if not isinstance(block, dict):
        raise ProxyConfigError(f"{what}.MeshGateway must be an object")
    mode = str(_get(block, "Mode", "mode", default="") or "").lower()
    if mode not in GATEWAY_MODES:
        raise ProxyConfigError(f"{what}.MeshGateway.Mode {mode!r} is not one of none, local, remote")
    return mode or default


def parse_upstream(raw: Any, i: int, proxy_config: dict[str, Any], gateway_default: str = "") -> Upstream:
    what = f"Proxy.Upstreams[{i}]"
    if not isinstance(raw, dict):
        raise ProxyConfigError(f"{what} must be an object")
    name = _get(raw, "DestinationName", "destination_name")
    if not isinstance(name, str) or not name:
        raise ProxyConfigError(f"{what}.DestinationName is required")
    dtype = _get(raw, "DestinationType", "destination_type", default="service") or "service"
    if dtype != "service":
        raise ProxyConfigError(f"{what}.DestinationType {dtype!r} is not supported (only \"service\"; "
                               "prepared-query upstreams are not built yet)")
    port = _int(_get(raw, "LocalBindPort", "local_bind_port"), f"{what}.LocalBindPort", 0, 1, 65535)
    if port == 0:
        raise ProxyConfigError(f"{what}.LocalBindPort is required")
    cfg = _get(raw, "Config", "config", default={}) or {}
    if not isinstance(cfg, dict):
        raise ProxyConfigError(f"{what}.Config must be an object")
    lb = str(_get(cfg, "lb_policy", "LBPolicy", default=_get(proxy_config, "lb_policy", default="round_robin")))
    if lb not in LB_POLICIES:
        raise ProxyConfigError(f"{what}.Config.lb_policy {lb!r} is not one of {', '.join(LB_POLICIES)}")
    return Upstream(
        limits=parse_limits(cfg, f"{what}.Config"),
        outlier=parse_outlier(cfg, f"{what}.Config") if _get(cfg, "passive_health_check", "PassiveHealthCheck")
        else None,
        destination_name=name,
        local_bind_port=port,
        local_bind_address=str(_get(raw, "LocalBindAddress", "local_bind_address", default="127.0.0.1")),
        destination_type=dtype,
        datacenter=str(_get(raw, "Datacenter", "datacenter", default="")),
        connect_timeout=_duration(_get(cfg, "connect_timeout_ms", "ConnectTimeoutMs"),
                                  f"{what}.Config.connect_timeout_ms", 5.0),
        protocol=_protocol(_get(cfg, "protocol", "Protocol"), f"{what}.Config.protocol", ""),
        lb_policy=lb,
        request_timeout=_duration(_get(cfg, "request_timeout_ms", "RequestTimeoutMs"),
                                  f"{what}.Config.request_timeout_ms", 15.0),
        mesh_gateway=_gateway_mode(raw, what, gateway_default),
    )


def parse_outlier(cfg: dict[str, Any], what: str = "Proxy.Config",
                  base: OutlierSettings | None = None) -> OutlierSettings:
    """`passive_health_check` of `cfg` (Consul's snake_case or PascalCase); unset fields keep `base`'s."""
    raw = _get(cfg, "passive_health_check", "PassiveHealthCheck", default={}) or {}
    if not isinstance(raw, dict):
        raise ProxyConfigError(f"{what}.passive_health_check must be an object")
    b = base or OutlierSettings()
    w = f"{what}.passive_health_check"
    return OutlierSettings(
        max_failures=_int(_get(raw, "max_failures", "MaxFailures"), f"{w}.max_failures", b.max_failures, 1, 1000),
        base_ejection=_duration(_get(raw, "base_ejection_time", "BaseEjectionTime"), f"{w}.base_ejection_time",
                                b.base_ejection),
        max_ejection_percent=_int(_get(raw, "max_ejection_percent", "MaxEjectionPercent"),
                                  f"{w}.max_ejection_percent", b.max_ejection_percent, 0, 100),
        enforcing_consecutive_5xx=_int(_get(raw, "enforcing_consecutive_5xx", "EnforcingConsecutive5xx"),
                                       f"{w}.enforcing_consecutive_5xx", b.enforcing_consecutive_5xx, 0, 100),
        interval=_duration(_get(raw, "interval", "Interval"), f"{w}.interval", b.interval),
    )


def parse_limits(cfg: dict[str, Any], what: str, base: Limits | None = None) -> Limits:
    raw = _get(cfg, "limits", "Limits", default={}) or {}
    if not isinstance(raw, dict):
        raise ProxyConfigError(f"{what}.limits must be an object")
    b = base or Limits()
    w = f"{what}.limits"
    return Limits(
        max_connections=_int(_get(raw, "max_connections", "MaxConnections"), f"{w}.max_connections",
                             b.max_connections, 0, 10**9),
        max_pending_requests=_int(_get(raw, "max_pending_requests", "MaxPendingRequests"),
                                  f"{w}.max_pending_requests", b.max_pending_requests, 0, 10**9),
        max_concurrent_requests=_int(_get(raw, "max_concurrent_requests", "MaxConcurrentRequests"),
                                     f"{w}.max_concurrent_requests", b.max_concurrent_requests, 0, 10**9))


def with_upstream_config(cfg: ProxyConfig, upstream_config: dict[str, Any] | None) -> ProxyConfig:
    """Apply the service's `service-defaults` UpstreamConfig (Defaults, then the Override named for each
    upstream) under what the registration's upstream Config sets itself — Consul's precedence."""
    if not upstream_config:
        return cfg
    defaults = upstream_config.get("Defaults") or {}
    overrides = {o.get("Name"): o for o in upstream_config.get("Overrides") or [] if o.get("Name")}
    out = []
    for u, raw in zip(cfg.upstreams, cfg.upstream_raw, strict=True):
        own = _get(raw, "Config", "config", default={}) or {}
        layered = [defaults, overrides.get(u.destination_name) or {}, own]
        limits, outlier = Limits(), cfg.outlier
        timeout, protocol = None, ""
        for i, layer in enumerate(layered):
            what = ("UpstreamConfig.Defaults", f"UpstreamConfig.Overrides[{u.destination_name!r}]",
                    f"Proxy.Upstreams[{u.destination_name!r}].Config")[i]
            limits = parse_limits(layer, what, limits)
            if _get(layer, "passive_health_check", "PassiveHealthCheck"):
                outlier = parse_outlier(layer, what, outlier)
            t = _get(layer, "connect_timeout_ms", "ConnectTimeoutMs")
            if t:
                timeout = _duration(t, f"{what}.connect_timeout_ms", 5.0)
            protocol = _protocol(_get(layer, "protocol", "Protocol"), f"{what}.protocol", protocol)
        # MeshGateway: the upstream's own block wins; else the Override's, then the Defaults'; else the proxy's.
        gateway = _gateway_mode(raw, f"Proxy.Upstreams[{u.destination_name!r}]") or _gateway_mode(
            overrides.get(u.destination_name) or {}, f"UpstreamConfig.Overrides[{u.destination_name!r}]") or \
            _gateway_mode(defaults, "UpstreamConfig.Defaults") or u.mesh_gateway
        out.append(replace(u, limits=limits, outlier=outlier if outlier != cfg.outlier else u.outlier,
                           connect_timeout=timeout if timeout is not None else u.connect_timeout,
                           protocol=protocol or u.protocol, mesh_gateway=gateway))
    return replace(cfg, upstreams=tuple(out))


def parse_retry(cfg: dict[str, Any]) -> RetrySettings:
    budget = _get(cfg, "retry_budget", "RetryBudget", default={}) or {}
    if not isinstance(budget, dict):
        raise ProxyConfigError("Proxy.Config.retry_budget must be an object")
    ratio = _get(budget, "ratio", "Ratio", default=0.2)
    floor = _get(budget, "min_per_second", "MinRetriesPerSecond", default=10)
    try:
        ratio, floor = float(ratio), float(floor)
    except (TypeError, ValueError):
        raise ProxyConfigError("Proxy.Config.retry_budget.ratio and min_per_second must be numbers") from None
    if not 0 <= ratio <= 1 or floor < 0:
        raise ProxyConfigError("Proxy.Config.retry_budget.ratio must be within 0..1 and min_per_second ≥ 0")
    return RetrySettings(
        num_retries=_int(_get(cfg, "num_retries", "NumRetries"), "Proxy.Config.num_retries", 2, 0, 10),
        budget_ratio=ratio, budget_min_per_second=floor,
        retry_on_5xx=bool(_get(cfg, "retry_on_5xx", default=True)))


def from_registration(svc: Any) -> ProxyConfig:
    """The ProxyConfig of a `connect-proxy` registration as `/v1/agent/service/:id` returns it."""
    if not isinstance(svc, dict):
        raise ProxyConfigError("the proxy registration must be an object")
    if svc.get("Kind") != "connect-proxy":
        raise ProxyConfigError(f"service {svc.get('ID')!r} is not a connect-proxy (Kind {svc.get('Kind')!r})")
    proxy = svc.get("Proxy") or {}
    if not isinstance(proxy, dict):
        raise ProxyConfigError("Proxy must be an object")
    dest = _get(proxy, "DestinationServiceName", "destination_service_name")
    if not isinstance(dest, str) or not dest:
        raise ProxyConfigError("Proxy.DestinationServiceName is required")
    cfg = _get(proxy, "Config", "config", default={}) or {}
    if not isinstance(cfg, dict):
        raise ProxyConfigError("Proxy.Config must be an object")
    port = _int(svc.get("Port"), "Port", 0, 0, 65535)
    if port == 0:
        raise ProxyConfigError("Port is required: the proxy's public mTLS listener needs one")
    local_port = _int(_get(proxy, "LocalServicePort", "local_service_port"), "Proxy.LocalServicePort", 0, 0, 65535)
    upstreams = _get(proxy, "Upstreams", "upstreams", default=[]) or []
    if not isinstance(upstreams, list):
        raise ProxyConfigError("Proxy.Upstreams must be a list")
    gateway_default = _gateway_mode(proxy, "Proxy")
    parsed = tuple(parse_upstream(u, i, cfg, gateway_default) for i, u in enumerate(upstreams))
    binds = [(u.local_bind_address, u.local_bind_port) for u in parsed]
    if len(set(binds)) != len(binds):
        raise ProxyConfigError("Proxy.Upstreams: two upstreams bind the same local address and port")
    bind_address = str(_get(cfg, "bind_address", default=svc.get("Address") or "127.0.0.1"))
    bind_port = _int(_get(cfg, "bind_port"), "Proxy.Config.bind_port", port, 1, 65535)
    return ProxyConfig(
        proxy_id=str(svc.get("ID") or ""),
        proxy_name=str(svc.get("Service") or ""),
        service=dest,
        service_id=str(_get(proxy, "DestinationServiceID", "destination_service_id", default=dest)),
        bind_address=bind_address,
        bind_port=bind_port,
        local_address=str(_get(proxy, "LocalServiceAddress", "local_service_address", default="127.0.0.1")
                          or "127.0.0.1"),
        local_port=local_port,
        upstreams=parsed,
        upstream_raw=tuple(upstreams),
        protocol=_protocol(_get(cfg, "protocol", "Protocol"), "Proxy.Config.protocol", ""),
        local_connect_timeout=_duration(_get(cfg, "local_connect_timeout_ms"), "Proxy.Config.local_connect_timeout_ms",
                                        5.0),
        local_request_timeout=_duration(_get(cfg, "local_request_timeout_ms"), "Proxy.Config.local_request_timeout_ms",
                                        15.0),
        handshake_timeout=_duration(_get(cfg, "handshake_timeout_ms"), "Proxy.Config.handshake_timeout_ms", 10.0),
        outlier=parse_outlier(cfg),
        retry=parse_retry(cfg),
    )


def with_protocols(cfg: ProxyConfig, service_protocols: dict[str, str], default_protocol: str) -> ProxyConfig:
    """Fill protocols the registration does not set, as Consul resolves them: a service's
    `service-defaults` Protocol, else `proxy-defaults` (global) Config.protocol, else tcp."""
    def pick(explicit: str, service: str) -> str:
        chosen = explicit or service_protocols.get(service, "") or default_protocol or "tcp"
        return chosen if chosen in PROTOCOLS else "tcp"

    return replace(cfg, protocol=pick(cfg.protocol, cfg.service),
                   upstreams=tuple(replace(u, protocol=pick(u.protocol, u.destination_name)) for u in cfg.upstreams))


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What a new registration changes for a running proxy (pure: see `changes`)."""

    added: tuple[Upstream, ...] = ()
    removed: tuple[Upstream, ...] = ()
    changed: tuple[Upstream, ...] = ()  # same listener (name, address, port), new settings
    public_moved: bool = False  # the public listener binds elsewhere now
    restart: bool = False  # the proxy fronts another service: its identity, leaf and intentions change
    other: bool = False  # anything else (local app address, timeouts, protocol, outlier, retries)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.public_moved or self.restart or self.other)


def changes(old: ProxyConfig, new: ProxyConfig) -> ConfigChange:
    """How to get a running proxy from `old` to `new` without a restart (only a new destination service
    needs one: its identity is the proxy's)."""
    if (old.service, old.proxy_id) != (new.service, new.proxy_id):
        return ConfigChange(restart=True)
    before = {u.key: u for u in old.upstreams}
    after = {u.key: u for u in new.upstreams}
    return ConfigChange(
        added=tuple(u for k, u in after.items() if k not in before),
        removed=tuple(u for k, u in before.items() if k not in after),
        changed=tuple(u for k, u in after.items() if k in before and before[k] != u),
        public_moved=(old.bind_address, old.bind_port) != (new.bind_address, new.bind_port),
        other=replace(old, upstreams=(), bind_address="", bind_port=0) != replace(new, upstreams=(), bind_address="",
                                                                                 bind_port=0),
    )
