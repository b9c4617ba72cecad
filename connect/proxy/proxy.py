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
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from proconsul.catalog.filter import Predicate
from proconsul.connect.proxy import h2relay, http, listeners
from proconsul.connect.proxy.addresses import dialable, mesh_gateway_address, weight
from proconsul.connect.proxy.admin_address import AdminAddress, admin_address
from proconsul.connect.proxy.admin_http import json_route, prometheus_route, ready_route, start_admin
from proconsul.connect.proxy.agent_api import AgentAPI, AgentAPIError, wait_registered
from proconsul.connect.proxy.authz import IntentionPolicy
from proconsul.connect.proxy.balancer import Instance
from proconsul.connect.proxy.config import (
    ProxyConfig,
    ProxyConfigError,
    Upstream,
    changes,
    from_registration,
    with_protocols,
    with_upstream_config,
)
from proconsul.connect.proxy.gateway_resolver import subset_filter
from proconsul.connect.proxy.routing import ChainFormatError, RouteTable, Target
from proconsul.connect.proxy.runtime import Runtime
from proconsul.connect.proxy.tap import Subscriber, TapError, TapFilter, parse_rate
from proconsul.connect.proxy.tls import Credentials, MeshTLSError, ServerContexts, client_context
from proconsul.connect.proxy.tlsproto import TLSProtocol
from proconsul.connect.proxy.tracing import TracingSettings

log = logging.getLogger("proconsul.proxy")
WARMING_MAX = 2.0  # seconds a new chain waits for its new targets' first instance lists
TAP_HEARTBEAT = 2.0  # seconds between blank lines on an idle /tap stream


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


def healthy_instances(entries: list[dict[str, Any]], destination: str, datacenter: str,
                      sni: str = "", only_passing: bool = False) -> list[Instance]:
    """The instances to send to from `/v1/health/connect/:svc` (every health state): each sidecar's (or native
    service's) public address. As Consul's proxies do, an instance with a critical check (its node's included)
    is left out, and one with a warning check only when the resolver's subset says `OnlyPassing`; each weighs
    what its `Weights` say (`addresses.weight`)."""
    return [Instance(id=f"{node.get('Node', '')}/{svc.get('ID', '')}", address=address, port=int(svc["Port"]),
                     service=destination, datacenter=node.get("Datacenter") or datacenter, sni=sni, weight=w)
            for node, svc, address, w in dialable(entries, only_passing)]


def subset_rows(entries: list[dict[str, Any]], predicate: Predicate | None) -> list[dict[str, Any]]:
    """The rows of `/v1/health/connect/<svc>` that serve a subset whose Filter is `predicate`: the service's
    own instances that match it, and every terminating gateway that links the service — the gateway applies
    the subset itself (the SNI names it), so its instances are never filtered by the service's metadata."""
    if predicate is None:
        return entries
    return [e for e in entries if (e.get("Service") or {}).get("Kind") == "terminating-gateway" or predicate(e)]


def gateway_instances(entries: list[dict[str, Any]], *, local: bool, destination: str, datacenter: str,
                      sni: str = "") -> list[Instance]:
    """Mesh gateways from `/v1/health/service/<gateway>?passing` as the instances to dial for a destination
    in another datacenter: ours at their LAN address (mode local) or the destination's at their WAN
    address (mode remote), weighted by their `Weights`. The peer must still present `destination`'s identity:
    the gateways only splice."""
    out = []
    for e in entries:
        where = mesh_gateway_address(e, local=local)
        node, svc = e.get("Node") or {}, e.get("Service") or {}
        w = weight(svc, e.get("Checks") or [], False)
        if where is not None and w:
            out.append(Instance(id=f"gateway/{node.get('Node', '')}/{svc.get('ID', '')}", address=where[0],
                                port=where[1], service=destination, datacenter=datacenter, sni=sni, weight=w))
    return out


