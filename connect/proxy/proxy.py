"""The sidecar proxy process: learns everything from the local agent, then serves until stopped.

`Proxy.run` waits for its registration, the CA roots, its leaf and its intentions (blocking queries on
the agent, each its own task), binds the public mTLS listener and one listener per upstream, and
keeps following the agent: a new leaf or root rebuilds the TLS contexts (open connections keep
theirs), new intentions take effect for the next handshake and close connections they no longer
allow, a health change replaces an upstream's instance set. An admin listener serves `/metrics`
(Prometheus), `/stats` (JSON), `/refusals` and `/ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from aiohttp import web

from proconsul.connect.proxy import http, listeners
from proconsul.connect.proxy.agent_api import AgentAPI, AgentAPIError
from proconsul.connect.proxy.authz import IntentionPolicy
from proconsul.connect.proxy.balancer import Instance
from proconsul.connect.proxy.config import (
    ProxyConfig,
    ProxyConfigError,
    Upstream,
    from_registration,
    with_protocols,
)
from proconsul.connect.proxy.runtime import Runtime
from proconsul.connect.proxy.tls import Credentials, MeshTLSError, ServerContexts, client_context

log = logging.getLogger("proconsul.proxy")


class ProxyError(Exception):
    """The proxy cannot start: its registration is unusable or a listener cannot bind."""


def credentials(leaf: dict[str, Any], roots: dict[str, Any]) -> Credentials:
    """TLS material from `/v1/agent/connect/ca/leaf/:svc` and `/v1/agent/connect/ca/roots` answers."""
    pems = []
    for r in roots.get("Roots") or []:
        pems.append(r["RootCert"])
        pems.extend(r.get("IntermediateCerts") or [])
    return Credentials(cert_pem=leaf["CertPEM"], key_pem=leaf["PrivateKeyPEM"], roots_pem="\n".join(pems),
                       trust_domain=roots.get("TrustDomain", ""),
                       root_ids=tuple(r["ID"] for r in roots.get("Roots") or []))


def healthy_instances(entries: list[dict[str, Any]], destination: str, datacenter: str) -> list[Instance]:
    """Instances from `/v1/health/connect/:svc?passing`: each sidecar's (or native service's) public address."""
    out = []
    for e in entries:
        node, svc = e.get("Node") or {}, e.get("Service") or {}
        address = svc.get("Address") or node.get("Address") or ""
        if not address or not svc.get("Port"):
            continue
        out.append(Instance(id=f"{node.get('Node', '')}/{svc.get('ID', '')}", address=address, port=int(svc["Port"]),
                            service=destination, datacenter=node.get("Datacenter") or datacenter))
    return out


class Proxy:
    def __init__(self, api: AgentAPI, proxy_id: str, *, admin_address: str = "", admin_port: int = -1,
                 rng: random.Random | None = None) -> None:
        self.api = api
        self.proxy_id = proxy_id
        self.admin_address = admin_address or "127.0.0.1"
        self.admin_port = admin_port  # -1: no admin listener; 0: any free port
        self.rng = rng or random.Random()
        self.rt: Runtime | None = None
        self.ready = asyncio.Event()
        self.public_port = 0
        self.upstream_ports: dict[str, int] = {}
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._server_ctx: ServerContexts | None = None
        self._leaf: dict[str, Any] | None = None
        self._roots: dict[str, Any] | None = None
        self._default_allow = True
        self._loaded = asyncio.Event()
        self._admin: web.AppRunner | None = None

    # ------------------------------------------------------------------ start-up
    async def _registration(self, stop: asyncio.Event) -> ProxyConfig | None:
        """Wait for this proxy's registration (the agent may still be registering it)."""
        said = False
        while not stop.is_set():
            try:
                return from_registration(await self.api.service(self.proxy_id))
            except AgentAPIError as e:
                if e.status != 404:
                    raise
                if not said:
                    log.warning("proxy %r is not registered with the agent yet; waiting for it (register the "
                                "service with a sidecar_service, or a Kind connect-proxy service)", self.proxy_id)
                    said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            info = await self.api.self_info()
            datacenter = info["Config"]["Datacenter"]
            self._default_allow = (info.get("DebugConfig") or {}).get("DefaultIntentionPolicy", "allow") != "deny"
            cfg = await self._registration(stop)
        except (AgentAPIError, KeyError) as e:
            raise ProxyError(f"cannot read the proxy's configuration from the agent: {e}") from None
        except ProxyConfigError as e:
            raise ProxyError(f"proxy registration {self.proxy_id!r}: {e}") from None
        if cfg is None:
            return
        cfg = with_protocols(cfg, *await self._protocols(cfg))
        self.rt = Runtime(cfg, datacenter=datacenter, rng=self.rng)
        log.info("proxy %s for service %s: public listener %s:%d, %d upstream(s)", cfg.proxy_id, cfg.service,
                 cfg.bind_address, cfg.bind_port, len(cfg.upstreams))
        try:
            await self._run_tasks(cfg, stop)
        except BaseExceptionGroup as eg:  # a task's ProxyError (a port in use) is the one line to show
            fatal = [e for e in eg.exceptions if isinstance(e, ProxyError)]
            if fatal:
                raise fatal[0] from None
            raise

    async def _protocols(self, cfg: ProxyConfig) -> tuple[dict[str, str], str]:
        """Protocols from the `service-defaults` of this service and its upstreams, and `proxy-defaults`."""
        out: dict[str, str] = {}
        for name in {cfg.service, *(u.destination_name for u in cfg.upstreams)}:
            entry = await self._config_entry("service-defaults", name)
            if entry and entry.get("Protocol"):
                out[name] = str(entry["Protocol"]).lower()
        defaults = await self._config_entry("proxy-defaults", "global") or {}
        return out, str((defaults.get("Config") or {}).get("protocol", "")).lower()

    async def _config_entry(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            body, _ = await self.api.get(f"/v1/config/{kind}/{name}")
            return body
        except AgentAPIError as e:
            if e.status == 404:
                return None
            raise

    async def _run_tasks(self, cfg: ProxyConfig, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            watches = [
                tg.create_task(self.api.watch("/v1/agent/connect/ca/roots", {}, self._on_roots, stop)),
                tg.create_task(self.api.watch(f"/v1/agent/connect/ca/leaf/{cfg.service}", {}, self._on_leaf, stop)),
                tg.create_task(self.api.watch("/v1/connect/intentions/match",
                                              {"by": "destination", "name": cfg.service}, self._on_intentions, stop)),
            ]
            watches += [tg.create_task(self._watch_upstream(up, stop)) for up in cfg.upstreams]
            await tg.create_task(self._serve(stop))
            for w in watches:  # a blocking query may be parked for a minute: stop now
                w.cancel()

    async def _watch_upstream(self, up: Upstream, stop: asyncio.Event) -> None:
        assert self.rt is not None
        pool = self.rt.pools[up.key]
        params = {"passing": "1"}
        if up.datacenter:
            params["dc"] = up.datacenter

        def update(entries: list[dict[str, Any]]) -> None:
            assert self.rt is not None
            instances = healthy_instances(entries, up.destination_name, up.datacenter or self.rt.datacenter)
            if {i.id for i in instances} != {i.id for i in pool.instances()}:
                log.info("upstream %s: %d healthy instance(s)", up.destination_name, len(instances))
            pool.set_instances(instances)

        await self.api.watch(f"/v1/health/connect/{up.destination_name}", params, update, stop)

    # ------------------------------------------------------------------ watch callbacks
    def _on_roots(self, roots: dict[str, Any]) -> None:
        self._roots = roots
        self._rebuild_tls()

    def _on_leaf(self, leaf: dict[str, Any]) -> None:
        self._leaf = leaf
        self._rebuild_tls()

    def _rebuild_tls(self) -> None:
        rt = self.rt
        if rt is None or self._leaf is None or self._roots is None:
            return
        try:
            creds = credentials(self._leaf, self._roots)
            client = client_context(creds)
            if self._server_ctx is None:
                self._server_ctx = ServerContexts(creds)
            else:
                self._server_ctx.update(creds)
        except MeshTLSError as e:
            log.error("cannot use the new certificates (keeping the previous ones): %s", e)
            return
        changed = rt.trust_domain and rt.trust_domain != creds.trust_domain
        rt.trust_domain = creds.trust_domain
        rt.trust_roots(creds.root_ids, time.time())
        rt.client_ctx = client
        log.info("TLS: leaf serial %s, %d root(s) trusted", self._leaf.get("SerialNumber", "?"), len(creds.root_ids))
        if changed or (rt.policy is not None and rt.policy.trust_domain != creds.trust_domain):
            self._set_policy(rt.policy.intentions if rt.policy else [])
        self._check_loaded()

    def _on_intentions(self, body: dict[str, Any]) -> None:
        assert self.rt is not None
        self._set_policy(body.get(self.rt.config.service) or [])
        self._check_loaded()

    def _set_policy(self, intentions: list[dict[str, Any]]) -> None:
        rt = self.rt
        assert rt is not None
        rt.set_policy(IntentionPolicy(rt.config.service, rt.trust_domain, intentions, self._default_allow,
                                      http=rt.config.protocol == "http"))

    def _check_loaded(self) -> None:
        rt = self.rt
        if rt is not None and rt.client_ctx is not None and rt.policy is not None and rt.trust_domain:
            self._loaded.set()

    # ------------------------------------------------------------------ listeners
    async def _serve(self, stop: asyncio.Event) -> None:
        rt = self.rt
        assert rt is not None
        waiter = asyncio.ensure_future(self._loaded.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if stop.is_set():
            return
        loop = asyncio.get_running_loop()
        cfg = rt.config
        assert self._server_ctx is not None
        try:
            inbound = http.inbound_factory(rt) if cfg.protocol == "http" else listeners.inbound_factory(rt)
            server = await loop.create_server(inbound, cfg.bind_address, cfg.bind_port,
                                              ssl=self._server_ctx.listening, reuse_address=True, backlog=1024,
                                              ssl_handshake_timeout=cfg.handshake_timeout)
            self._servers["public"] = server
            self.public_port = server.sockets[0].getsockname()[1]
            for up in cfg.upstreams:
                factory = http.upstream_factory(rt, up) if up.protocol == "http" else \
                    listeners.upstream_factory(rt, up)
                server = await loop.create_server(factory, up.local_bind_address, up.local_bind_port,
                                                  reuse_address=True, backlog=1024)
                self._servers[up.key] = server
                self.upstream_ports[up.destination_name] = server.sockets[0].getsockname()[1]
            if self.admin_port >= 0:
                await self._start_admin()
        except OSError as e:
            await self._close_listeners()
            raise ProxyError(f"cannot listen: {e.strerror or e}") from None
        log.info("proxy ready: public mTLS %s:%d -> %s:%d; upstreams %s", cfg.bind_address, self.public_port,
                 cfg.local_address, cfg.local_port,
                 ", ".join(f"{u.destination_name}@{u.local_bind_address}:{u.local_bind_port}" for u in cfg.upstreams)
                 or "none")
        self.ready.set()
        _tune_gc()
        try:
            await stop.wait()
        finally:
            await self._close_listeners()
            await rt.cancel_tasks()
            rt.http_connections.close()

    async def _close_listeners(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None

    # ------------------------------------------------------------------ admin
    async def _start_admin(self) -> None:
        rt = self.rt
        assert rt is not None
        app = web.Application()

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=rt.metrics.prometheus(), content_type="text/plain", charset="utf-8",
                                headers={"X-Content-Type-Options": "nosniff"})

        async def stats(_: web.Request) -> web.Response:
            return web.json_response(self.stats())

        async def refusals(_: web.Request) -> web.Response:
            return web.json_response([r.to_json() for r in rt.refusals])

        async def ready(_: web.Request) -> web.Response:
            return web.Response(text="ready\n" if self.ready.is_set() else "starting\n",
                                status=200 if self.ready.is_set() else 503)

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/stats", stats)
        app.router.add_get("/refusals", refusals)
        app.router.add_get("/ready", ready)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, self.admin_address, self.admin_port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.admin_port = server.sockets[0].getsockname()[1]
        log.info("proxy admin (metrics, stats) on http://%s:%d", self.admin_address, self.admin_port)

    def stats(self) -> dict[str, Any]:
        rt = self.rt
        assert rt is not None
        snap = rt.metrics.snapshot()
        now = time.monotonic()
        snap.update({
            "ProxyID": rt.config.proxy_id, "PublicPort": self.public_port, "TrustDomain": rt.trust_domain,
            "OpenInbound": rt.inbound_count(), "RevokedConnections": rt.revoked,
            "RetryBudgetRefused": rt.budget.refused,
            "LeafSerial": (self._leaf or {}).get("SerialNumber", ""),
            "RootIDs": [r["ID"] for r in (self._roots or {}).get("Roots") or []],
            "UpstreamInstances": {p.name: {"Healthy": len(p), "Ejected": p.ejected(now)}
                                  for p in rt.pools.values()},
        })
        return snap


def _tune_gc() -> None:
    """What start-up allocated lives as long as the proxy: keep it out of the collector's sight, and
    collect the young generation less often (every forwarded chunk allocates short-lived objects)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
