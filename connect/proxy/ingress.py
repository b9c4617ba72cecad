"""The ingress gateway: the proxy core with the listeners an `ingress-gateway` config entry declares.

Outside clients connect in plain HTTP or TCP; each HTTP request is matched to a service by its Host and
then goes the way a sidecar's upstream request goes (discovery chain, pools, circuit breaking, retries,
access logs), over mTLS with the gateway's own identity — so the services' intentions name the gateway
as the source. The gateway waits for its registration and its config entry and says so; a changed entry
re-opens the listeners (connections already open finish on the old settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote

from proconsul.connect.proxy import listeners
from proconsul.connect.proxy.agent_api import AgentAPI, AgentAPIError, wait_registered
from proconsul.connect.proxy.config import ProxyConfig, ProxyConfigError, Upstream
from proconsul.connect.proxy.gateway import (
    IngressListener,
    host_matches,
    ingress_config,
    wildcard_ports,
    wildcard_services,
)
from proconsul.connect.proxy.h2relay import H2Stream, H2UpstreamFront
from proconsul.connect.proxy.http import Exchange, UpstreamFront, _Counts
from proconsul.connect.proxy.proxy import Proxy, credentials
from proconsul.connect.proxy.runtime import Runtime
from proconsul.connect.proxy.tls import MeshTLSError, gateway_server_context
from proconsul.connect.proxy.tlsproto import TLSProtocol

log = logging.getLogger("proconsul.proxy")


class IngressFront(UpstreamFront):
    """An outside client's connection on an HTTP listener: each request's Host picks the service."""

    __slots__ = ("listener",)

    def __init__(self, rt: Runtime, listener: IngressListener) -> None:
        super().__init__(rt, rt.upstreams[listener.routes[0][1]])
        self.listener = listener
        self.link = _Counts(rt.metrics.upstream_link(f"ingress:{listener.port}"), inbound=False)

    def describe(self) -> str:
        return f"ingress listener {self.listener.port}"

    def send(self, ex: Exchange) -> None:
        if ex.admitted is None:  # a new request (not a retry): which service?
            host = (ex.head.header(b"host") or b"").decode("latin-1").rsplit(":", 1)[0].lower()
            key = next((k for patterns, k in self.listener.routes if host_matches(host, patterns)), None)
            up = self.rt.upstreams.get(key) if key is not None else None
            if up is None:
                self.reply(ex, 404, f"no service for host {host!r} on listener {self.listener.port}", "NR")
                return
            self.up, self.host = up, up.destination_name.encode()
        super().send(ex)


ALPN = {"http": ("http/1.1",), "http2": ("h2",), "grpc": ("h2",)}  # what a TLS listener offers by protocol


class H2IngressFront(H2UpstreamFront):
    """An outside client's HTTP/2 connection on an http2/grpc listener (h2c with prior knowledge, or h2 by
    ALPN over TLS): each stream's authority picks the service, then it goes as a sidecar's stream goes."""

    def __init__(self, rt: Runtime, listener: IngressListener) -> None:
        super().__init__(rt, rt.upstreams[listener.routes[0][1]])
        self.listener = listener
        self.link = rt.metrics.upstream_link(f"ingress:{listener.port}")

    def describe(self) -> str:
        return f"ingress listener {self.listener.port}"

    def upstream_of(self, s: H2Stream) -> Upstream | None:
        host = s.authority.rsplit(":", 1)[0].lower()
        key = next((k for patterns, k in self.listener.routes if host_matches(host, patterns)), None)
        return self.rt.upstreams.get(key) if key is not None else None


class _Refuse(asyncio.Protocol):
    """A TLS listener's connection while it has no usable certificate: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _Ready(asyncio.Protocol):
    """The ready listener on the gateway's -address (Consul's Envoy binds one for an ingress gateway so its
    registration's TCP check passes): a TCP probe connects and leaves; an HTTP request gets `200 ready`."""

    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.ANSWER)
        self.transport.close()


