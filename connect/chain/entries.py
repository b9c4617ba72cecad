"""Consul's traffic-management config entries, each checked on its own: service-resolver, -splitter,
-router, service-defaults and proxy-defaults.

`validate(entry)` returns the entry in Consul's canonical shape (PascalCase fields, durations as Go
prints them) or raises `InvalidConfigEntry` naming the entry and the field. Checks that need other
entries (a subset that does not exist, a router on a tcp service, a redirect loop) are the compiler's
(`connect.chain.compiler`). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proconsul.catalog.filter import FilterError, compile_filter
from proconsul.connect.chain import gateway_tls
from proconsul.connect.chain.schema import (
    Bool,
    Duration,
    Float,
    Int,
    List,
    Map,
    Obj,
    Opaque,
    SchemaError,
    Str,
)
from proconsul.connect.errors import InvalidConfigEntry

PROTOCOLS = ("tcp", "http", "http2", "grpc")
L7_PROTOCOLS = ("http", "http2", "grpc")
LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
HASH_FIELDS = ("", "header", "cookie", "query_parameter")
METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
            "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
ACCESS_LOG_TYPES = ("", "file", "stdout", "stderr")
SUBSET_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
CHAIN_KINDS = ("service-resolver", "service-splitter", "service-router")
KINDS = (*CHAIN_KINDS, "service-defaults", "proxy-defaults", "ingress-gateway", "terminating-gateway")

_COMMON = {"Kind": Str(), "Name": Str(), "Namespace": Str(), "Partition": Str(), "Meta": Map(Str()),
           "CreateIndex": Int(hi=2**64 - 1), "ModifyIndex": Int(hi=2**64 - 1), "Hash": Str()}
_MESH_GATEWAY = Obj({"Mode": Str(choices=("", "none", "local", "remote"), lower=True)})
_HEADERS = Obj({"Add": Map(Str()), "Set": Map(Str()), "Remove": List(Str())})
_EXTENSIONS = List(Opaque())
_TPROXY = Obj({"OutboundListenerPort": Int(hi=65535), "DialedDirectly": Bool()})
_EXPOSE = Obj({"Checks": Bool(), "Paths": List(Obj({"Path": Str(), "LocalPathPort": Int(hi=65535),
                                                      "ListenerPort": Int(hi=65535), "Protocol": Str()}))})
_MODE = Str(choices=("", "direct", "transparent"))

_LIMITS = Obj({"MaxConnections": Int(), "MaxPendingRequests": Int(), "MaxConcurrentRequests": Int()})
_PASSIVE = Obj({"Interval": Duration(), "MaxFailures": Int(), "EnforcingConsecutive5xx": Int(hi=100),
                "MaxEjectionPercent": Int(hi=100), "BaseEjectionTime": Duration()})
_UPSTREAM_FIELDS = {"Name": Str(), "Namespace": Str(), "Partition": Str(), "Peer": Str(),
                    "EnvoyListenerJSON": Str(), "EnvoyClusterJSON": Str(),
                    "Protocol": Str(choices=("", *PROTOCOLS), lower=True), "ConnectTimeoutMs": Int(),
                    "Limits": _LIMITS, "PassiveHealthCheck": _PASSIVE, "MeshGateway": _MESH_GATEWAY,
                    "BalanceOutboundConnections": Str()}
_RATE_ROUTE = Obj({"PathExact": Str(), "PathPrefix": Str(), "PathRegex": Str(), "RequestsPerSecond": Int(),
                   "RequestsMaxBurst": Int()})

SERVICE_DEFAULTS = Obj({
    **_COMMON,
    "Protocol": Str(choices=("", *PROTOCOLS), lower=True), "Mode": _MODE, "TransparentProxy": _TPROXY,
    "MutualTLSMode": Str(choices=("", "strict", "permissive")), "MeshGateway": _MESH_GATEWAY,
    "ExternalSNI": Str(), "Expose": _EXPOSE,
    "UpstreamConfig": Obj({"Defaults": Obj(_UPSTREAM_FIELDS), "Overrides": List(Obj(_UPSTREAM_FIELDS))}),
    "Destination": Obj({"Addresses": List(Str()), "Port": Int(hi=65535)}),
    "MaxInboundConnections": Int(), "LocalConnectTimeoutMs": Int(), "LocalRequestTimeoutMs": Int(),
    "BalanceInboundConnections": Str(),
    "RateLimits": Obj({"InstanceLevel": Obj({"RequestsPerSecond": Int(), "RequestsMaxBurst": Int(),
                                             "Routes": List(_RATE_ROUTE)})}),
    "EnvoyExtensions": _EXTENSIONS,
})

ACCESS_LOGS = Obj({"Enabled": Bool(), "DisableListenerLogs": Bool(), "Type": Str(choices=ACCESS_LOG_TYPES,
                                                                                   lower=True),
                   "Path": Str(), "JSONFormat": Str(), "TextFormat": Str()})
PROXY_DEFAULTS = Obj({
    **_COMMON,
    "Config": Opaque(), "Mode": _MODE, "TransparentProxy": _TPROXY,
    "MutualTLSMode": Str(choices=("", "strict", "permissive")), "MeshGateway": _MESH_GATEWAY, "Expose": _EXPOSE,
    "AccessLogs": ACCESS_LOGS, "FailoverPolicy": Opaque(), "PrioritizeByLocality": Opaque(),
    "EnvoyExtensions": _EXTENSIONS,
})

_TARGET = {"Service": Str(), "ServiceSubset": Str(), "Namespace": Str(), "Partition": Str(), "Datacenter": Str(),
           "Peer": Str(), "SamenessGroup": Str()}
_HASH_POLICY = Obj({"Field": Str(choices=HASH_FIELDS), "FieldValue": Str(),
                    "CookieConfig": Obj({"Session": Bool(), "TTL": Duration(), "Path": Str()}),
                    "SourceIP": Bool(), "Terminal": Bool()})
LOAD_BALANCER = Obj({"Policy": Str(choices=LB_POLICIES, lower=True),
                     "LeastRequestConfig": Obj({"ChoiceCount": Int()}),
                     "RingHashConfig": Obj({"MinimumRingSize": Int(hi=2**63 - 1),
                                            "MaximumRingSize": Int(hi=2**63 - 1)}),
                     "HashPolicies": List(_HASH_POLICY)})
SERVICE_RESOLVER = Obj({
    **_COMMON,
    "ConnectTimeout": Duration(), "RequestTimeout": Duration(), "DefaultSubset": Str(),
    "Subsets": Map(Obj({"Filter": Str(), "OnlyPassing": Bool()})),
    "Redirect": Obj(_TARGET),
    "Failover": Map(Obj({**_TARGET, "Datacenters": List(Str()), "Targets": List(Obj(_TARGET)),
                         "Policy": Opaque(), "Regions": List(Str())})),
    "LoadBalancer": LOAD_BALANCER, "PrioritizeByLocality": Opaque(),
})

_SPLIT = Obj({"Weight": Float(), "Service": Str(), "ServiceSubset": Str(), "Namespace": Str(), "Partition": Str(),
              "RequestHeaders": _HEADERS, "ResponseHeaders": _HEADERS})
SERVICE_SPLITTER = Obj({**_COMMON, "Splits": List(_SPLIT)})

_HEADER_MATCH = Obj({"Name": Str(), "Present": Bool(), "Exact": Str(), "Prefix": Str(), "Suffix": Str(),
                     "Contains": Str(), "Regex": Str(), "IgnoreCase": Bool(), "Invert": Bool()})
_QUERY_MATCH = Obj({"Name": Str(), "Present": Bool(), "Exact": Str(), "Regex": Str()})
_ROUTE = Obj({
    "Match": Obj({"HTTP": Obj({"PathExact": Str(), "PathPrefix": Str(), "PathRegex": Str(),
                               "CaseInsensitive": Bool(), "Header": List(_HEADER_MATCH),
                               "QueryParam": List(_QUERY_MATCH), "Methods": List(Str())})}),
    "Destination": Obj({"Service": Str(), "ServiceSubset": Str(), "Namespace": Str(), "Partition": Str(),
                        "PrefixRewrite": Str(), "RequestTimeout": Duration(), "IdleTimeout": Duration(),
                        "NumRetries": Int(), "RetryOnConnectFailure": Bool(), "RetryOnStatusCodes": List(Int(
                            lo=100, hi=599)), "RetryOn": List(Str()), "RequestHeaders": _HEADERS,
                        "ResponseHeaders": _HEADERS}),
})
SERVICE_ROUTER = Obj({**_COMMON, "Routes": List(_ROUTE)})

_GW_TLS = Obj({"Enabled": Bool(), "TLSMinVersion": Str(), "TLSMaxVersion": Str(), "CipherSuites": List(Str()),
                "SDS": Opaque()})
_GW_LIMITS = {"MaxConnections": Int(), "MaxPendingRequests": Int(), "MaxConcurrentRequests": Int(),
              "PassiveHealthCheck": _PASSIVE}
INGRESS_GATEWAY = Obj({
    **_COMMON,
    "TLS": _GW_TLS, "Defaults": Obj(_GW_LIMITS),
    "Listeners": List(Obj({"Port": Int(lo=1, hi=65535), "Protocol": Str(choices=("", *PROTOCOLS), lower=True),
                           "TLS": _GW_TLS,
                           "Services": List(Obj({"Name": Str(), "Namespace": Str(), "Partition": Str(),
                                                 "Hosts": List(Str()), "RequestHeaders": _HEADERS,
                                                 "ResponseHeaders": _HEADERS, "TLS": _GW_TLS, **_GW_LIMITS}))})),
})

TERMINATING_GATEWAY = Obj({
    **_COMMON,
    "Services": List(Obj({"Name": Str(), "Namespace": Str(), "Partition": Str(), "CAFile": Str(), "CertFile": Str(),
                          "KeyFile": Str(), "SNI": Str(), "DisableAutoHostRewrite": Bool()})),
})

SCHEMAS: dict[str, Obj] = {
    "ingress-gateway": INGRESS_GATEWAY, "terminating-gateway": TERMINATING_GATEWAY,
    "service-defaults": SERVICE_DEFAULTS, "proxy-defaults": PROXY_DEFAULTS, "service-resolver": SERVICE_RESOLVER,
    "service-splitter": SERVICE_SPLITTER, "service-router": SERVICE_ROUTER,
}


class _Check:
    """Raises InvalidConfigEntry for one entry, with its kind and name in every message."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name

    def fail(self, field: str, message: str) -> InvalidConfigEntry:
        where = f"{self.kind} {self.name!r}" + (f": {field}" if field else "")
        return InvalidConfigEntry(f"Invalid {where}: {message}", kind=self.kind, name=self.name, field=field)