class Proxy:
    def __init__(self, api: AgentAPI, proxy_id: str, *, admin_address: str = "", admin_port: int | None = -1,
                 rng: random.Random | None = None) -> None:
        self.api = api
        self.proxy_id = proxy_id
        self.admin_address = admin_address or "127.0.0.1"
        self.admin_port = admin_port  # -1: no admin listener; 0: any free port; None: from the registration
        self._admin_where: AdminAddress | None = None  # when admin_port is None: read from the registration
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
        self._tg: asyncio.TaskGroup | None = None
        self._upstream_watches: dict[str, asyncio.Task[None]] = {}
        self._listening = asyncio.Lock()  # opening or closing listeners: one story at a time
        self._restart_with: ProxyConfig | None = None
        self._reload = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self.gateway_service = "mesh-gateway"  # the name mesh gateways are registered under (Consul's habit)
        self.gateway_default = ""  # proxy-defaults' MeshGateway.Mode
        self._access_logs: dict[str, Any] = {}  # proxy-defaults' AccessLogs
        self._rate_limits: dict[str, Any] = {}  # this service's service-defaults RateLimits
        self._tracing: TracingSettings | None = None  # proxy-defaults Config.tracing
        self._target_known: dict[tuple[str, str], asyncio.Event] = {}  # new chain targets' first answers
        self._last_registration: dict[str, Any] | None = None  # the last one seen, to re-resolve when entries change

    # ------------------------------------------------------------------ start-up
    async def _registration(self, stop: asyncio.Event) -> ProxyConfig | None:
        """Wait for this proxy's registration (the agent may still be registering it)."""
        body = await wait_registered(self.api, self.proxy_id, stop,
                                     f"proxy {self.proxy_id!r} is not registered with the agent yet; waiting for it "
                                     "(register the service with a sidecar_service, or a Kind connect-proxy service)")
        if body is None:
            return None
        cfg = from_registration(body)
        if self.admin_port is None:
            self._admin_where = admin_address(body)
        return cfg

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
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
        try:
            cfg = await self._resolve(cfg)
        except ProxyConfigError as e:
            raise ProxyError(f"proxy {self.proxy_id!r}: {e}") from None
        while True:
            self.rt = Runtime(cfg, datacenter=datacenter, rng=self.rng)
            self._apply_defaults(self.rt)
            log.info("proxy %s for service %s: public listener %s:%d, %d upstream(s)", cfg.proxy_id, cfg.service,
                     cfg.bind_address, cfg.bind_port, len(cfg.upstreams))
            try:
                await self._run_tasks(cfg, stop)
            except BaseExceptionGroup as eg:  # a task's ProxyError (a port in use) is the one line to show
                fatal = [e for e in eg.exceptions if isinstance(e, ProxyError)]
                if fatal:
                    raise fatal[0] from None
                raise
            if stop.is_set() or self._restart_with is None:
                return
            # The registration now fronts another service: start over with its identity.
            cfg, self._restart_with = self._restart_with, None
            self._reload.clear()
            self._loaded.clear()
            self.ready.clear()
            self._leaf = self._roots = None
            self._server_ctx = None

    async def _resolve(self, cfg: ProxyConfig) -> ProxyConfig:
        """The registration completed by config entries, as Consul resolves it: this service's
        `service-defaults` UpstreamConfig (limits, passive health checks, timeouts), protocols from each
        service's `service-defaults` else `proxy-defaults`; the proxy-defaults' AccessLogs are kept."""
        protocols: dict[str, str] = {}
        upstream_config = None
        for name in {cfg.service, *(u.destination_name for u in cfg.upstreams)}:
            entry = await self._config_entry("service-defaults", name)
            if entry and entry.get("Protocol"):
                protocols[name] = str(entry["Protocol"]).lower()
            if name == cfg.service:
                upstream_config = (entry or {}).get("UpstreamConfig")
                self._rate_limits = (entry or {}).get("RateLimits") or {}
        defaults = await self._config_entry("proxy-defaults", "global") or {}
        mode = str(((defaults.get("MeshGateway") or {}).get("Mode")) or "").lower()
        self.gateway_default = mode if mode in ("none", "local", "remote") else ""
        self._access_logs = defaults.get("AccessLogs") or {}
        self._tracing = TracingSettings.from_config((defaults.get("Config") or {}).get("tracing"))
        cfg = with_upstream_config(cfg, upstream_config)
        return with_protocols(cfg, protocols, str((defaults.get("Config") or {}).get("protocol", "")).lower())

    def _apply_defaults(self, rt: Runtime) -> None:
        """What config entries set beside the registration: access logs, rate limits, tracing."""
        rt.set_access_log(self._access_logs)
        rt.set_rate_limits(self._rate_limits)
        rt.set_tracing(self._tracing)

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
            self._tg = tg
            watches = [
                tg.create_task(self.api.watch("/v1/agent/connect/ca/roots", {}, self._on_roots, stop)),
                tg.create_task(self.api.watch(f"/v1/agent/connect/ca/leaf/{cfg.service}", {}, self._on_leaf, stop)),
                tg.create_task(self.api.watch("/v1/connect/intentions/match",
                                              {"by": "destination", "name": cfg.service}, self._on_intentions, stop)),
                tg.create_task(self.api.watch(f"/v1/agent/service/{quote(cfg.proxy_id, safe='')}", {},
                                              self._on_registration, stop, by_hash=True)),
                tg.create_task(self.api.watch("/v1/config/service-defaults", {}, self._on_entries, stop)),
                tg.create_task(self.api.watch("/v1/config/proxy-defaults", {}, self._on_entries, stop)),
                *(tg.create_task(c) for c in self._extra_watches(stop)),
            ]
            for up in cfg.upstreams:
                self._start_upstream_watch(up, stop)
            await tg.create_task(self._serve(stop))
            for w in [*watches, *self._upstream_watches.values()]:  # a blocking query may be parked: stop now
                w.cancel()
            self._upstream_watches.clear()
            self._tg = None

    def _extra_watches(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        """What a mode of the proxy follows beyond a sidecar's watches (a gateway: its config entry)."""
        return []

    def _start_upstream_watch(self, up: Upstream, stop: asyncio.Event) -> None:
        assert self._tg is not None
        self._stop_upstream_watches(up.key)
        self._upstream_watches[up.key] = self._tg.create_task(self._watch_upstream(up, stop))
        if self._follows_chain(up):
            self._upstream_watches[f"{up.key}|chain"] = self._tg.create_task(self._watch_chain(up, stop))

    def _follows_chain(self, up: Upstream) -> bool:
        """Every upstream follows its discovery chain; one with `datacenter = "dc2"` the chain as evaluated
        in dc2 (its Redirects and Failover seen from there, Consul's `compile-dc`)."""
        return True

    def _restart_upstream_watch(self, up: Upstream, stop: asyncio.Event) -> None:
        """An upstream's settings changed (datacenter, timeouts, limits, protocol): its instances are
        watched again; its discovery chain and targets stay as they are."""
        assert self._tg is not None
        old = self._upstream_watches.pop(up.key, None)
        if old is not None:
            old.cancel()
        self._upstream_watches[up.key] = self._tg.create_task(self._watch_upstream(up, stop))
        chain = f"{up.key}|chain"
        if not self._follows_chain(up):
            self._stop_chain_watches(up.key)
        elif chain not in self._upstream_watches:
            self._upstream_watches[chain] = self._tg.create_task(self._watch_chain(up, stop))

    def _stop_upstream_watches(self, key: str) -> None:
        """End the watches of one upstream: its instances, its discovery chain and the chain's targets."""
        self._stop_chain_watches(key, including=key)

    def _stop_chain_watches(self, key: str, including: str = "") -> None:
        """End an upstream's discovery chain and target watches (and the watch named `including`), and
        drop its chain."""
        for k in [k for k in self._upstream_watches if k == including or k.startswith(key + "|")]:
            self._upstream_watches.pop(k).cancel()
        if self.rt is not None:
            self.rt.set_chain(key, None)

    async def _on_entries(self, _: Any) -> None:
        """service-defaults or proxy-defaults changed: resolve the registration again (protocols, upstream
        limits and passive health checks, access logs) and apply what changed, without a restart."""
        if self._last_registration is not None and self.rt is not None:
            await self._on_registration(self._last_registration)

    async def _on_registration(self, body: dict[str, Any]) -> None:
        """The registration changed (a blocking query by content hash): apply it without a restart —
        upstream listeners come and go, the public listener moves, new connections follow the new
        settings, open connections are left alone."""
        rt = self.rt
        assert rt is not None
        self._last_registration = body
        try:
            new = from_registration(body)
            new = await self._resolve(new)
        except (ProxyConfigError, AgentAPIError) as e:
            log.error("the proxy registration changed but cannot be used (keeping the previous configuration): %s",
                      e)
            return
        self._apply_defaults(rt)
        change = changes(rt.config, new)
        if not change:
            return
        if change.restart:
            log.warning("proxy %s now fronts %r (was %r): starting over with its identity", new.proxy_id,
                        new.service, rt.config.service)
            self._restart_with = new
            self._reload.set()
            return
        async with self._listening:
            rt.reconfigure(new)
            for up in change.removed:
                self._stop_upstream_watches(up.key)
                server = self._servers.pop(up.key, None)
                if server is not None:
                    server.close()
                    self.upstream_ports.pop(up.destination_name, None)
            stop = self._stop or asyncio.Event()
            for up in change.added:
                self._start_upstream_watch(up, stop)
            for up in change.changed:
                self._restart_upstream_watch(up, stop)
            if self.ready.is_set():
                if change.public_moved:
                    await self._open_public(rt, replace=True)
                for up in change.added:
                    await self._open_upstream(rt, up, fatal=False)
        log.info("proxy configuration changed: %d upstream(s) added, %d removed, %d changed%s", len(change.added),
                 len(change.removed), len(change.changed),
                 f"; public listener now {new.bind_address}:{new.bind_port}" if change.public_moved else "")

    async def _watch_upstream(self, up: Upstream, stop: asyncio.Event) -> None:
        assert self.rt is not None
        pool = self.rt.pools[up.key]
        params: dict[str, str] = {}  # every health state: `healthy_instances` leaves out what Consul's would
        mode = up.mesh_gateway or self.gateway_default  # the upstream's (or the proxy's), else proxy-defaults'
        if up.datacenter and up.datacenter != self.rt.datacenter and mode in ("local", "remote"):
            return await self._watch_gateways(up, mode == "local", pool, stop)
        if up.datacenter:
            params["dc"] = up.datacenter

        def update(entries: list[dict[str, Any]]) -> None:
            assert self.rt is not None
            instances = healthy_instances(entries, up.destination_name, up.datacenter or self.rt.datacenter)
            if {i.id for i in instances} != {i.id for i in pool.instances()}:
                log.info("upstream %s: %d healthy instance(s)", up.destination_name, len(instances))
            pool.set_instances(instances)

        await self.api.watch(f"/v1/health/connect/{up.destination_name}", params, update, stop)

    async def _watch_gateways(self, up: Upstream, local: bool, pool: Any, stop: asyncio.Event) -> None:
        """An upstream in another datacenter through mesh gateways: the instances to dial are our
        datacenter's gateways (mode local, their LAN address) or the destination's (mode remote, their
        WAN address); the SNI still names the destination service there, so the gateway routes it and
        the TLS session is end to end with its sidecar."""
        def update(instances: list[Instance]) -> None:
            if {i.id for i in instances} != {i.id for i in pool.instances()}:
                log.info("upstream %s in %s: %d %s mesh gateway(s)", up.destination_name, up.datacenter,
                         len(instances), "local" if local else "remote")
            pool.set_instances(instances)

        await self._follow_gateways(up.destination_name, up.datacenter, local, "", update, stop)

    async def _follow_gateways(self, destination: str, datacenter: str, local: bool, sni: str,
                               update: Callable[[list[Instance]], None], stop: asyncio.Event) -> None:
        """Follow the mesh gateways that lead to `destination` in `datacenter` (ours or theirs, by mode)."""
        params = {"passing": "1", **({} if local else {"dc": datacenter})}
        await self.api.watch(f"/v1/health/service/{self.gateway_service}", params, lambda entries: update(
            gateway_instances(entries, local=local, destination=destination, datacenter=datacenter, sni=sni)), stop)

    async def _watch_chain(self, up: Upstream, stop: asyncio.Event) -> None:
        """Follow the upstream's discovery chain: each change is applied to new requests at once (open
        connections stay), and targets that need instances of their own get a watch."""
        async def update(body: dict[str, Any]) -> None:
            rt = self.rt
            assert rt is not None and self._tg is not None
            try:
                table = RouteTable.from_chain(body["Chain"])
            except (ChainFormatError, KeyError, TypeError) as e:
                log.error("upstream %s: keeping the previous routes: %s", up.destination_name, e)
                return
            tg = self._tg

            def watch(t: Target) -> asyncio.Event:
                key = f"{up.key}|target|{t.id}"
                old = self._upstream_watches.pop(key, None)
                if old is not None:
                    old.cancel()
                known = self._target_known[(up.key, t.id)] = asyncio.Event()
                self._upstream_watches[key] = tg.create_task(self._watch_target(up, t, stop))
                return known

            warming = [watch(t).wait() for t in rt.set_chain(up.key, table, activate=False)]
            if warming:  # new targets: switch once their instances are known (or after WARMING_MAX), never to
                try:     # a target the proxy has not heard about yet (that would answer 503 for nothing)
                    await asyncio.wait_for(asyncio.gather(*warming), WARMING_MAX)
                except TimeoutError:
                    log.warning("upstream %s: applying the new chain before all its targets answered",
                                up.destination_name)
            if self.rt is not rt:
                return
            for t in rt.set_chain(up.key, table):  # a pool gone while warming (the upstream was reconfigured)
                watch(t)                            # gets a watch of its own again, never an unfed pool
            live = {f"{up.key}|target|{tid}" for (k, tid) in rt.target_pools if k == up.key}
            for key in [k for k in self._upstream_watches if k.startswith(f"{up.key}|target|") and k not in live]:
                self._upstream_watches.pop(key).cancel()
            log.info("upstream %s: discovery chain applied (%d route(s), %d target(s))%s", up.destination_name,
                     len(table.routes), len(table.targets), " (default)" if table.default else "")

        params = {"compile-dc": up.datacenter} if up.datacenter else {}
        await self.api.watch(f"/v1/discovery-chain/{quote(up.destination_name, safe='')}", params, update, stop)

    async def _watch_target(self, up: Upstream, target: Target, stop: asyncio.Event) -> None:
        """The healthy instances of one chain target (a subset through its Filter and OnlyPassing, another
        service or dc). A target in another datacenter is reached through mesh gateways when its mode (the upstream's own
        MeshGateway, else the chain's: service-defaults, proxy-defaults) is local or remote, else directly;
        either way the TLS handshake names the target's SNI and expects its service's identity."""
        params: dict[str, str] = {}  # every health state: `healthy_instances` applies the subset's OnlyPassing
        predicate = subset_filter(target.filter)  # applied here, not by the agent: see subset_rows
        if target.datacenter and self.rt is not None and target.datacenter != self.rt.datacenter:
            params["dc"] = target.datacenter
        mode = self._target_path(up, target)

        def apply(instances: list[Instance]) -> None:
            rt = self.rt
            pool = rt.target_pools.get((up.key, target.id)) if rt is not None else None
            if rt is None or pool is None:
                return
            if {i.id for i in instances} != {i.id for i in pool.instances()}:
                log.info("upstream %s: target %s has %d healthy %s", up.destination_name, target.id,
                         len(instances), f"{mode} mesh gateway(s)" if mode in ("local", "remote") else "instance(s)")
            pool.set_instances(instances)
            known = self._target_known.pop((up.key, target.id), None)
            if known is not None:
                known.set()

        if mode in ("local", "remote"):
            return await self._follow_gateways(target.service, target.datacenter, mode == "local", target.sni,
                                               apply, stop)

        def update(entries: list[dict[str, Any]]) -> None:
            rt = self.rt
            if rt is not None:
                apply(healthy_instances(subset_rows(entries, predicate), target.service,
                                        target.datacenter or rt.datacenter, target.sni, target.only_passing))

        await self.api.watch(f"/v1/health/connect/{quote(target.service, safe='')}", params, update, stop)

    def _target_path(self, up: Upstream, target: Target) -> str:
        """How a chain target is reached: "local" or "remote" (through mesh gateways, for a target in another
        datacenter whose mode — the upstream's own MeshGateway, else the chain's — says so), else "direct"."""
        if not target.datacenter or self.rt is None or target.datacenter == self.rt.datacenter:
            return "direct"
        mode = up.mesh_gateway or target.mesh_gateway
        return mode if mode in ("local", "remote") else "direct"

    def _target_stats(self, key: str, tid: str) -> dict[str, str]:
        """Where a chain target is and the path to it (the link view of a sidecar's failover targets)."""
        rt = self.rt
        table = rt.chains.get(key) if rt is not None else None
        target = table.targets.get(tid) if table is not None else None
        up = rt.upstreams.get(key) if rt is not None else None
        if target is None or up is None:
            return {}
        path = self._target_path(up, target)
        return {"Datacenter": target.datacenter, "Via": "direct" if path == "direct" else f"{path} mesh gateway",
                "SNI": target.sni}

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
                                      http=rt.config.protocol in ("http", "http2", "grpc")))

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
        cfg = rt.config
        try:
            async with self._listening:
                await self._open_public(rt)
                for up in rt.config.upstreams:
                    await self._open_upstream(rt, up)
                if self.admin_port != -1 and self._admin is None:
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
            stopper = asyncio.ensure_future(stop.wait())
            reloader = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stopper, reloader}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            reloader.cancel()
        finally:
            await self._close_listeners(keep_admin=not stop.is_set())
            await rt.cancel_tasks()
            rt.http_connections.close()
            if rt.access_log is not None:
                rt.access_log.close()

    async def _open_public(self, rt: Runtime, replace: bool = False) -> None:
        """The public mTLS listener; L4 or HTTP is decided per connection by the current configuration."""
        assert self._server_ctx is not None
        cfg = rt.config
        old = self._servers.pop("public", None) if replace else None
        if old is not None:
            old.close()  # open connections stay; new ones go to the new address
        l4, l7, h2 = listeners.inbound_factory(rt), http.inbound_factory(rt), h2relay.inbound_factory(rt)
        listening = self._server_ctx.listening

        def protocol() -> TLSProtocol:
            mode = rt.config.protocol
            app = l7() if mode == "http" else h2() if mode in ("http2", "grpc") else l4()
            return TLSProtocol(listening, app, server_side=True, handshake_timeout=rt.config.handshake_timeout,
                               on_failure=rt.handshake_failed, scratch=rt.tls_scratch)

        server = await asyncio.get_running_loop().create_server(protocol, cfg.bind_address, cfg.bind_port,
                                                                reuse_address=True, backlog=1024)
        self._servers["public"] = server
        self.public_port = server.sockets[0].getsockname()[1]

    async def _open_upstream(self, rt: Runtime, up: Upstream, fatal: bool = True) -> None:
        """One upstream's local listener; each connection follows that upstream's current settings."""
        key = up.key

        def protocol() -> asyncio.Protocol:
            cur = rt.upstreams.get(key, up)
            if cur.protocol == "http":
                return http.UpstreamFront(rt, cur)
            if cur.protocol in ("http2", "grpc"):
                return h2relay.H2UpstreamFront(rt, cur)
            return listeners.UpstreamSide(rt, cur)

        try:
            server = await asyncio.get_running_loop().create_server(protocol, up.local_bind_address,
                                                                    up.local_bind_port, reuse_address=True,
                                                                    backlog=1024)
        except OSError as e:
            if fatal:
                raise
            log.error("upstream %s: cannot listen on %s:%d: %s", up.destination_name, up.local_bind_address,
                      up.local_bind_port, e.strerror or e)
            return
        self._servers[key] = server
        self.upstream_ports[up.destination_name] = server.sockets[0].getsockname()[1]

    async def _close_listeners(self, keep_admin: bool = False) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        if self._admin is not None and not keep_admin:
            await self._admin.cleanup()
            self._admin = None

    # ------------------------------------------------------------------ admin
    async def _start_admin(self) -> None:
        assert self.rt is not None
        where = self._admin_where
        if self.admin_port is None and where is not None:  # where the agent looks for it (admin_address.py)
            self.admin_address, self.admin_port = where.host, where.port
            if not where.configured:  # a default that is taken is skipped, not fatal
                try:
                    await self._start_admin()
                except OSError as e:
                    log.warning("no admin listener (metrics, stats): the default %s is taken (%s); set "
                                "Proxy.Config.envoy_prometheus_bind_addr or -admin-bind", where, e.strerror or e)
                    self.admin_port = -1
                return

        def current() -> Runtime:  # the runtime of the moment (a restart makes a new one)
            assert self.rt is not None
            return self.rt

        async def tap(request: web.Request) -> web.StreamResponse:
            return await stream_tap(request, current, lambda rt: self.rt is not rt or self._admin is None)

        self._admin, self.admin_port = await start_admin(self.admin_address, self.admin_port, {
            "/tap": tap, "/metrics": prometheus_route(lambda: current().metrics.prometheus()),
            "/stats": json_route(self.stats), "/refusals": json_route(lambda: [r.to_json() for r in current().refusals]),
            "/ready": ready_route(self.ready)})
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
            "UpstreamInstances": {p.name: {"Healthy": len(p), "Ejected": p.ejected(now), "Weights": p.weights()}
                                  for p in rt.pools.values()},
            "ChainTargets": {tid: {"Healthy": len(p), "Ejected": p.ejected(now), "Policy": p.policy,
                                   "Weights": p.weights(),
                                   **self._target_stats(key, tid)}
                             for (key, tid), p in rt.target_pools.items()},
            "UpstreamPolicies": {p.name: p.policy for p in [*rt.pools.values(), *rt.target_pools.values()]},
            "CircuitBreakers": {u.destination_name: {
                "MaxConnections": u.limits.max_connections, "MaxPendingRequests": u.limits.max_pending_requests,
                "MaxConcurrentRequests": u.limits.max_concurrent_requests, "Active": b.active,
                "Pending": len(b.pending), "Overflows": b.overflows, "Peak": b.peak}
                for u in rt.upstreams.values() if (b := rt.breakers.get(u.key)) is not None},
            "AccessLogLines": rt.access_log.lines if rt.access_log is not None else 0,
            "TapWatchers": len(rt.tap.subscribers) if rt.tap is not None else 0,
            "RateLimited": rt.rate_limiter.limited if rt.rate_limiter is not None else 0,
            "TracingSpans": {"Exported": rt.tracer.exported, "Dropped": rt.tracer.dropped,
                             "Queued": len(rt.tracer.queue), "ExportFailures": rt.tracer.failures}
            if rt.tracer is not None else None,
        })
        return snap