class IngressGateway(Proxy):
    def __init__(self, api: AgentAPI, service_id: str, *, bind_host: str = "127.0.0.1", ready_port: int = 0,
                 **kw: Any) -> None:
        """`ready_port`: where the ready listener answers the registration's check (bind_host:ready_port, the
        gateway's -address); 0: none."""
        super().__init__(api, service_id, **kw)
        self.bind_host = bind_host
        self.ready_port = ready_port
        self.listeners: tuple[IngressListener, ...] = ()
        self._registration_body: dict[str, Any] | None = None
        self._entry: dict[str, Any] | None = None
        self._wildcard: dict[int, tuple[str, ...]] = {}  # wildcard listener port -> the services it exposes
        self._listener_ctx: dict[int, ssl.SSLContext] = {}  # TLS listeners' contexts (the leaf with its DNS SANs)

    # ------------------------------------------------------------------ configuration
    async def _registration(self, stop: asyncio.Event) -> ProxyConfig | None:
        """Wait for the gateway's registration and its config entry (either may come later)."""
        said_entry = False
        waiting = (f"ingress gateway {self.proxy_id!r} is not registered with the agent yet; waiting for it (start "
                   "with -register, or register a service with Kind \"ingress-gateway\")")
        while not stop.is_set():
            reg = await wait_registered(self.api, self.proxy_id, stop, waiting)
            if reg is not None:
                entry = await self._config_entry("ingress-gateway", str(reg.get("Service") or self.proxy_id))
                if entry is not None:
                    self._registration_body, self._entry = reg, entry
                    self._wildcard = await self._wildcard_services(entry)
                    cfg, self.listeners = ingress_config(reg, entry, self.bind_host, self._wildcard)
                    return cfg
                if not said_entry:
                    log.warning("no ingress-gateway config entry named %r yet; waiting for it (proconsul config "
                                "write …)", reg.get("Service"))
                    said_entry = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return None

    def _extra_watches(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [self.api.watch("/v1/config/ingress-gateway", {}, self._on_ingress_entries, stop),
                self.api.watch(f"/v1/catalog/gateway-services/{quote(self._service_name(), safe='')}", {},
                               self._on_gateway_services, stop)]

    async def _on_gateway_services(self, _: Any) -> None:
        """The catalog's services changed: a wildcard listener exposes the new set (nothing to do without one)."""
        if self._entry is not None and wildcard_ports(self._entry):
            await self._reconfigure(only_if_changed=True)

    async def _wildcard_services(self, entry: dict[str, Any]) -> dict[int, tuple[str, ...]]:
        """What the entry's wildcard listeners expose now: the services the catalog links through the wildcard
        whose protocol (service-defaults, else proxy-defaults) is the listener's."""
        if not wildcard_ports(entry):
            return {}
        rows, _ = await self.api.get(f"/v1/catalog/gateway-services/{quote(self._service_name(), safe='')}")
        linked = [r["Service"]["Name"] for r in rows or [] if r.get("FromWildcard")]
        defaults, _ = await self.api.get("/v1/config/service-defaults")
        protocols = {str(e.get("Name")): str(e.get("Protocol") or "") for e in defaults or []}
        proxy_defaults = await self._config_entry("proxy-defaults", "global") or {}
        return wildcard_services(entry, linked, protocols, str((proxy_defaults.get("Config") or {}).get("protocol")
                                                                or ""))

    async def _on_ingress_entries(self, rows: list[dict[str, Any]]) -> None:
        name = str((self._registration_body or {}).get("Service") or self.proxy_id)
        entry = next((r for r in rows or [] if r.get("Name") == name), None)
        if entry is None:
            log.error("the ingress-gateway config entry %r was deleted; keeping the last listeners", name)
            return
        if self._strip(entry) != self._strip(self._entry):
            self._entry = entry
            await self._reconfigure()
            await self._refresh_leaf()

    async def _refresh_leaf(self) -> None:
        """Ask the agent for the leaf once without blocking: with new TLS hosts in the entry it issues one
        with the new DNS SANs, which also wakes the blocking leaf watch."""
        try:
            await self.api.get(f"/v1/agent/connect/ca/leaf/{quote(self._service_name(), safe='')}")
        except AgentAPIError as e:
            log.warning("ingress gateway: cannot refresh the certificate after the entry changed: %s", e)

    def _service_name(self) -> str:
        return str((self._registration_body or {}).get("Service") or self.proxy_id)

    def _rebuild_tls(self) -> None:
        super()._rebuild_tls()
        self._build_listener_tls()

    def _build_listener_tls(self) -> None:
        """The TLS listeners' contexts from the current leaf; a listener whose settings cannot be applied
        keeps refusing connections (and says so) rather than serving plain text."""
        if self._leaf is None or self._roots is None:
            return
        creds = credentials(self._leaf, self._roots)
        built: dict[int, ssl.SSLContext] = {}
        for lst in self.listeners:
            if lst.tls is None:
                continue
            try:
                built[lst.port] = gateway_server_context(creds, lst.tls.min_version, lst.tls.max_version,
                                                         lst.tls.cipher_suites,
                                                         ALPN.get(lst.protocol, ()))
            except MeshTLSError as e:
                log.error("ingress listener %d: TLS cannot be served, refusing connections: %s", lst.port, e)
        self._listener_ctx = built

    async def _on_registration(self, body: dict[str, Any]) -> None:
        self._last_registration = body
        if self._strip(body) != self._strip(self._registration_body):
            self._registration_body = body
            await self._reconfigure()

    async def _on_entries(self, _: Any) -> None:
        await self._reconfigure(only_if_changed=True)

    @staticmethod
    def _strip(d: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (d or {}).items() if k not in ("CreateIndex", "ModifyIndex", "ContentHash")}

    async def _reconfigure(self, only_if_changed: bool = False) -> None:
        rt = self.rt
        if rt is None or self._registration_body is None or self._entry is None:
            return
        try:
            self._wildcard = await self._wildcard_services(self._entry)
            cfg, lsts = ingress_config(self._registration_body, self._entry, self.bind_host, self._wildcard)
            cfg = await self._resolve(cfg)
        except (ProxyConfigError, AgentAPIError) as e:
            log.error("the ingress gateway's configuration changed but cannot be used (keeping the previous "
                      "one): %s", e)
            return
        self._apply_defaults(rt)
        if only_if_changed and cfg == rt.config and lsts == self.listeners:
            return
        log.info("ingress gateway %s: %d listener(s) now; re-opening them", cfg.service, len(lsts))
        self.listeners = lsts
        self._build_listener_tls()
        self._restart_with = cfg
        self._reload.set()

    # ------------------------------------------------------------------ listeners
    async def _open_public(self, rt: Runtime, replace: bool = False) -> None:
        """A gateway has no public mTLS listener (callers come from outside the mesh); in its place the ready
        listener on -address, open while the gateway's listeners are (its registration's check follows it)."""
        if not self.ready_port or (not replace and "public" in self._servers):
            return
        old = self._servers.pop("public", None)
        if old is not None:
            old.close()
        self._servers["public"] = await asyncio.get_running_loop().create_server(
            _Ready, self.bind_host, self.ready_port, reuse_address=True)
        self.public_port = self.ready_port

    async def _open_upstream(self, rt: Runtime, up: Upstream, fatal: bool = True) -> None:
        lst = next((x for x in self.listeners if any(k == up.key for _, k in x.routes)), None)
        if lst is None or f"listener:{lst.port}" in self._servers:
            return

        def http_front(listener: IngressListener = lst) -> IngressFront:
            return IngressFront(rt, listener)

        def h2_front(listener: IngressListener = lst) -> H2IngressFront:
            return H2IngressFront(rt, listener)

        def tcp_side() -> asyncio.Protocol:
            return listeners.UpstreamSide(rt, rt.upstreams.get(up.key, up))

        plain = http_front if lst.protocol == "http" else h2_front if lst.protocol in ("http2", "grpc") else tcp_side

        def tls_front(port: int = lst.port) -> asyncio.BaseProtocol:
            ctx = self._listener_ctx.get(port)
            if ctx is None:  # no usable certificate (yet): refuse rather than answer in plain text
                return _Refuse()
            return TLSProtocol(ctx, plain(), server_side=True, handshake_timeout=rt.config.handshake_timeout,
                               on_failure=failed, scratch=rt.tls_scratch)

        def failed(tls: TLSProtocol, exc: Exception, port: int = lst.port) -> None:
            rt.handshake_failed(tls, exc, cluster=f"ingress:{port}")

        try:
            server = await asyncio.get_running_loop().create_server(
                plain if lst.tls is None else tls_front, self.bind_host, lst.port, reuse_address=True, backlog=1024)
        except OSError as e:
            if fatal:
                raise
            log.error("ingress listener %s:%d: %s", self.bind_host, lst.port, e.strerror or e)
            return
        self._servers[f"listener:{lst.port}"] = server
        self.upstream_ports[f"{lst.protocol}:{lst.port}"] = lst.port
        log.info("ingress listener %s:%d (%s%s): %s", self.bind_host, lst.port, lst.protocol,
                 f", TLS {lst.tls.min_version}+" if lst.tls is not None else "",
                 ", ".join(f"{rt.upstreams[k].destination_name} ← {' '.join(h)}" for h, k in lst.routes))