def validate(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` (Kind already lower-cased, Name present) checked and in Consul's canonical shape."""
    kind, name = entry["Kind"], entry["Name"]
    check = _Check(kind, name)
    try:
        out = SCHEMAS[kind].check(entry, "")
    except SchemaError as e:
        raise check.fail(e.path, e.message) from None
    for ns_field in ("Namespace", "Partition"):
        if out.get(ns_field, "default") not in ("", "default"):
            raise check.fail(ns_field, "only \"default\" exists here (namespaces and partitions are enterprise)")
    {"service-resolver": _resolver, "service-splitter": _splitter, "service-router": _router,
     "service-defaults": _service_defaults, "proxy-defaults": _proxy_defaults,
     "ingress-gateway": _ingress_gateway, "terminating-gateway": _terminating_gateway}[kind](out, check)
    return out


# ---------------------------------------------------------------------- per kind
def _resolver(e: dict[str, Any], check: _Check) -> None:
    subsets = e.get("Subsets") or {}
    for sub, spec in subsets.items():
        if not SUBSET_NAME.match(sub):
            raise check.fail(f"Subsets[{sub!r}]", "a subset name must be lower-case letters, digits and dashes, "
                                                  "starting and ending with a letter or digit")
        if spec.get("Filter"):
            try:
                compile_filter(spec["Filter"])
            except FilterError as err:
                raise check.fail(f"Subsets[{sub!r}].Filter", f"bad filter expression: {err}") from None
    default = e.get("DefaultSubset", "")
    if default and default not in subsets:
        raise check.fail("DefaultSubset", f"there is no subset named {default!r}")
    redirect = e.get("Redirect")
    if redirect:
        if subsets:
            raise check.fail("Redirect", "Redirect and Subsets cannot both be set")
        if e.get("Failover"):
            raise check.fail("Redirect", "Redirect and Failover cannot both be set")
        if not any(redirect.get(f) for f in ("Service", "ServiceSubset", "Datacenter", "Peer")):
            raise check.fail("Redirect", "a redirect must name at least one of Service, ServiceSubset, Datacenter")
        if redirect.get("ServiceSubset") and not redirect.get("Service") and redirect["ServiceSubset"] not in subsets:
            raise check.fail("Redirect.ServiceSubset", f"there is no subset named {redirect['ServiceSubset']!r}")
    for sub, fo in (e.get("Failover") or {}).items():
        field = f"Failover[{sub!r}]"
        if sub != "*" and sub not in subsets:
            raise check.fail(field, f"the key must be \"*\" or the name of a subset; there is no subset {sub!r}")
        if fo.get("Targets") and any(fo.get(f) for f in ("Service", "ServiceSubset", "Datacenters")):
            raise check.fail(f"{field}.Targets", "Targets cannot be combined with Service, ServiceSubset or "
                                                 "Datacenters")
        if not any(fo.get(f) for f in ("Service", "ServiceSubset", "Datacenters", "Targets", "SamenessGroup")):
            raise check.fail(field, "a failover must name Service, ServiceSubset, Datacenters or Targets")
        if fo.get("ServiceSubset") and not fo.get("Service") and fo["ServiceSubset"] not in subsets:
            raise check.fail(f"{field}.ServiceSubset", f"there is no subset named {fo['ServiceSubset']!r}")
    for field in ("ConnectTimeout", "RequestTimeout"):
        if e.get(field, "0s").startswith("-"):
            raise check.fail(field, "must not be negative")
    _load_balancer(e.get("LoadBalancer"), check)


def _load_balancer(lb: dict[str, Any] | None, check: _Check) -> None:
    if not lb:
        return
    policy = lb.get("Policy", "")
    if lb.get("LeastRequestConfig") and policy != "least_request":
        raise check.fail("LoadBalancer.LeastRequestConfig", f"is for Policy \"least_request\", not {policy!r}")
    if lb.get("RingHashConfig") and policy not in ("ring_hash", "maglev"):
        raise check.fail("LoadBalancer.RingHashConfig", f"is for Policy \"ring_hash\", not {policy!r}")
    ring = lb.get("RingHashConfig") or {}
    if ring.get("MinimumRingSize") and ring.get("MaximumRingSize") and ring["MinimumRingSize"] > \
            ring["MaximumRingSize"]:
        raise check.fail("LoadBalancer.RingHashConfig", "MinimumRingSize must not exceed MaximumRingSize")
    hashes = lb.get("HashPolicies") or []
    if hashes and policy not in ("ring_hash", "maglev"):
        raise check.fail("LoadBalancer.HashPolicies", f"hash policies need Policy \"ring_hash\" or \"maglev\", "
                                                      f"not {policy or 'the default'!r}")
    for i, hp in enumerate(hashes):
        where = f"LoadBalancer.HashPolicies[{i}]"
        if hp.get("SourceIP") and hp.get("Field"):
            raise check.fail(where, "SourceIP and Field cannot both be set")
        if not hp.get("SourceIP") and not hp.get("Field"):
            raise check.fail(f"{where}.Field", "one of Field or SourceIP is required")
        if hp.get("Field") and not hp.get("FieldValue"):
            raise check.fail(f"{where}.FieldValue", f"is required with Field {hp['Field']!r}")
        if hp.get("CookieConfig") and hp.get("Field") != "cookie":
            raise check.fail(f"{where}.CookieConfig", "is for Field \"cookie\"")


def _splitter(e: dict[str, Any], check: _Check) -> None:
    splits = e.get("Splits") or []
    if not splits:
        raise check.fail("Splits", "at least one split is required")
    seen: set[tuple[str, str]] = set()
    total = 0.0
    for i, s in enumerate(splits):
        w = s.get("Weight", 0.0)
        if w < 0 or w > 100:
            raise check.fail(f"Splits[{i}].Weight", f"must be within 0..100, got {w:g}")
        total += round(w, 2)
        dest = (s.get("Service") or e["Name"], s.get("ServiceSubset", ""))
        if dest in seen:
            raise check.fail(f"Splits[{i}]", f"split destination {_dest(*dest)} occurs more than once")
        seen.add(dest)
        _headers(s, f"Splits[{i}]", check)
    if abs(total - 100) > 1e-6:
        raise check.fail("Splits", f"the sum of all split weights must be 100, not {total:g}")


def _dest(service: str, subset: str) -> str:
    return f"{service!r}" + (f" subset {subset!r}" if subset else "")


def _headers(obj: dict[str, Any], where: str, check: _Check) -> None:
    for field in ("RequestHeaders", "ResponseHeaders"):
        for verb in ("Add", "Set"):
            for name in (obj.get(field) or {}).get(verb) or {}:
                if not name or any(c in name for c in " :\r\n"):
                    raise check.fail(f"{where}.{field}.{verb}", f"{name!r} is not a header name")


def _router(e: dict[str, Any], check: _Check) -> None:
    for i, route in enumerate(e.get("Routes") or []):
        where = f"Routes[{i}]"
        http = (route.get("Match") or {}).get("HTTP") or {}
        paths = [f for f in ("PathExact", "PathPrefix", "PathRegex") if http.get(f)]
        if len(paths) > 1:
            raise check.fail(f"{where}.Match.HTTP", f"{' and '.join(paths)} cannot both be set (pick one)")
        for f in ("PathExact", "PathPrefix"):
            if http.get(f) and not http[f].startswith("/"):
                raise check.fail(f"{where}.Match.HTTP.{f}", f"must begin with \"/\", got {http[f]!r}")
        if http.get("PathRegex"):
            _regex(http["PathRegex"], f"{where}.Match.HTTP.PathRegex", check)
        for j, h in enumerate(http.get("Header") or []):
            _match(h, f"{where}.Match.HTTP.Header[{j}]", ("Present", "Exact", "Prefix", "Suffix", "Contains",
                                                          "Regex"), check)
        for j, q in enumerate(http.get("QueryParam") or []):
            _match(q, f"{where}.Match.HTTP.QueryParam[{j}]", ("Present", "Exact", "Regex"), check)
        methods = http.get("Methods") or []
        for j, m in enumerate(methods):
            if m.upper() not in METHODS:
                raise check.fail(f"{where}.Match.HTTP.Methods[{j}]", f"{m!r} is not an HTTP method")
        if len({m.upper() for m in methods}) != len(methods):
            raise check.fail(f"{where}.Match.HTTP.Methods", "a method is listed more than once")
        if methods:
            http["Methods"] = [m.upper() for m in methods]
        dest = route.get("Destination") or {}
        if dest.get("PrefixRewrite") and not (http.get("PathPrefix") or http.get("PathExact")):
            raise check.fail(f"{where}.Destination.PrefixRewrite", "needs a PathPrefix or PathExact match")
        for j, r in enumerate(dest.get("RetryOn") or []):
            if r not in RETRY_ON:
                raise check.fail(f"{where}.Destination.RetryOn[{j}]", f"{r!r} is not one of {', '.join(RETRY_ON)}")
        for f in ("RequestTimeout", "IdleTimeout"):
            if dest.get(f, "0s").startswith("-"):
                raise check.fail(f"{where}.Destination.{f}", "must not be negative")
        _headers(dest, f"{where}.Destination", check)


def _match(m: dict[str, Any], where: str, kinds: tuple[str, ...], check: _Check) -> None:
    if not m.get("Name"):
        raise check.fail(f"{where}.Name", "is required")
    set_ = [k for k in kinds if m.get(k) not in (None, "", False)]
    if len(set_) > 1:
        raise check.fail(where, f"{' and '.join(set_)} cannot both be set (pick one)")
    if not set_ and not m.get("Invert"):
        raise check.fail(where, f"one of {', '.join(kinds)} is required")
    if m.get("Regex"):
        _regex(m["Regex"], f"{where}.Regex", check)


def _regex(pattern: str, where: str, check: _Check) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise check.fail(where, f"bad regular expression: {err}") from None


def _upstream_config(uc: dict[str, Any] | None, check: _Check) -> None:
    if not uc:
        return
    defaults = uc.get("Defaults") or {}
    for f in ("Name", "Namespace", "Partition", "Peer"):
        if defaults.get(f):
            raise check.fail(f"UpstreamConfig.Defaults.{f}", "the defaults apply to every upstream: no name here")
    for i, o in enumerate(uc.get("Overrides") or []):
        if not o.get("Name"):
            raise check.fail(f"UpstreamConfig.Overrides[{i}].Name", "is required")
    for where, u in [("UpstreamConfig.Defaults", defaults), *(
            (f"UpstreamConfig.Overrides[{i}]", o) for i, o in enumerate(uc.get("Overrides") or []))]:
        phc = u.get("PassiveHealthCheck") or {}
        if phc.get("EnforcingConsecutive5xx", 100) > 100:
            raise check.fail(f"{where}.PassiveHealthCheck.EnforcingConsecutive5xx", "must be within 0..100")


def _service_defaults(e: dict[str, Any], check: _Check) -> None:
    _upstream_config(e.get("UpstreamConfig"), check)
    rl = (e.get("RateLimits") or {}).get("InstanceLevel") or {}
    if rl.get("RequestsMaxBurst") and not rl.get("RequestsPerSecond"):
        raise check.fail("RateLimits.InstanceLevel.RequestsMaxBurst", "needs RequestsPerSecond")
    for i, r in enumerate(rl.get("Routes") or []):
        paths = [f for f in ("PathExact", "PathPrefix", "PathRegex") if r.get(f)]
        if len(paths) != 1:
            raise check.fail(f"RateLimits.InstanceLevel.Routes[{i}]", "exactly one of PathExact, PathPrefix, "
                                                                      "PathRegex is required")
        if not r.get("RequestsPerSecond"):
            raise check.fail(f"RateLimits.InstanceLevel.Routes[{i}].RequestsPerSecond", "is required")


def _proxy_defaults(e: dict[str, Any], check: _Check) -> None:
    cfg = e.get("Config") or {}
    proto = cfg.get("protocol", cfg.get("Protocol"))
    if proto is not None and str(proto).lower() not in PROTOCOLS:
        raise check.fail("Config.protocol", f"{proto!r} is not one of {', '.join(PROTOCOLS)}")
    tracing = cfg.get("tracing")
    if tracing is not None:
        if not isinstance(tracing, dict):
            raise check.fail("Config.tracing", "must be an object: { otlp_endpoint = \"http://…/v1/traces\", "
                                               "sampling_percent = 100 }")
        unknown = set(tracing) - {"otlp_endpoint", "sampling_percent"}
        if unknown:
            raise check.fail("Config.tracing", f"unknown field {sorted(unknown)[0]!r} (otlp_endpoint, "
                                               "sampling_percent)")
        url = tracing.get("otlp_endpoint")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise check.fail("Config.tracing.otlp_endpoint", f"must be an http(s) URL of an OTLP/HTTP traces "
                                                             f"endpoint, not {url!r}")
        pct = tracing.get("sampling_percent", 100)
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct <= 100:
            raise check.fail("Config.tracing.sampling_percent", f"must be a number within 0..100, not {pct!r}")
    logs = e.get("AccessLogs") or {}
    if logs:
        kind = logs.get("Type", "")
        if kind == "file" and not logs.get("Path"):
            raise check.fail("AccessLogs.Path", "is required when Type is \"file\"")
        if kind != "file" and logs.get("Path"):
            raise check.fail("AccessLogs.Path", f"is only for Type \"file\", not {kind or 'stdout'!r}")
        if logs.get("JSONFormat") and logs.get("TextFormat"):
            raise check.fail("AccessLogs", "JSONFormat and TextFormat cannot both be set")
        if logs.get("JSONFormat"):
            try:
                json.loads(logs["JSONFormat"])
            except ValueError as err:
                raise check.fail("AccessLogs.JSONFormat", f"is not a JSON object: {err}") from None


HOST = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)(:\d+)?$")


def _ingress_gateway(e: dict[str, Any], check: _Check) -> None:
    ports: set[int] = set()
    for i, lst in enumerate(e.get("Listeners") or []):
        where = f"Listeners[{i}]"
        port = lst.get("Port", 0)
        if not port:
            raise check.fail(f"{where}.Port", "is required")
        if port in ports:
            raise check.fail(f"{where}.Port", f"port {port} is declared by more than one listener")
        ports.add(port)
        proto = lst.setdefault("Protocol", "tcp") or "tcp"
        lst["Protocol"] = proto
        services = lst.get("Services") or []
        if not services:
            raise check.fail(f"{where}.Services", "a listener needs at least one service")
        if proto == "tcp" and len(services) > 1:
            raise check.fail(f"{where}.Services", "a tcp listener carries exactly one service")
        hosts_seen: set[str] = set()
        for j, svc in enumerate(services):
            sw = f"{where}.Services[{j}]"
            name = svc.get("Name", "")
            if not name:
                raise check.fail(f"{sw}.Name", "is required")
            if name == "*" and proto not in L7_PROTOCOLS:
                raise check.fail(f"{sw}.Name", "the wildcard \"*\" needs an http, http2 or grpc listener")
            hosts = svc.get("Hosts") or []
            if hosts and proto not in L7_PROTOCOLS:
                raise check.fail(f"{sw}.Hosts", "Hosts can only be set on an http, http2 or grpc listener")
            if hosts and name == "*":
                raise check.fail(f"{sw}.Hosts", "Hosts cannot be set on the wildcard service")
            for k, h in enumerate(hosts):
                if not HOST.match(h) or (h.startswith("*") and h not in ("*",) and not h.startswith("*.")):
                    raise check.fail(f"{sw}.Hosts[{k}]", f"{h!r} is not a host name (a leading \"*.\" is the only "
                                                         "wildcard)")
                if h in hosts_seen:
                    raise check.fail(f"{sw}.Hosts[{k}]", f"host {h!r} is used by more than one service of the "
                                                         "listener")
                hosts_seen.add(h)
        _gateway_tls(lst.get("TLS"), f"{where}.TLS", check)
        if gateway_tls.listener_tls(e, lst) is not None:
            for j, svc in enumerate(services):
                if "*" in (svc.get("Hosts") or []):
                    raise check.fail(f"{where}.Services[{j}].Hosts", "Host '*' is not allowed when TLS is enabled, "
                                                                     "all hosts must be valid DNS records to add as "
                                                                     "a DNSSAN")
        for j, svc in enumerate(services):
            if svc.get("TLS"):
                raise check.fail(f"{where}.Services[{j}].TLS", "per-service TLS takes SDS certificates, which this "
                                                               "gateway does not fetch; use the listener's TLS (the "
                                                               "Connect CA's certificate)")
    _gateway_tls(e.get("TLS"), "TLS", check)


def _gateway_tls(block: dict[str, Any] | None, where: str, check: _Check) -> None:
    """An ingress-gateway TLS block: known versions in order, cipher suites only up to TLS 1.2, no SDS."""
    if not block:
        return
    if block.get("SDS"):
        raise check.fail(f"{where}.SDS", "SDS is not supported: the gateway serves its certificate from the Connect "
                                         "CA (set Enabled = true without SDS)")
    for f in ("TLSMinVersion", "TLSMaxVersion"):
        if block.get(f) and block[f] not in gateway_tls.TLS_VERSIONS:
            raise check.fail(f"{where}.{f}", f"unsupported TLS version {block[f]!r}; one of "
                                             f"{', '.join(gateway_tls.TLS_VERSIONS)}")
    lo, hi = block.get("TLSMinVersion") or "TLS_AUTO", block.get("TLSMaxVersion") or "TLS_AUTO"
    if "TLS_AUTO" not in (lo, hi) and gateway_tls.version_rank(hi) < gateway_tls.version_rank(lo):
        raise check.fail(f"{where}.TLSMaxVersion", f"configuring max version {hi} less than the configured min "
                                                   f"version {lo} is invalid")
    for k, suite in enumerate(block.get("CipherSuites") or []):
        if suite not in gateway_tls.CIPHER_SUITES:
            raise check.fail(f"{where}.CipherSuites[{k}]", f"unsupported cipher suite {suite!r}")
    if block.get("CipherSuites") and lo == "TLSv1_3":
        raise check.fail(f"{where}.CipherSuites", "configuring CipherSuites is only applicable to connections "
                                                  "negotiated with TLS 1.2 or earlier, TLSMinVersion is set to "
                                                  "TLSv1_3")


def _terminating_gateway(e: dict[str, Any], check: _Check) -> None:
    seen: set[str] = set()
    for i, svc in enumerate(e.get("Services") or []):
        where = f"Services[{i}]"
        name = svc.get("Name", "")
        if not name:
            raise check.fail(f"{where}.Name", "Service name cannot be blank.")
        if name in seen:
            raise check.fail(f"{where}.Name", f"Service {name!r} was specified more than once within a namespace")
        seen.add(name)
        # Consul's rule: a client certificate needs its key and a CA (mutual TLS); a CAFile alone is one-way TLS.
        if (svc.get("CertFile") or svc.get("KeyFile")) and not (svc.get("CAFile") and svc.get("CertFile")
                                                              and svc.get("KeyFile")):
            raise check.fail(where, f"Service {name!r} must have a CertFile, CAFile, and KeyFile specified for TLS "
                                    "origination")
        if svc.get("SNI") and not svc.get("CAFile"):
            raise check.fail(f"{where}.SNI", f"Service {name!r}: SNI is only used with TLS origination; set CAFile")
