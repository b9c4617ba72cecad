"""Gateways as configurations of the one proxy core (pure: registration and config entry in, settings out).

A terminating gateway fronts the services its `terminating-gateway` entry links (`terminating_services`).

An ingress gateway is a proxy without a public listener whose "upstreams" are the services its
`ingress-gateway` config entry exposes: one per (listener port, service). HTTP listeners pick the service by
the request's Host (`Hosts`, default `<service>.ingress.*`) and then apply that service's discovery chain
like any HTTP upstream; a TCP listener carries its one service's bytes. The wildcard service `*` on an HTTP
listener stands for every service the catalog links through it whose protocol is the listener's.
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


def wildcard_ports(entry: dict[str, Any]) -> dict[int, str]:
    """The listeners (port → protocol) whose services include Consul's wildcard `*`."""
    return {int(lst["Port"]): (lst.get("Protocol") or "tcp").lower() for lst in entry.get("Listeners") or []
            if any(svc.get("Name") == "*" for svc in lst.get("Services") or [])}


def wildcard_services(entry: dict[str, Any], linked: list[str], protocols: dict[str, str],
                      default_protocol: str) -> dict[int, tuple[str, ...]]:
    """What each wildcard listener exposes (Consul: every service with the listener's protocol): `linked` are
    the services the catalog links through the wildcard (/v1/catalog/gateway-services, FromWildcard), their
    protocols from service-defaults, else proxy-defaults' `default_protocol`, else tcp."""
    def protocol(name: str) -> str:
        return (protocols.get(name) or default_protocol or "tcp").lower()

    return {port: tuple(sorted(n for n in set(linked) if protocol(n) == proto))
            for port, proto in wildcard_ports(entry).items()}


def _expand(services: list[dict[str, Any]], wildcard: tuple[str, ...]) -> list[dict[str, Any]]:
    """A listener's services with the wildcard replaced by the services it stands for (after the named ones,
    with the wildcard's limits, Consul's default hosts; a service the listener names is not repeated)."""
    named = [svc for svc in services if svc.get("Name") != "*"]
    star = next((svc for svc in services if svc.get("Name") == "*"), None)
    if star is None:
        return named
    names = {svc.get("Name") for svc in named}
    return named + [{**star, "Name": n} for n in wildcard if n not in names]


def ingress_config(registration: dict[str, Any], entry: dict[str, Any], bind_host: str,
                   wildcard: dict[int, tuple[str, ...]] | None = None) -> tuple[
        ProxyConfig, tuple[IngressListener, ...]]:
    """The proxy settings and listeners of an ingress gateway (ProxyConfigError names what is missing).
    `wildcard`: per listener port, the services its wildcard `*` exposes now (`wildcard_services`)."""
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
        for svc in _expand(list(lst.get("Services") or []), (wildcard or {}).get(port, ())):
            limits, outlier, raw = _limits(svc, defaults)
            raws.append(raw)
            up = Upstream(destination_name=svc["Name"], local_bind_port=port, local_bind_address=bind_host,
                          protocol=proto, limits=limits, outlier=outlier)
            upstreams.append(up)
            hosts = tuple(svc.get("Hosts") or ()) or (f"{svc['Name']}.ingress.*",)
            routes.append((hosts, up.key))
        if routes:  # a wildcard listener with no service of its protocol yet opens with the first one
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
    host_rewrite: bool = True  # an http request to a hostname address gets that Host (DisableAutoHostRewrite off)

    @property
    def tls(self) -> bool:
        return bool(self.ca_file)


def terminating_services(entry: dict[str, Any] | None, wildcard: list[str] | tuple[str, ...] = ()) -> dict[
        str, LinkedService]:
    """The services a `terminating-gateway` config entry links, by name (validated on write). Its wildcard `*`
    links `wildcard` (the catalog's services, /v1/catalog/gateway-services FromWildcard) with the wildcard's
    settings; a service the entry names keeps its own (Consul: the wildcard's options are defaults)."""
    def linked(name: str, svc: dict[str, Any]) -> LinkedService:
        return LinkedService(name, str(svc.get("CAFile") or ""), str(svc.get("CertFile") or ""),
                             str(svc.get("KeyFile") or ""), str(svc.get("SNI") or ""),
                             not svc.get("DisableAutoHostRewrite"))

    services = (entry or {}).get("Services") or []
    out = {str(svc["Name"]): linked(str(svc["Name"]), svc) for svc in services if svc.get("Name") not in (None, "", "*")}
    for star in (svc for svc in services if svc.get("Name") == "*"):
        out.update({name: linked(name, star) for name in wildcard if name not in out})
    return out
