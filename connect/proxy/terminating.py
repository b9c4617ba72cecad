"""The terminating gateway: mesh services reach services outside the mesh through it.

`proconsul connect proxy -gateway terminating -service NAME -register -address HOST:PORT` runs one mTLS
listener. The services its `terminating-gateway` config entry links are answered by the agent's
`/v1/health/connect/<service>` as this gateway's address, so a sidecar dials the gateway exactly as it
dials another sidecar, with Consul's SNI `<service>.default.<dc>.internal.<trust-domain>`. For each
connection the gateway:

1. picks the linked service from the SNI and presents **that service's** leaf certificate (the sidecar
   checks it is talking to the service it asked for), asking for the caller's;
2. decides the caller's SPIFFE ID against the intentions whose destination is that service — a denied
   caller is closed before a byte reaches the outside service. When the service's protocol
   (service-defaults, else proxy-defaults) is `http`, the connection is handed to the sidecar's inbound
   HTTP front (`TerminatingFront`): each request is decided by the L7 intentions (403 when denied), gets
   its access-log line, and goes to the outside service on a kept-alive connection;
3. connects to a healthy instance of the service from the catalog (registered on a node without an
   agent) — of the subset of its service-resolver the SNI names (else its DefaultSubset), chosen by the
   resolver's LoadBalancer (`gateway_resolver.py`; per request for http) — in plain TCP, or with TLS when
   the entry gives a `CAFile` (one-way TLS; with `CertFile` and `KeyFile` mutual TLS; `SNI` is sent and
   the server certificate's name checked against it), and splices the bytes.

Leaves, roots, intentions, instances and the entry are followed with blocking queries; an intention that
turns to deny closes the connections it no longer allows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from aiohttp import web

from proconsul.connect.proxy import l7
from proconsul.connect.proxy.accesslog import handshake_failure_reason
from proconsul.connect.proxy.admin_http import json_route, ready_route, start_admin
from proconsul.connect.proxy.agent_api import AgentAPI, wait_registered
from proconsul.connect.proxy.authz import Decision, IntentionPolicy
from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance, UpstreamPool
from proconsul.connect.proxy.config import ProxyConfig
from proconsul.connect.proxy.forward import Side
from proconsul.connect.proxy.gateway import LinkedService, terminating_services
from proconsul.connect.proxy.gateway_log import DENIED, GatewayAccessLog, peer_address
from proconsul.connect.proxy.gateway_resolver import (
    GatewayResolver,
    UnknownSubset,
    host_rewrite,
    parse_resolver,
)
from proconsul.connect.proxy.h2relay import LOCAL_APP, H2Back, H2InboundFront, H2Stream, connection
from proconsul.connect.proxy.http import Back, Exchange, Front, InboundFront
from proconsul.connect.proxy.proxy import ProxyError, credentials
from proconsul.connect.proxy.runtime import Runtime
from proconsul.connect.proxy.sni import parse_sni_name
from proconsul.connect.proxy.tls import MeshTLSError, peer_cert, server_context
from proconsul.connect.proxy.tlsproto import TLSProtocol

log = logging.getLogger("proconsul.gateway")
HANDSHAKE_TIMEOUT = 10.0


class GatewayDialError(Exception):
    """No instance of the outside service could be reached (or its TLS settings cannot be used); `flag` is
    Envoy's response flag for the access log (UH: no passing instance, UF: none could be connected to)."""

    def __init__(self, message: str, flag: str = "UF") -> None:
        super().__init__(message)
        self.flag = flag