async def stream_tap(request: web.Request, current: Callable[[], Runtime],
                     gone: Callable[[Runtime], bool]) -> web.StreamResponse:
    """`GET /tap` on the admin listener: this proxy's requests as newline-delimited JSON while the caller
    reads (tap.py); a blank line every HEARTBEAT seconds when nothing passes, so a caller that went away is
    noticed and the watcher removed. Ends when the proxy starts over with a new runtime."""
    try:
        flt, rate = TapFilter.parse(request.query), parse_rate(request.query.get("max_rps"))
    except TapError as e:
        return web.Response(status=400, text=f"tap: {e}\n")
    rt = current()
    sub = Subscriber(flt, rate, time.monotonic())
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    rt.watch(sub)
    log.info("tap: a watcher started (%s)", request.query_string or "everything")
    try:
        await resp.write(b"\n")
        while not gone(rt):
            try:
                await asyncio.wait_for(sub.wake.wait(), TAP_HEARTBEAT)
            except TimeoutError:
                await resp.write(b"\n")
                continue
            batch = sub.take()
            if batch:
                await resp.write(b"".join(orjson.dumps(ev) + b"\n" for ev in batch))
    except (ConnectionResetError, RuntimeError):  # the watcher went away
        pass
    finally:
        rt.unwatch(sub)
        log.info("tap: a watcher ended")
    return resp


def _tune_gc() -> None:
    """What start-up allocated lives as long as the proxy: keep it out of the collector's sight, and
    collect the young generation less often (every forwarded chunk allocates short-lived objects)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
