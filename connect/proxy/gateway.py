"""Gateways as configurations of the one proxy core (pure: registration and config entry in, settings out).

A terminating gateway fronts the services its `terminating-gateway` entry links (`terminating_services`).

An ingress gateway is a proxy without a public listener whose "upstreams" are the services its
`ingress-gateway` config entry exposes: one per (listener port, service). HTTP listeners pick the service by
the request's Host (`Hosts`, default `<service>.ingress.*`) and then apply that service's discovery chain
like any HTTP upstream; a TCP listener carries its one service's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proconsul.connect.chain.gateway_tls import ListenerTLS, listener_tls
from proconsul.connect.proxy.config import (
    Limits,
    OutlierSettings,
    ProxyConfig,
    ProxyConfigError,
    Upstream,
    parse_outlier,
)


@dataclass(frozen=True, slots=True)
class IngressListener:
    port: int
    protocol: str  # "http", "http2", "grpc" or "tcp"
    routes: tuple[tuple[tuple[str, ...], str], ...]  # ((host patterns…), upstream key) in the entry's order
    tls: ListenerTLS | None = None  # served with the gateway's leaf (its DNS SANs) when set


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether a request's Host (port dropped, lower case) is one of the patterns: exact names, `*.suffix`
    wildcards, `*`, or Consul's default `<service>.ingress.*` (any domain)."""
    for p in patterns:
        p = p.lower().split(":", 1)[0]
        if p == "*" or p == host:
            return True
        if p.startswith("*.") and host.endswith(p[1:]) and len(host) > len(p) - 1:
            return True
        if p.endswith(".*") and host.startswith(p[:-1]):
            return True
    return False


def _limits(svc: dict[str, Any], defaults: dict[str, Any]) -> tuple[Limits, OutlierSettings | None, dict[str, Any]]:
    """The service's limits (its own, else the entry's Defaults), and the same as an upstream `Config` (so
    the gateway's service-defaults UpstreamConfig layers under them, as it does under a sidecar's)."""
    def pick(name: str) -> int:
        return int(svc.get(name) or defaults.get(name) or 0)

    phc = svc.get("PassiveHealthCheck") or defaults.get("PassiveHealthCheck")
    outlier = parse_outlier({"PassiveHealthCheck": phc}, "ingress-gateway") if phc else None
    limits = Limits(pick("MaxConnections"), pick("MaxPendingRequests"), pick("MaxConcurrentRequests"))
    raw: dict[str, Any] = {"limits": {k: v for k, v in (("max_connections", limits.max_connections),
                                                        ("max_pending_requests", limits.max_pending_requests),
                                                        ("max_concurrent_requests", limits.max_concurrent_requests))
                                      if v}}
    if phc:
        raw["passive_health_check"] = phc
    return limits, outlier, {"Config": raw}


def ingress_config(registration: dict[str, Any], entry: dict[str, Any], bind_host: str) -> tuple[
        ProxyConfig, tuple[IngressListener, ...]]:
    """The proxy settings and listeners of an ingress gateway (ProxyConfigError names what is missing)."""
    if registration.get("Kind") != "ingress-gateway":
        raise ProxyConfigError(f"service {registration.get('ID')!r} is not an ingress gateway (Kind "
                               f"{registration.get('Kind')!r})")
    name = str(registration.get("Service") or "")
    upstreams: list[Upstream] = []
    upstream_raw: list[dict[str, Any]] = []
    listeners = []
    defaults = entry.get("Defaults") or {}
    for lst in entry.get("Listeners") or []:
        port, proto = int(lst["Port"]), (lst.get("Protocol") or "tcp").lower()
        if proto not in ("http", "http2", "grpc", "tcp"):
            raise ProxyConfigError(f"ingress-gateway {name!r}: listener {port} has protocol {proto!r}; this gateway "
                                   "serves http, http2, grpc and tcp listeners")
        routes = []
        raws = []
        for svc in lst.get("Services") or []:
            if svc.get("Name") == "*":
                raise ProxyConfigError(f"ingress-gateway {name!r}: listener {port}: the wildcard service \"*\" is "
                                       "not supported by this gateway yet; name the services")
            limits, outlier, raw = _limits(svc, defaults)
            raws.append(raw)
            up = Upstream(destination_name=svc["Name"], local_bind_port=port, local_bind_address=bind_host,
                          protocol=proto, limits=limits, outlier=outlier)
            upstreams.append(up)
            hosts = tuple(svc.get("Hosts") or ()) or (f"{svc['Name']}.ingress.*",)
            routes.append((hosts, up.key))
        listeners.append(IngressListener(port, proto, tuple(routes), listener_tls(entry, lst)))
        upstream_raw.extend(raws)
    cfg = ProxyConfig(proxy_id=str(registration.get("ID") or name), proxy_name=name, service=name,
                      service_id=str(registration.get("ID") or name), bind_address=bind_host, bind_port=0,
                      local_address="", local_port=0, upstreams=tuple(upstreams), protocol="tcp",
                      upstream_raw=tuple(upstream_raw))
    return cfg, tuple(listeners)


@dataclass(frozen=True, slots=True)
class LinkedService:
    """A service outside the mesh that a terminating gateway fronts, and how to reach it (TLS when CAFile)."""

    name: str
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    sni: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca_file)


def terminating_services(entry: dict[str, Any] | None) -> dict[str, LinkedService]:
    """The services a `terminating-gateway` config entry links, by name (validated on write)."""
    out = {}
    for svc in (entry or {}).get("Services") or []:
        name = str(svc.get("Name") or "")
        if name and name != "*":
            out[name] = LinkedService(name, str(svc.get("CAFile") or ""), str(svc.get("CertFile") or ""),
                                      str(svc.get("KeyFile") or ""), str(svc.get("SNI") or ""))
    return out