class _Linked:
    """What the gateway knows of one linked service: its leaf, its intentions, its instances (balanced per
    subset of its service-resolver: `pools[""]` is the whole service)."""

    def __init__(self, spec: LinkedService) -> None:
        self.spec = spec
        self.leaf: dict[str, Any] | None = None
        self.ctx: ssl.SSLContext | None = None  # the server context presenting this service's leaf
        self.policy: IntentionPolicy | None = None
        self.intentions: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []  # its catalog rows (/v1/health/service/<name>, every health state)
        self.pools: dict[str, UpstreamPool] = {}  # by subset ("": the whole service)
        self.origination: ssl.SSLContext | None = None
        self.origination_h2: ssl.SSLContext | None = None  # the same, offering ALPN h2 (http2/grpc services)
        self.origination_error = ""
        self.watches: list[asyncio.Task[None]] = []
        self.open: set[Any] = set()  # TerminatingInbound (L4) and TerminatingFront (http) connections
        self.stats = {"Connections": 0, "Refused": 0, "DialFailures": 0, "UnknownSubset": 0}
        self.protocol = "tcp"  # service-defaults' Protocol, else proxy-defaults' Config.protocol
        self.resolver = GatewayResolver()  # its service-resolver: subsets, LoadBalancer, timeouts
        self.rt: Runtime | None = None  # http: the sidecar runtime its TerminatingFronts share

    @property
    def connect_timeout(self) -> float:
        return self.resolver.connect_timeout

    @property
    def cluster(self) -> str:
        return f"{self.spec.name}.default.default.{self.rt.datacenter if self.rt is not None else ''}"

    def refresh_pools(self) -> None:
        """Each subset's instances (and the whole service's) from the catalog rows and the resolver."""
        r, name = self.resolver, self.spec.name
        wanted = ("", *(s.name for s in r.subsets))
        for subset in [k for k in self.pools if k not in wanted]:
            del self.pools[subset]
        for subset in wanted:
            pool = self.pools.get(subset)
            if pool is None:
                pool = self.pools[subset] = UpstreamPool(name + (f"[{subset}]" if subset else ""), r.policy)
            pool.tune(r.policy, r.lb.sizing)
            pool.set_instances(r.instances(self.rows, name, subset))

    def pick(self, subset: str, rng: random.Random, tried: set[str] | None, key: bytes | None
             ) -> tuple[UpstreamPool, Instance]:
        """An instance of `subset` for the next request or stream, by the resolver's LoadBalancer (not one in
        `tried`), and its pool; NoHealthyInstance when there is none (or the subset is gone)."""
        pool = self.pools.get(subset)
        if pool is None:
            raise NoHealthyInstance(f"subset {subset!r} is no longer defined")
        return pool, pool.pick(time.monotonic(), rng, tried, key)

    def host_for(self, inst: Instance) -> bytes:
        """The Host (`:authority`) a request to `inst` gets: its address when that is a hostname (Envoy's
        auto_host_rewrite on Consul's LOGICAL_DNS cluster) unless DisableAutoHostRewrite; b"" keeps the caller's."""
        return host_rewrite(inst.address).encode() if self.spec.host_rewrite else b""

    def hash_key(self, headers: list[tuple[bytes, bytes]], target: bytes, transport: Any) -> bytes | None:
        """The key ring_hash/maglev place a connection (no headers) or request by: the resolver's HashPolicies
        (a source-IP policy reads the caller's address from `transport`)."""
        lb = self.resolver.lb
        if not lb.hash_policies or self.resolver.policy not in ("ring_hash", "maglev"):
            return None
        return lb.hash_key(headers, target, peer_address(transport).rsplit(":", 1)[0])


class TerminatingInbound(Side):
    """A sidecar's mTLS connection to the gateway: decided, then spliced to the outside service."""

    __slots__ = ("gw", "linked", "uri", "started", "peer_address", "service", "host", "flag", "details", "received",
                 "sent", "inst", "pool")

    def __init__(self, gw: TerminatingGateway) -> None:
        super().__init__()
        self.gw = gw
        self.linked: _Linked | None = None
        self.uri = ""
        self.started = 0.0
        self.peer_address = self.service = self.host = self.details = ""  # for the access-log line
        self.flag = "-"
        self.received = self.sent = 0
        self.inst: Instance | None = None  # the outside instance it reached, and the pool that chose it
        self.pool: UpstreamPool | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.started = time.monotonic()
        if self.gw.access.log is not None:  # nothing looked up for the log while it is off
            self.peer_address = peer_address(transport)
        gw = self.gw
        sslobj = transport.get_extra_info("ssl_object")
        linked = gw.linked.get(getattr(sslobj.context, "proconsul_service", ""))
        cert = peer_cert(sslobj)
        self.uri = cert.uri if cert is not None else ""
        if linked is None:  # cannot happen after the SNI callback chose a service; kept as a guard
            gw.refused(None, self.uri or "unknown", "no linked service for this connection")
            self.abort()
            return
        decision = self._decide(linked, cert)
        self.service = linked.spec.name
        if not decision.allowed:
            gw.refused(linked, decision.source, decision.reason)
            self.details = DENIED
            self.abort()
            return
        subset = str(getattr(sslobj, "proconsul_subset", ""))  # what the SNI callback chose
        if linked.rt is not None:  # http-like: the sidecar's L7 front decides, forwards and logs each request
            self.service = ""  # no connection line: the requests get theirs
            front = TerminatingFront(gw, linked, subset) if linked.protocol == "http" else \
                TerminatingH2Front(gw, linked, subset)
            transport.hand_over(front)  # type: ignore[attr-defined]
            return
        self.linked = linked
        self.on_bytes = self._count_in
        linked.open.add(self)
        linked.stats["Connections"] += 1
        transport.pause_reading()
        gw.spawn(self._connect(linked, subset, transport))

    def _decide(self, linked: _Linked, cert: Any) -> Decision:
        if cert is not None and cert.not_after <= time.time():
            return Decision(False, self.uri or "unknown", "resumed TLS session whose client certificate has expired")
        if linked.policy is None:
            return Decision(False, self.uri or "unknown", "intentions are not loaded yet")
        return linked.policy.connection(self.uri)

    async def _connect(self, linked: _Linked, subset: str, transport: asyncio.BaseTransport) -> None:
        try:
            out, inst = await self.gw.dial(linked, subset, hash_key=linked.hash_key([], b"", transport))
        except GatewayDialError as e:
            log.warning("terminating gateway: %s%s: %s", linked.spec.name, f" (subset {subset})" if subset else "", e)
            self.flag = e.flag
            self.abort()
            return
        if self.closed:
            out.close()
            return
        self.host = f"{inst.address}:{inst.port}"
        self.inst, self.pool = inst, linked.pools.get(subset)
        if self.pool is not None:
            self.pool.started(inst)  # least_request counts the connections open to each instance
        out.on_bytes = self._count_out
        out.join(self)

    def _count_in(self, n: int) -> None:
        self.received += n

    def _count_out(self, n: int) -> None:
        self.sent += n

    def connection_lost(self, exc: Exception | None) -> None:
        if self.linked is not None:
            self.linked.open.discard(self)
        if self.pool is not None and self.inst is not None:
            self.pool.finished(self.inst)
            self.pool = None
        super().connection_lost(exc)
        if self.service:
            self.gw.access.connection(self.started, received=self.received, sent=self.sent, peer=self.peer_address,
                                      cluster=f"{self.service}.default.default.{self.gw.datacenter}",
                                      service=self.service, host=self.host, peer_uri=self.uri, flag=self.flag,
                                      details=self.details)


