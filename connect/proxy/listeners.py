"""The proxy's two kinds of listener (L4: any TCP protocol passes through).

- **Public listener** (`InboundSide`): mTLS with the service's leaf; a client must present a leaf
  chaining to the current roots, and its SPIFFE ID is decided by the local intentions before a
  single byte reaches the application. A refused connection is closed right after the handshake and
  logged with source, destination and the deciding intention.
- **Upstream listener** (`UpstreamSide`): plain TCP on a local port for the application; each new
  connection picks a healthy instance of the destination, dials its sidecar with mTLS, checks that
  the server presented *that* service's SPIFFE ID (not just any mesh member), and on a connect
  failure tries the next instance (bounded attempts, within the retry budget).

Both record golden metrics (and, with access logs on, one line per connection), and inbound connections
are registered by source so that an intention that turns to deny can close the connections it no longer
allows. An upstream connection follows the resolver of the destination's discovery chain (Redirect,
DefaultSubset, Failover) when the agent has sent one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance, UpstreamPool
from proconsul.connect.proxy.config import Upstream
from proconsul.connect.proxy.dial import DialRefused, dial
from proconsul.connect.proxy.forward import Side
from proconsul.connect.proxy.metrics import Link
from proconsul.connect.proxy.tls import MeshClientContext

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

log = logging.getLogger("proconsul.proxy")


class InboundSide(Side):
    """The mTLS side of an inbound connection (from another service's sidecar)."""

    __slots__ = ("rt", "uri", "source", "link", "app", "started", "received", "sent")

    def __init__(self, rt: Runtime) -> None:
        super().__init__()
        self.rt = rt
        self.uri = ""
        self.source = ""
        self.link: Link | None = None
        self.app: Side | None = None
        self.started = 0.0
        self.received = self.sent = 0  # bytes from the peer / to the peer, for the access log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        rt = self.rt
        self.started = time.monotonic()
        self.uri, decision = rt.admit(transport.get_extra_info("ssl_object"))
        self.source = decision.source
        if not decision.allowed:
            self._refuse(decision.source, decision.reason)
            return
        self.link = rt.inbound_accepted(decision, transport.get_extra_info("ssl_object"))
        self.on_bytes = self._count_in
        rt.inbound_opened(self)
        transport.pause_reading()
        rt.spawn(self._connect_app())

    def _count_in(self, n: int) -> None:
        assert self.link is not None
        self.link.bytes_in += n
        self.received += n

    def _refuse(self, source: str, reason: str) -> None:
        self.rt.refused(source or self.uri or "unknown", reason)
        self.abort()

    async def _connect_app(self) -> None:
        rt = self.rt
        cfg = rt.config
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(cfg.local_connect_timeout):
                _, app = await loop.create_connection(Side, cfg.local_address, cfg.local_port)
        except (OSError, TimeoutError) as e:
            if self.link is not None:
                self.link.failed += 1
            log.warning("inbound from %s: cannot reach the local application at %s:%d: %s", self.source,
                        cfg.local_address, cfg.local_port, e or "timed out")
            self.abort()
            return
        if self.closed:
            app.close()
            return
        self.app = app
        link = self.link
        if link is not None:
            link.latency.observe(time.monotonic() - self.started)

            def out(n: int) -> None:
                link.bytes_out += n
                self.sent += n
            app.on_bytes = out
        app.join(self)

    def abort(self) -> None:
        super().abort()
        if self.app is not None:
            self.app.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.link is not None:
            self.link.active -= 1
            rt = self.rt
            if rt.access_log is not None:
                cfg = rt.config
                rt.access_log.connection(connection_record(
                    self.started, self.received, self.sent, self.transport, "local_app", cfg.service,
                    f"{cfg.local_address}:{cfg.local_port}", peer_uri=self.uri,
                    flag="-" if self.app is not None else "UF"))
        self.rt.inbound_closed(self)


class _UpstreamTLS(Side):
    """The mTLS side of an outbound connection (to the destination's sidecar). When the context wants
    this connection's TLS session, it is handed back once the server's first bytes arrive (its session
    ticket precedes them) or at the close."""

    __slots__ = ("_ctx", "_key", "_ssl_object")

    def __init__(self, ctx: MeshClientContext, key: str) -> None:
        super().__init__()
        self._ctx: MeshClientContext | None = ctx
        self._key = key
        self._ssl_object: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ssl_object = ssl_object = transport.get_extra_info("ssl_object")
        if self._ctx is not None and not self._ctx.wants_session(self._key, ssl_object, time.monotonic()):
            self._ctx = None

    def data_received(self, data: bytes) -> None:
        if self._ctx is not None:
            self._keep_session()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ctx is not None and exc is None:
            self._keep_session()
        super().connection_lost(exc)

    def _keep_session(self) -> None:
        assert self._ctx is not None
        self._ctx.keep_session(self._key, self._ssl_object, time.monotonic())
        self._ctx = None


class UpstreamSide(Side):
    """The application's side of an outbound connection, accepted on an upstream's local port."""

    __slots__ = ("rt", "upstream", "link", "instance", "started", "received", "sent", "flag", "target", "admitted")

    def __init__(self, rt: Runtime, upstream: Upstream) -> None:
        super().__init__()
        self.rt = rt
        self.upstream = upstream
        self.link: Link = rt.metrics.upstream_link(upstream.destination_name)
        self.instance: Instance | None = None
        self.started = 0.0
        self.received = self.sent = 0  # bytes from the application / to it, for the access log
        self.flag = "-"
        self.target = ""
        self.admitted = False  # counted by the upstream's circuit breaker (Limits.MaxConnections)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.started = time.monotonic()
        self.rt.budget.request(self.started)
        self.link.active += 1
        transport.pause_reading()
        link = self.link

        def out(n: int) -> None:
            link.bytes_out += n
            self.received += n
        self.on_bytes = out
        breaker = self.rt.breakers.get(self.upstream.key)
        if breaker is not None and breaker.limits:
            if breaker.admit(self, can_wait=False) != "send":
                self.flag = "UO"
                link.failed += 1
                log.warning("upstream %s: connection refused by the circuit breaker (%d open, MaxConnections %d)",
                            self.upstream.destination_name, breaker.active, breaker.limits.max_connections)
                self.abort()
                return
            self.admitted = True
        self.rt.spawn(self._dial())

    def _pools(self) -> list[tuple[str, UpstreamPool | None]]:
        """Where this connection may go, in order: the chain's resolver target, then its failover targets
        (without a chain yet: the upstream's own instances)."""
        rt, up = self.rt, self.upstream
        table = rt.chains.get(up.key)
        if table is None or not table.routes or not table.routes[-1].legs:
            return [(up.destination_name, rt.pools.get(up.key))]
        leg = table.routes[-1].legs[0]
        return [(t.id, rt.pool_for(up, t)) for t in (leg.target, *leg.failover)]

    async def _dial(self) -> None:
        rt, up = self.rt, self.upstream
        pools = self._pools()
        tried: set[str] = set()
        attempts = 1 + rt.config.retry.num_retries
        last_error = "no attempt made"
        for attempt in range(attempts):
            if self.closed:
                return
            if attempt and not rt.budget.try_retry(time.monotonic()):
                last_error += "; retry budget exhausted"
                break
            pool = inst = None
            for target, candidate in pools:
                if candidate is None:
                    continue
                try:
                    pool, inst = candidate, candidate.pick(time.monotonic(), rt.rng, tried)
                    self.target = target
                    break
                except NoHealthyInstance as e:
                    last_error = str(e)
            if pool is None or inst is None:
                if last_error == "no attempt made":
                    last_error = f"upstream {up.destination_name!r} is not known yet"
                self.flag = "UH"
                break
            tried.add(inst.id)
            if attempt:
                self.link.retries += 1
            pool.started(inst)
            try:
                remote = await self._connect(inst)
            except (OSError, TimeoutError, ssl.SSLError, DialRefused) as e:
                pool.finished(inst)
                last_error = f"{inst.address}:{inst.port}: {e or 'timed out'}"
                if pool.failed(inst, time.monotonic()):
                    log.warning("upstream %s: ejected instance %s after %d failures in a row", up.destination_name,
                                inst.id, rt.config.outlier.max_failures)
                continue
            pool.succeeded(inst)
            if self.closed:
                pool.finished(inst)
                remote.close()
                return
            self._joined(remote, inst, pool)
            return
        self.link.failed += 1
        if self.flag == "-":
            self.flag = "UF"
        log.warning("upstream %s: connection from the application failed: %s", up.destination_name, last_error)
        self.abort()

    def _joined(self, remote: Side, inst: Instance, pool: UpstreamPool) -> None:
        self.instance = inst
        link = self.link
        link.connections += 1
        link.latency.observe(time.monotonic() - self.started)

        def inbound(n: int) -> None:
            link.bytes_in += n
            self.sent += n
        remote.on_bytes = inbound
        remote.on_close = lambda _side: pool.finished(inst)
        self.join(remote)

    async def _connect(self, inst: Instance) -> Side:
        return await dial(self.rt, self.upstream, inst, self.link, _UpstreamTLS)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.link.active -= 1
        rt = self.rt
        if self.admitted:
            self.admitted = False
            breaker = rt.breakers.get(self.upstream.key)
            if breaker is not None:
                breaker.release()
        if rt.access_log is not None:
            inst = self.instance
            rt.access_log.connection(connection_record(
                self.started, self.received, self.sent, self.transport, self.target or self.upstream.destination_name,
                inst.service if inst is not None else self.upstream.destination_name,
                f"{inst.address}:{inst.port}" if inst is not None else "", instance=inst.id if inst else "",
                flag=self.flag))


def connection_record(started: float, received: int, sent: int, transport: object, cluster: str, service: str,
                       host: str, *, peer_uri: str = "", instance: str = "", flag: str = "-") -> dict[str, object]:
    """An L4 access-log record (Envoy's TCP fields): one per connection, written when it closes."""
    now = time.monotonic()
    peer = transport.get_extra_info("peername") if transport is not None else None  # type: ignore[attr-defined]
    return {"start_time": time.time() - (now - started), "protocol": "TCP", "response_flags": flag,
            "bytes_received": received, "bytes_sent": sent, "duration": int((now - started) * 1000),
            "upstream_cluster": cluster, "upstream_service": service, "upstream_host": host,
            "upstream_instance": instance, "downstream_peer_uri_san": peer_uri,
            "downstream_remote_address": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""}


def inbound_factory(rt: Runtime) -> Callable[[], InboundSide]:
    return lambda: InboundSide(rt)


def upstream_factory(rt: Runtime, upstream: Upstream) -> Callable[[], UpstreamSide]:
    return lambda: UpstreamSide(rt, upstream)