def _unreachable(flag: str) -> tuple[int, str, str]:
    """The answer to a request the outside service could not take (Envoy's local replies): status, text, flag."""
    if flag == "UH":
        return 503, "no healthy upstream", "UH"
    return 502, "upstream connect error or disconnect/reset before headers", "UF"


class _Tracked:
    """What both L7 fronts of the gateway keep: an admitted connection is counted and held in its linked
    service's open set (closed when the service is unlinked or an intention no longer allows it)."""

    __slots__ = ()
    linked: _Linked
    link: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.link is not None:
            self.linked.open.add(self)
            self.linked.stats["Connections"] += 1

    def lost(self) -> None:
        super().lost()  # type: ignore[misc]
        self.linked.open.discard(self)


class TerminatingFront(_Tracked, InboundFront):
    """A caller's connection to a linked `http` service: the sidecar's inbound HTTP front (L7 intentions per
    request, 403 when denied, access-log lines, tap, x-forwarded-client-cert), whose "application" is an
    instance of the outside service (of the subset the SNI chose), picked per request by the resolver's
    LoadBalancer (its hash policies read the request), on a kept-alive connection per instance, dialed as the
    L4 path dials it (TLS origination); `Host` becomes the instance's address when that is a hostname."""

    __slots__ = ("gw", "linked", "subset", "upstream_host", "dial_flag", "apps")

    def __init__(self, gw: TerminatingGateway, linked: _Linked, subset: str = "") -> None:
        assert linked.rt is not None
        super().__init__(linked.rt)
        self.gw, self.linked, self.subset = gw, linked, subset
        self.upstream_host = ""
        self.dial_flag = ""
        self.apps: dict[str, Back] = {}  # kept-alive connections to the outside instances, by instance id

    def describe(self) -> str:
        return f"terminating gateway: {self.linked.spec.name} from {self.source or self.uri or 'unknown'}"

    def to_app(self, ex: Exchange) -> None:
        linked = self.linked
        key = linked.hash_key(ex.head.headers, ex.head.target, self.transport)
        try:
            pool, inst = linked.pick(self.subset, self.gw.rng, None, key)
        except NoHealthyInstance:
            self.dial_flag = "UH"
            ex.back_failed(no_instance(self.subset))
            return
        back = self.apps.get(inst.id)
        if back is not None and back.reusable():
            self._send(ex, back, inst, pool)
        else:
            self.rt.spawn(self._dial_app(ex, inst, key))

    async def _dial_app(self, ex: Exchange, first: Instance, key: bytes | None) -> None:  # type: ignore[override]
        try:
            app, inst = await self.gw.dial(self.linked, self.subset, lambda: Back(None), first=first, hash_key=key)
        except GatewayDialError as e:
            if not self.closed:
                self.dial_flag = e.flag
                ex.back_failed(str(e))
            return
        if self.closed:
            app.close()
            return
        old = self.apps.get(inst.id)
        if old is not None and old is not app:
            old.close()
        self.apps[inst.id] = app
        self._send(ex, app, inst, self.linked.pools.get(self.subset))

    def _send(self, ex: Exchange, back: Back, inst: Instance, pool: UpstreamPool | None) -> None:
        self.upstream_host = f"{inst.address}:{inst.port}"
        host = self.linked.host_for(inst)
        if host:
            ex.head.headers = [(k, v) for k, v in ex.head.headers if k != b"host"] + [(b"host", host)]
        ex.inst, ex.pool = inst, pool
        if pool is not None:
            pool.started(inst)
        ex.send_on(back, [self._xfcc], self.rt.config.local_request_timeout)

    def _done_with(self, ex: Exchange) -> None:
        if ex.pool is not None and ex.inst is not None:
            ex.pool.finished(ex.inst)
            ex.pool = None

    def release(self, back: Back, ex: Exchange, reusable: bool) -> None:
        self._done_with(ex)
        if not reusable:
            back.close()

    def timed_out(self, ex: Exchange) -> None:
        self._done_with(ex)
        super().timed_out(ex)

    def lost(self) -> None:
        for back in self.apps.values():
            back.close()
        self.apps.clear()
        super().lost()

    def attempt_failed(self, ex: Exchange, why: str) -> None:
        self._done_with(ex)
        self.link.link.failed += 1
        log.warning("terminating gateway: %s %s from %s to %s: %s", ex.head.method.decode(),
                    ex.head.target.decode("latin-1"), self.source, self.linked.spec.name, why)
        self.app = None
        flag, self.dial_flag = self.dial_flag or "UF", ""
        self.reply(ex, *_unreachable(flag))

    def fixed_fields(self, d: Any, inst: Any, scope: object) -> dict[str, Any]:
        rec = Front.fixed_fields(self, d, inst, scope)
        l7.inbound_fields(rec, self.rt, self.uri, False, cluster=self.linked.cluster, host=scope)  # type: ignore[arg-type]
        return rec

    def scope(self) -> object:
        return self.upstream_host  # the fields name the outside instance this connection reached


class TerminatingH2Front(_Tracked, H2InboundFront):
    """A caller's HTTP/2 connection to a linked `http2`/`grpc` service: the sidecar's inbound HTTP/2 front
    (each stream decided by the L7 intentions, PERMISSION_DENIED / 403 when denied, a line per stream), each
    stream placed on an outside instance (of the SNI's subset) by the resolver's LoadBalancer and relayed over
    that instance's shared HTTP/2 connection (h2c, or TLS with ALPN h2 when originating); `:authority` becomes
    the instance's address when that is a hostname."""

    def __init__(self, gw: TerminatingGateway, linked: _Linked, subset: str = "") -> None:
        assert linked.rt is not None
        super().__init__(linked.rt)
        self.gw, self.linked, self.subset = gw, linked, subset
        self.dial_flag = ""

    def describe(self) -> str:
        return f"terminating gateway: {self.linked.spec.name} (HTTP/2) from {self.source or self.uri or 'unknown'}"

    def to_app(self, s: H2Stream, tried: set[str] | None = None, error: str = "") -> None:
        """Place the stream on an instance (not one in `tried`: those could not be connected to, `error` the
        last reason) and relay it on that instance's shared connection."""
        linked = self.linked
        key = linked.hash_key([h for h in s.headers if not h[0].startswith(b":")], s.path, self.transport)
        try:
            pool, inst = linked.pick(self.subset, self.gw.rng, tried, key)
        except NoHealthyInstance:
            self.dial_flag = "UF" if tried else "UH"
            self.attempt_failed(s, error or no_instance(self.subset))
            return
        s.inst, s.pool = inst, pool
        pool.started(inst)
        host = linked.host_for(inst)
        if host:
            s.headers = [(b":authority", host) if k == b":authority" else (k, v) for k, v in s.headers]
        app_key = f"{LOCAL_APP}|{inst.id}"  # one shared connection per outside instance
        back = self.rt.h2_backs.get(app_key)
        if back is not None and back.usable():
            back.open(s)
        else:
            self.rt.spawn(self._dial_instance(s, inst, app_key, tried or set()))

    async def _dial_instance(self, s: H2Stream, inst: Instance, app_key: str, tried: set[str]) -> None:
        rt, linked = self.rt, self.linked

        async def make() -> H2Back:
            back, _ = await self.gw.dial(linked, self.subset, lambda: H2Back(rt, app_key), h2=True, first=inst,
                                         only_first=True)
            return back  # type: ignore[no-any-return]

        try:
            back = await connection(rt, app_key, make)
        except GatewayDialError as e:
            if not self.closed and not s.done:
                self.released(s)
                self.to_app(s, tried | {inst.id}, str(e))  # the policy's next instance
            return
        if not self.closed and not s.done:
            back.open(s)

    def released(self, s: H2Stream) -> None:
        self.let_go(s)

    def attempt_failed(self, s: H2Stream, why: str) -> None:
        assert self.link is not None
        self.link.failed += 1
        log.warning("terminating gateway: %s %s from %s to %s: %s", s.method.decode("latin-1"),
                    s.path.decode("latin-1"), self.source, self.linked.spec.name, why)
        flag, self.dial_flag = self.dial_flag or "UF", ""
        self.fail(s, *_unreachable(flag))

    def log_record(self, s: H2Stream, now: float) -> dict[str, Any]:
        rec = super(H2InboundFront, self).log_record(s, now)
        l7.inbound_fields(rec, self.rt, self.uri, s.denied, s.why, cluster=self.linked.cluster,
                          host=f"{s.inst.address}:{s.inst.port}" if s.inst is not None else "")
        return rec


class TerminatingGateway:
    def __init__(self, api: AgentAPI, service_id: str, *, bind: str, port: int, admin_address: str = "127.0.0.1",
                 admin_port: int = -1) -> None:
        self.api = api
        self.service_id = service_id
        self.service = service_id
        self.bind, self.port = bind, port
        self.admin_address, self.admin_port = admin_address or "127.0.0.1", admin_port
        self.datacenter = self.trust_domain = ""
        self.default_allow = True
        self.roots: dict[str, Any] | None = None
        self.linked: dict[str, _Linked] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"Handshakes": 0, "HandshakeFailures": 0, "Refused": 0}
        self.handshake_reasons: dict[str, int] = {}  # failed handshakes by reason (/stats)
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._admin: web.AppRunner | None = None
        self._listening = self._listening_context("")
        self.access = GatewayAccessLog()  # proxy-defaults' AccessLogs: a line per connection
        self.rng = random.Random()  # the balancers' randomness (random, least_request ties, maglev/ring misses)
        self._entry: dict[str, Any] | None = None  # the terminating-gateway config entry
        self._wildcard: list[str] = []  # what its wildcard `*` links now (the catalog's gateway-services)
        self._protocols: dict[str, str] = {}  # service-defaults' Protocol by service
        self._default_protocol = ""  # proxy-defaults' Config.protocol
        self._resolvers: dict[str, dict[str, Any]] = {}  # service-resolver entries by service

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        info = await self.api.self_info()
        self.datacenter = info["Config"]["Datacenter"]
        self.default_allow = (info.get("DebugConfig") or {}).get("DefaultIntentionPolicy", "allow") != "deny"
        await self._wait_registered(stop)
        if stop.is_set():
            return
        self.spawn(self.api.watch("/v1/agent/connect/ca/roots", {}, self._on_roots, stop))
        self.spawn(self.api.watch("/v1/config/terminating-gateway", {}, self._on_entries, stop))
        self.spawn(self.api.watch(f"/v1/catalog/gateway-services/{quote(self.service, safe='')}", {},
                                  self._on_gateway_services, stop))
        self.spawn(self.api.watch("/v1/config/proxy-defaults", {}, self._on_proxy_defaults, stop))
        self.spawn(self.api.watch("/v1/config/service-defaults", {}, self._on_service_defaults, stop))
        self.spawn(self.api.watch("/v1/config/service-resolver", {}, self._on_resolvers, stop))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: TLSProtocol(self._listening, TerminatingInbound(self), server_side=True,
                                handshake_timeout=HANDSHAKE_TIMEOUT, on_failure=self._handshake_failed),
            self.bind, self.port, reuse_address=True, backlog=1024)
        if self.admin_port != -1:
            await self._start_admin()
        log.info("terminating gateway %s listening on %s:%d", self.service, self.bind, self.port)
        self.ready.set()
        try:
            await stop.wait()
        finally:
            server.close()
            for linked in self.linked.values():
                for w in linked.watches:
                    w.cancel()
                if linked.rt is not None:
                    await linked.rt.cancel_tasks()  # its dials in progress
            for task in list(self.tasks):
                task.cancel()
            if self._admin is not None:
                await self._admin.cleanup()
            self.access.close()

    async def _wait_registered(self, stop: asyncio.Event) -> None:
        reg = await wait_registered(self.api, self.service_id, stop,
                                    f"terminating gateway {self.service_id!r} is not registered with the agent yet; "
                                    "waiting for it (start with -register)", log)
        if reg is None:
            return
        if reg.get("Kind") != "terminating-gateway":
            raise ProxyError(f"service {self.service_id!r} is not a terminating gateway (Kind {reg.get('Kind')!r})")
        self.service = str(reg.get("Service") or self.service_id)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _listening_context(self, roots_pem: str) -> ssl.SSLContext:
        """The context every handshake starts in; the SNI callback switches it to a linked service's. OpenSSL
        keeps the verify mode (and the session cache) of this first context, so it asks for the caller's
        certificate and trusts the mesh's roots itself."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION  # resumption from the server's cache, as sidecars
        ctx.num_tickets = 1
        if roots_pem:
            ctx.load_verify_locations(cadata=roots_pem)
        ctx.sni_callback = self._pick
        return ctx

    # ------------------------------------------------------------------ watches
    def _on_roots(self, roots: dict[str, Any]) -> None:
        self.roots = roots
        pems = [p for r in roots.get("Roots") or [] for p in (r["RootCert"], *(r.get("IntermediateCerts") or []))]
        try:
            self._listening = self._listening_context("\n".join(pems))
        except (ssl.SSLError, ValueError) as e:
            log.error("terminating gateway: cannot use the new CA roots (keeping the previous ones): %s", e)
        td = (roots.get("TrustDomain") or "").lower()
        if td and td != self.trust_domain:
            self.trust_domain = td
            for linked in self.linked.values():
                self._set_policy(linked)
        for linked in self.linked.values():
            self._rebuild_tls(linked)

    def _on_entries(self, rows: list[dict[str, Any]]) -> None:
        entry = next((r for r in rows or [] if r.get("Name") == self.service), None)
        if entry is None and not self.linked:
            log.warning("no terminating-gateway config entry named %r yet; waiting for it (proconsul config "
                        "write …)", self.service)
        self._entry = entry
        self._relink()

    def _on_proxy_defaults(self, rows: list[dict[str, Any]] | None) -> None:
        self.access.apply(rows)
        entry = next((r for r in rows or [] if r.get("Name") == "global"), None) or {}
        self._default_protocol = str((entry.get("Config") or {}).get("protocol") or "").lower()
        self._apply_protocols()

    def _on_service_defaults(self, rows: list[dict[str, Any]] | None) -> None:
        self._protocols = {str(r.get("Name")): str(r.get("Protocol") or "").lower() for r in rows or []}
        self._apply_protocols()

    def _on_resolvers(self, rows: list[dict[str, Any]] | None) -> None:
        self._resolvers = {str(r.get("Name")): r for r in rows or []}
        self._apply_protocols()

    def _protocol(self, name: str) -> str:
        return self._protocols.get(name) or self._default_protocol or "tcp"

    def _apply_protocols(self) -> None:
        """Each linked service's protocol; one that becomes (or stops being) http gets (or loses) its L7 runtime,
        for new connections. Every runtime writes to the current access log."""
        for linked in self.linked.values():
            protocol = self._protocol(linked.spec.name)
            if protocol != linked.protocol:
                linked.protocol = protocol
                self._set_runtime(linked)
                self._set_policy(linked)
                for side in list(linked.open):  # served in the old mode (a caller's pooled connection): closed,
                    side.close()                # as Envoy drains a filter chain that changed
            resolver = parse_resolver(self._resolvers.get(linked.spec.name))
            if resolver != linked.resolver:
                self._set_resolver(linked, resolver)
            if linked.rt is not None:
                linked.rt.access_log = self.access.log

    def _set_resolver(self, linked: _Linked, resolver: GatewayResolver) -> None:
        """A linked service's service-resolver changed: its subsets' instances, balancing and timeouts apply to
        new connections and to the next request of open ones."""
        old, linked.resolver = linked.resolver, resolver
        if linked.rt is not None and (old.connect_timeout, old.request_timeout) != \
                (resolver.connect_timeout, resolver.request_timeout):  # each request reads the runtime's config
            linked.rt.config = replace(linked.rt.config, local_connect_timeout=resolver.connect_timeout,
                                       local_request_timeout=resolver.request_timeout)
        linked.refresh_pools()
        log.info("terminating gateway: %s: service-resolver applied: %s, %s", linked.spec.name,
                 f"subsets {', '.join(s.name for s in resolver.subsets)}" if resolver.subsets else "no subsets",
                 f"LoadBalancer {resolver.policy}")

    def _set_runtime(self, linked: _Linked) -> None:
        """An http, http2 or grpc service's L7 runtime (the sidecar's: intentions per request, access-log
        lines, metrics); other protocols are L4 here."""
        if linked.protocol not in ("http", "http2", "grpc"):
            linked.rt = None
            return
        name = linked.spec.name
        cfg = ProxyConfig(proxy_id=self.service_id, proxy_name=self.service, service=name, service_id=name,
                          bind_address=self.bind, bind_port=self.port, local_address="", local_port=0,
                          protocol=linked.protocol, local_connect_timeout=linked.resolver.connect_timeout,
                          local_request_timeout=linked.resolver.request_timeout)
        rt = Runtime(cfg, datacenter=self.datacenter)
        rt.trust_domain = self.trust_domain
        rt.access_log = self.access.log
        linked.rt = rt
        log.info("terminating gateway: %s is %s: L7 intentions and a log line per request", name, linked.protocol)

    def _on_gateway_services(self, rows: list[dict[str, Any]]) -> None:
        """The catalog's view of what the entry links: the services its wildcard `*` stands for now."""
        wildcard = sorted(r["Service"]["Name"] for r in rows or [] if r.get("FromWildcard"))
        if wildcard != self._wildcard:
            self._wildcard = wildcard
            self._relink()

    def _relink(self) -> None:
        wanted = terminating_services(self._entry, self._wildcard)
        for name in [n for n in self.linked if n not in wanted or wanted[n] != self.linked[n].spec]:
            old = self.linked.pop(name)
            for w in old.watches:
                w.cancel()
            for side in list(old.open):
                side.close()  # the service is no longer linked (or its settings changed): its connections end
            log.info("terminating gateway: %s is no longer linked as it was", name)
        for name, spec in wanted.items():
            if name not in self.linked:
                self._link(spec)

    def _link(self, spec: LinkedService) -> None:
        linked = self.linked[spec.name] = _Linked(spec)
        linked.protocol = self._protocol(spec.name)
        linked.resolver = parse_resolver(self._resolvers.get(spec.name))
        self._set_runtime(linked)
        if spec.tls:
            try:
                linked.origination = origination_context(spec)
                linked.origination_h2 = origination_context(spec)
                linked.origination_h2.set_alpn_protocols(["h2"])
            except (OSError, ssl.SSLError, ValueError) as e:
                linked.origination_error = f"cannot load its TLS files (CAFile, CertFile, KeyFile): {e}"
                log.error("terminating gateway: %s: %s; connections to it are refused until the entry changes",
                          spec.name, linked.origination_error)
        stop = self._stop
        name = spec.name

        def on_leaf(leaf: dict[str, Any]) -> None:
            linked.leaf = leaf
            self._rebuild_tls(linked)

        def on_intentions(body: dict[str, Any]) -> None:
            linked.intentions = body.get(name) or []
            self._set_policy(linked)

        def on_instances(entries: list[dict[str, Any]]) -> None:
            linked.rows = entries or []
            linked.refresh_pools()
            log.info("terminating gateway: %s has %d healthy instance(s)%s", name, len(linked.pools[""]),
                     "".join(f"; subset {k}: {len(p)}" for k, p in linked.pools.items() if k))

        linked.watches = [
            self.spawn(self.api.watch(f"/v1/agent/connect/ca/leaf/{name}", {}, on_leaf, stop)),
            self.spawn(self.api.watch("/v1/connect/intentions/match", {"by": "destination", "name": name},
                                      on_intentions, stop)),
            self.spawn(self.api.watch(f"/v1/health/service/{quote(name, safe='')}", {}, on_instances, stop)),
        ]
        log.info("terminating gateway: linked %s (%s)", name,
                 "TLS origination" + (" with a client certificate" if spec.cert_file else "") if spec.tls
                 else "plain TCP")

    def _rebuild_tls(self, linked: _Linked) -> None:
        if linked.leaf is None or self.roots is None:
            return
        try:
            ctx = server_context(credentials(linked.leaf, self.roots))
        except MeshTLSError as e:
            log.error("terminating gateway: %s: cannot use its new certificate (keeping the previous one): %s",
                      linked.spec.name, e)
            return
        ctx.proconsul_service = linked.spec.name  # type: ignore[attr-defined]  # read back after the handshake
        linked.ctx = ctx

    def _set_policy(self, linked: _Linked) -> None:
        if not self.trust_domain:
            return
        linked.policy = IntentionPolicy(linked.spec.name, self.trust_domain, linked.intentions, self.default_allow,
                                        http=linked.rt is not None)
        if linked.rt is not None:
            linked.rt.trust_domain = self.trust_domain
            linked.rt.set_policy(linked.policy)  # its HTTP connections: decided per request from now on
        for side in list(linked.open):  # connections an intention no longer allows are closed
            if not linked.policy.connection(side.uri).allowed:
                log.warning("terminating gateway: closing a connection from %s to %s: no longer allowed",
                            side.uri, linked.spec.name)
                side.abort()

    # ------------------------------------------------------------------ connections
    def _pick(self, ssl_obj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        """The SNI names the linked service (and maybe a subset of its resolver): present its leaf (or end the
        handshake: a name not linked, or a subset the resolver does not define — Envoy has no cluster for it)."""
        target = parse_sni_name(server_name or "", self.trust_domain)
        linked = self.linked.get(target.service) if target is not None and target.datacenter == self.datacenter \
            else None
        if target is None or linked is None or linked.ctx is None:
            self.refused(None, "unknown", f"no linked service for server name {server_name!r}")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        try:
            ssl_obj.proconsul_subset = linked.resolver.subset_for(target.subset)
        except UnknownSubset as e:
            linked.stats["UnknownSubset"] += 1
            ssl_obj.proconsul_unknown_subset = (linked.spec.name, target.subset)  # for the access-log line
            self.refused(linked, "unknown", f"server name {server_name!r}: {e}")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        self.stats["Handshakes"] += 1
        ssl_obj.context = linked.ctx
        return None

    def _handshake_failed(self, tls: Any, exc: Exception) -> None:
        """A caller that did not complete mTLS (a foreign or missing certificate, a server name not linked):
        counted by reason and one listener-level access-log line naming the service its SNI chose, if any (and
        the subset, `NR`, when that service's resolver has no such subset: Envoy would have no cluster for it)."""
        self.stats["HandshakeFailures"] += 1
        reason = handshake_failure_reason(exc)
        service = str(getattr(tls.sslobj.context, "proconsul_service", ""))
        cluster = f"{service}.default.default.{self.datacenter}" if service else ""
        unknown = getattr(tls.sslobj, "proconsul_unknown_subset", None)  # set by _pick: (service, subset)
        if unknown is not None:
            service, cluster = unknown[0], f"{unknown[1]}.{unknown[0]}.default.default.{self.datacenter}"
        if unknown is not None or (not service and reason == "CALLBACK_FAILED"):  # _pick ended the handshake
            reason = "UNRECOGNIZED_NAME"
        flag = "NR" if reason == "UNRECOGNIZED_NAME" and (unknown is not None or not service) else "-"
        self.handshake_reasons[reason] = self.handshake_reasons.get(reason, 0) + 1
        self.access.handshake_failed(tls.opened, peer_address(tls.raw), reason, cluster, service, flag)
        log.debug("terminating gateway: handshake failed: %s", exc)

    def refused(self, linked: _Linked | None, source: str, reason: str) -> None:
        self.stats["Refused"] += 1
        if linked is not None:
            linked.stats["Refused"] += 1
        log.warning("terminating gateway: refused connection from %s to %s: %s", source,
                    linked.spec.name if linked is not None else "?", reason)

    async def dial(self, linked: _Linked, subset: str = "", factory: Any = Side, h2: bool = False, *,
                   hash_key: bytes | None = None, first: Instance | None = None,
                   only_first: bool = False) -> tuple[Any, Instance]:
        """A connection to a healthy instance of the outside service in `subset` ("": any), chosen by its
        resolver's LoadBalancer (`first` when the caller already chose; the next choice on a connect or TLS
        failure unless `only_first`), TLS when the entry says so (offering ALPN h2 with `h2`), with the
        protocol `factory` makes (a Side to splice, an HTTP Back, an HTTP/2 back), and the instance."""
        spec = linked.spec
        if spec.tls and linked.origination is None:
            raise GatewayDialError(linked.origination_error or "its TLS settings are not loaded")
        pool = linked.pools.get(subset)
        if pool is None or not len(pool):
            raise GatewayDialError(no_instance(subset), "UH")
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        tried: set[str] = set()
        inst = first
        while True:
            if inst is None:
                try:
                    inst = pool.pick(time.monotonic(), self.rng, tried, hash_key)
                except NoHealthyInstance:
                    break
            tried.add(inst.id)
            host, port = inst.address, inst.port
            try:
                async with asyncio.timeout(linked.connect_timeout):
                    if linked.origination is not None:
                        ctx = linked.origination_h2 if h2 else linked.origination
                        _, side = await loop.create_connection(factory, host, port, ssl=ctx,
                                                               server_hostname=spec.sni or host,
                                                               ssl_handshake_timeout=linked.connect_timeout)
                    else:
                        _, side = await loop.create_connection(factory, host, port)
                return side, inst
            except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
                linked.stats["DialFailures"] += 1
                errors.append(f"{host}:{port}: {e or 'timed out'}")
                if only_first:
                    break
                inst = None
        raise GatewayDialError("; ".join(errors) or no_instance(subset), "UF" if errors else "UH")

    # ------------------------------------------------------------------ admin
    def snapshot(self) -> dict[str, Any]:
        return {**self.stats, "HandshakeFailureReasons": dict(self.handshake_reasons), "Service": self.service,
                "Services": {
            name: {**ln.stats, "Open": len(ln.open), "Instances": len(ln.pools.get("", ())), "TLS": ln.spec.tls,
                   "Protocol": ln.protocol, **ln.resolver.snapshot(),
                   **({"Subsets": {k: len(p) for k, p in ln.pools.items() if k}} if len(ln.pools) > 1 else {}),
                   **({"HTTP": ln.rt.metrics.snapshot()["Inbound"]} if ln.rt is not None else {}),
                   "Ready": ln.ctx is not None and ln.policy is not None,
                   **({"Error": ln.origination_error} if ln.origination_error else {})}
            for name, ln in self.linked.items()}}

    async def _start_admin(self) -> None:
        self._admin, self.admin_port = await start_admin(self.admin_address, self.admin_port or 0, {
            "/stats": json_route(self.snapshot), "/ready": ready_route(self.ready)})
        log.info("terminating gateway admin (stats) on http://%s:%d", self.admin_address, self.admin_port)


def no_instance(subset: str) -> str:
    return "no passing instance in the catalog" + (f" in subset {subset}" if subset else "")


def origination_context(spec: LinkedService) -> ssl.SSLContext:
    """The client TLS context towards the outside service: its CA, a client certificate when given, and a
    name check against `SNI` when given (Envoy's behaviour: without SNI only the chain is verified)."""
    ctx = ssl.create_default_context(cafile=spec.ca_file)
    ctx.check_hostname = bool(spec.sni)
    if spec.cert_file:
        ctx.load_cert_chain(spec.cert_file, spec.key_file)
    return ctx
