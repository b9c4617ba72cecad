"""The asyncio shell of k8s-sync: ownership, informers, blocking queries, and the two reconcile loops.

Start-up: claim this syncer's Consul node (a KV lock held by a TTL session; refuse to start while another
live syncer holds it), then list both sides. Nothing is deleted, on either side, before both sides have been
listed once. After that every change is written as soon as it is seen (a short settle lets a burst gather),
only the difference, in /v1/txn transactions of up to 64 instances; with nothing changing nothing is written
(the session renewals that keep the liveness check passing are not Raft writes). Every
`consul_write_interval` the whole desired state is recomputed and diffed again, which also repairs
anything changed behind the syncer's back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from . import plan as planmod
from . import to_consul, to_k8s
from .config import Options
from .consul_api import ConsulAPI
from .errors import ConfigError, ConsulError, KubeError, OwnershipError
from .informer import Informer
from .metrics import Metrics

log = logging.getLogger("proconsul.k8s_sync")
Obj = dict[str, Any]


def _op_instance(op: Obj) -> str:
    """The instance ID a Service or Check operation is about ("" for node-level operations)."""
    kind, body = next(iter(op.items()))
    if kind == "Service":
        return body["Service"].get("ID", "")
    if kind == "Check":
        return body["Check"].get("ServiceID", "")
    return ""


def owner_key(node: str) -> str:
    return f"proconsul/k8s-sync/{node}/owner"


class Syncer:
    def __init__(self, opts: Options, consul: ConsulAPI, kube_client: Any, *, rng: random.Random | None = None) -> None:
        from kubernetes_asyncio import client as k8s

        self.opts, self.consul = opts, consul
        self.core = k8s.CoreV1Api(kube_client)
        self.discovery = k8s.DiscoveryV1Api(kube_client)
        self.rng = rng or random.Random()
        self.metrics = Metrics()
        self.session_id = ""
        self.dirty = asyncio.Event()
        self.k8s_dirty = asyncio.Event()
        self.view = planmod.CatalogView()
        self.view_synced = {"services": False, "checks": False}
        self.view_changed = True
        self.write_floor = {"services": 0, "checks": 0}
        self.desired: dict[str, to_consul.Instance] = {}
        self.catalog: dict[str, list[str]] | None = None
        self.healthy: dict[str, list[tuple[str, int]]] = {}
        self.health_tasks: dict[str, asyncio.Task[None]] = {}
        self.informers: list[Informer] = []
        self.k8s_informers: list[Informer] = []
        self.ready = False
        self.reconciles = 0
        ns = opts.k8s_source_namespace
        # Incremental state of the to-Consul side: what each Service calls for, recomputed only when it or
        # its EndpointSlices (or, for NodePort, the nodes) change.
        self.by_service: dict[tuple[str, str], list[to_consul.Instance]] = {}
        self.slices_by_owner: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.dirty_services: set[tuple[str, str]] = set()
        self.everything_dirty = True
        self.carry: set[str] = set()  # instance IDs planned but held back for a fuller transaction
        self.last_event = 0.0
        self.partial_since = 0.0
        if opts.to_consul:
            self.services = self._informer("services", self.core.list_namespaced_service if ns
                                           else self.core.list_service_for_all_namespaces, ns, self._service_event)
            self.slices = self._informer("endpointslices", self.discovery.list_namespaced_endpoint_slice if ns
                                         else self.discovery.list_endpoint_slice_for_all_namespaces, ns,
                                         self._slice_event)
            self.nodes = self._informer("nodes", self.core.list_node, "", self._node_event)
            self.informers = [self.services, self.slices, self.nodes]
        if opts.to_k8s:
            sel = f"{to_k8s.OWNER_LABEL}={opts.consul_node_name}"
            wns = opts.k8s_write_namespace

            def mark(*_: Any) -> None:
                self.k8s_dirty.set()

            self.k8s_informers = [
                Informer("written services", lambda **kw: self.core.list_namespaced_service(wns, **kw), mark,
                         label_selector=sel, rng=self.rng),
                Informer("written endpointslices",
                         lambda **kw: self.discovery.list_namespaced_endpoint_slice(wns, **kw), mark,
                         label_selector=sel, rng=self.rng)]

    def _informer(self, name: str, call: Any, namespace: str, changed: Any) -> Informer:
        bound = (lambda **kw: call(namespace, **kw)) if namespace else call
        return Informer(name, bound, changed, rng=self.rng)

    def _touch(self, key: tuple[str, str] | None) -> None:
        if key is None:
            self.everything_dirty = True
        else:
            self.dirty_services.add(key)
        self.last_event = time.monotonic()
        self.dirty.set()

    def _service_event(self, key: tuple[str, str] | None, before: Obj | None, after: Obj | None) -> None:
        self._touch(key)

    def _slice_event(self, key: tuple[str, str] | None, before: Obj | None, after: Obj | None) -> None:
        if key is None:  # a full list: rebuild the owner index
            self.slices_by_owner = {}
            for k, obj in self.slices.cache.items():
                owner = to_consul.slice_owner(obj)
                if owner:
                    self.slices_by_owner.setdefault(owner, {})[k] = obj
            self._touch(None)
            return
        for obj in (before, after):
            owner = to_consul.slice_owner(obj) if obj else None
            if owner:
                self.slices_by_owner.setdefault(owner, {}).pop(key, None)
                self._touch(owner)
        owner = to_consul.slice_owner(after) if after else None
        if owner:
            self.slices_by_owner.setdefault(owner, {})[key] = after  # type: ignore[assignment]

    def _node_event(self, key: tuple[str, str] | None, before: Obj | None, after: Obj | None) -> None:
        if key is not None and before is not None and after is not None and \
                (before.get("status") or {}).get("addresses") == (after.get("status") or {}).get("addresses"):
            return  # node status heartbeats: nothing the syncer reads changed
        for k, svc in self.services.cache.items():  # only NodePort Services use node addresses
            if (svc.get("spec") or {}).get("type") == "NodePort":
                self.dirty_services.add(k)
        self.dirty.set()

    # ------------------------------------------------------------------ ownership
    async def claim(self) -> None:
        """Take this syncer's node: refuse while another live syncer holds it."""
        node, tag = self.opts.consul_node_name, self.opts.consul_k8s_tag
        held = await self.consul.kv_get(owner_key(node))
        if held and held.get("Session"):
            info = await self.consul.session_info(held["Session"])
            if info is not None:
                raise OwnershipError(self._owned_message(held))
        _, row = await self.consul.get(f"/v1/catalog/node/{node}")
        if not row or (row.get("Node") or {}).get("Meta") != planmod.node_body(node, tag)["Meta"]:
            await self.consul.txn([{"Node": {"Verb": "set", "Node": planmod.node_body(node, tag)}}])
            self.metrics.inc("proconsul_k8s_sync_txn_total")
        self.session_id = await self.consul.session_create(node, f"k8s-sync {node} ({tag})", self.opts.session_ttl)
        identity = {"host": socket.gethostname(), "pid": os.getpid(), "tag": tag, "started": int(time.time())}
        if not await self.consul.kv_lock(owner_key(node), self.session_id, orjson.dumps(identity)):
            await self.consul.session_destroy(self.session_id)
            raise OwnershipError(self._owned_message(await self.consul.kv_get(owner_key(node)) or {}))
        log.info("claimed Consul node %s for tag %s (session %s)", node, tag, self.session_id)

    def _owned_message(self, held: Obj) -> str:
        try:
            import base64

            who = json.loads(base64.b64decode(held.get("Value") or "") or b"{}")
        except ValueError:
            who = {}
        desc = f"pid {who.get('pid')} on {who.get('host')}, tag {who.get('tag')!r}" if who else "unknown holder"
        return (f"Consul node {self.opts.consul_node_name!r} is owned by a live syncer (session "
                f"{held.get('Session')}, {desc}): stop it, or give this one its own --consul-node-name")

    async def release(self) -> None:
        """On a clean stop: let a successor claim the node at once (the session runs out by itself, and with it
        the liveness check, unless a successor registers its own first)."""
        try:
            await self.consul.kv_lock(owner_key(self.opts.consul_node_name), self.session_id, b"", acquire=False)
        except ConsulError as e:
            log.warning("could not release the node lock: %s", e)

    async def heartbeat(self) -> None:
        from proconsul.k8s_sync.durations import seconds

        period = max(seconds(self.opts.session_ttl) / 2, 1.0)
        while True:
            await asyncio.sleep(period)
            try:
                if await self.consul.session_renew(self.session_id):
                    self.metrics.set("consul_sync_catalog_status", 1)
                    continue
                log.warning("session %s was lost (expired while the agent was unreachable?): claiming again",
                            self.session_id)
                await self.claim()
                self.dirty.set()  # the liveness check names the new session
            except ConsulError as e:
                self.metrics.set("consul_sync_catalog_status", 0)
                log.warning("session renewal failed: %s", e)

    # ------------------------------------------------------------------ catalog view (blocking queries)
    def _on_services(self, index: int, body: Any) -> None:
        if index < self.write_floor["services"]:
            return  # older than our own last write: our optimistic view is newer
        body = body or {}
        self.view.node = body.get("Node")
        self.view.services = {s["ID"]: s for s in body.get("Services") or []}
        self.view_synced["services"] = True
        self.view_changed = True
        self.dirty.set()

    def _on_checks(self, index: int, body: Any) -> None:
        if index < self.write_floor["checks"]:
            return
        self.view.checks = {c["CheckID"]: c for c in body or []}
        self.view_synced["checks"] = True
        self.view_changed = True
        self.dirty.set()

    def _status(self, ok: bool) -> None:
        self.metrics.set("consul_sync_catalog_status", 1 if ok else 0)

    async def follow_view(self, path: str, handle: Any, min_interval: float = 0.05) -> None:
        await self.consul.follow(path, handle, min_interval=min_interval, on_status=self._status)

    # ------------------------------------------------------------------ to Consul
    def both_listed(self) -> bool:
        return all(i.synced.is_set() for i in self.informers) and all(self.view_synced.values())

    def _apply_optimistically(self, txn: list[Obj], result: Obj) -> None:
        for op in txn:
            kind, body = next(iter(op.items()))
            if kind == "Service":
                if body["Verb"] == "delete":
                    self.view.services.pop(body["Service"]["ID"], None)
                    for cid in [c for c, row in self.view.checks.items() if row.get("ServiceID") ==
                                body["Service"]["ID"]]:
                        del self.view.checks[cid]
                else:
                    self.view.services[body["Service"]["ID"]] = dict(body["Service"])
            elif kind == "Check":
                if body["Verb"] == "delete":
                    self.view.checks.pop(body["Check"]["CheckID"], None)
                else:
                    self.view.checks[body["Check"]["CheckID"]] = dict(body["Check"])
            elif kind == "Node":
                self.view.node = dict(body["Node"])
        for r in (result or {}).get("Results") or []:
            kind, row = next(iter(r.items()))
            table = "checks" if kind == "Check" else "services"
            self.write_floor[table] = max(self.write_floor[table], int(row.get("ModifyIndex") or 0))

    def _update_desired(self) -> set[str] | None:
        """Bring `desired` up to date for the Services that changed; the instance IDs to compare (None: all)."""
        o = self.opts
        addrs = to_consul.node_addresses(self.nodes.cache)
        if self.everything_dirty:
            self.by_service = {}
            for key, svc in self.services.cache.items():
                self.by_service[key] = to_consul.service_instances(
                    svc, list(self.slices_by_owner.get(key, {}).values()), addrs, o)
            self.desired = {i.id: i for insts in self.by_service.values() for i in insts}
            self.everything_dirty = False
            self.dirty_services.clear()
            return None
        changed: set[str] = set()
        for key in self.dirty_services:
            for inst in self.by_service.pop(key, []):
                self.desired.pop(inst.id, None)
                changed.add(inst.id)
            svc = self.services.cache.get(key)
            if svc is not None:
                insts = to_consul.service_instances(svc, list(self.slices_by_owner.get(key, {}).values()), addrs, o)
                self.by_service[key] = insts
                for inst in insts:
                    self.desired[inst.id] = inst
                    changed.add(inst.id)
        self.dirty_services.clear()
        return changed

    async def reconcile_consul(self) -> None:
        if not self.both_listed():
            return
        o = self.opts
        changed = self._update_desired()
        if self.view_changed:
            changed, self.view_changed = None, False  # the catalog changed under us: compare everything
        candidates = None if changed is None else changed | self.carry
        self.metrics.set("proconsul_k8s_sync_instances", len(self.desired))
        plan = planmod.plan_to_consul(self.desired, self.view, o.consul_node_name, o.consul_k8s_tag,
                                      self.session_id, may_reap=True, candidates=candidates)
        self.carry = set()
        txns = plan.txns
        now = time.monotonic()
        busy = now - self.last_event < max(o.settle * 5, 0.25)
        if txns and busy and len(txns[-1]) < planmod.MAX_TXN_OPS - 1 and \
                (not self.partial_since or now - self.partial_since < 2.0):
            # Kubernetes is still streaming changes: hold the partial last transaction back so that it fills up
            # (at most two seconds), instead of spending a Raft write on a few instances.
            held = txns.pop()
            self.carry = {_op_instance(op) for op in held} - {""}
            self.partial_since = self.partial_since or now
            self.dirty.set()
        else:
            self.partial_since = 0.0
        registers = deregisters = 0
        for txn in txns:
            try:
                result = await self.consul.txn(txn)
            except ConsulError as e:
                self.metrics.inc("consul_sync_catalog_to_consul_register_error")
                self.view_changed = True  # re-read and compare everything on the next pass
                log.error("catalog write failed, will retry: %s", e)
                raise
            self.metrics.inc("proconsul_k8s_sync_txn_total")
            self._apply_optimistically(txn, result)
            for op in txn:
                kind, body = next(iter(op.items()))
                if kind == "Service":
                    if body["Verb"] == "delete":
                        deregisters += 1
                    else:
                        registers += 1
        if txns:
            self.metrics.inc("consul_sync_catalog_to_consul_register", registers)
            self.metrics.inc("consul_sync_catalog_to_consul_deregister", deregisters)
            log.info("catalog: %d instance(s) registered or updated, %d deregistered, in %d transaction(s)%s",
                     registers, deregisters, len(txns), f" ({len(self.carry)} held for a fuller one)"
                     if self.carry else "")

    async def consul_loop(self) -> None:
        delay = 0.1
        next_full = time.monotonic() + self.opts.consul_write_interval
        while True:
            timeout = max(next_full - time.monotonic(), 0)
            try:
                await asyncio.wait_for(self.dirty.wait(), timeout)
            except TimeoutError:
                next_full = time.monotonic() + self.opts.consul_write_interval
                self.everything_dirty = True  # the periodic full re-check
            await asyncio.sleep(self.opts.settle)
            self.dirty.clear()
            try:
                await self.reconcile_consul()
                self.reconciles += 1
                delay = 0.1
            except ConsulError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.dirty.set()

    # ------------------------------------------------------------------ to Kubernetes
    def _on_catalog(self, _: int, body: Any) -> None:
        self.catalog = {name: list(tags or []) for name, tags in (body or {}).items()}
        if self.opts.to_k8s_mode == "endpoints":
            wanted = {n for n, tags in self.catalog.items() if self.opts.consul_k8s_tag not in tags}
            for name in set(self.health_tasks) - wanted:
                self.health_tasks.pop(name).cancel()
                self.healthy.pop(name, None)
            for name in wanted - set(self.health_tasks):
                self.health_tasks[name] = asyncio.ensure_future(self._follow_health(name))
        self.k8s_dirty.set()

    async def _follow_health(self, name: str) -> None:
        from urllib.parse import quote

        def handle(_: int, rows: Any) -> None:
            self.healthy[name] = [((r["Service"].get("Address") or r["Node"].get("Address")), r["Service"]["Port"])
                                  for r in rows or []]
            self.k8s_dirty.set()

        await self.follow_view(f"/v1/health/service/{quote(name)}?passing{self._dc_query('&')}", handle)

    def _dc_query(self, sep: str) -> str:
        """`?dc=…` (or `&dc=…`) for reads of the catalog mirrored into Kubernetes, when it is another datacenter's."""
        dc = self.opts.to_k8s_datacenter
        return f"{sep}dc={dc}" if dc else ""

    def k8s_listed(self) -> bool:
        return self.catalog is not None and all(i.synced.is_set() for i in self.k8s_informers)

    async def reconcile_k8s(self) -> None:
        if not self.k8s_listed():
            return
        o = self.opts
        assert self.catalog is not None
        desired = to_k8s.desired_objects(self.catalog, self.healthy, node=o.consul_node_name, tag=o.consul_k8s_tag,
                                         domain=o.consul_domain, prefix=o.k8s_service_prefix,
                                         namespace=o.k8s_write_namespace, mode=o.to_k8s_mode,
                                         datacenter=o.to_k8s_datacenter)
        actual: dict[tuple[str, str], Obj] = {}
        for inf, resource in zip(self.k8s_informers, ("services", "endpointslices"), strict=True):
            for (_, name), obj in inf.cache.items():
                actual[(resource, name)] = obj
        acts = to_k8s.plan_to_k8s(desired, actual, o.consul_node_name, may_reap=True)
        if acts.empty:
            return
        ns = o.k8s_write_namespace
        for obj in acts.create:
            await self._k8s_write("create", obj, ns)
        for obj in acts.update:
            have = actual.get(("services" if obj["kind"] == "Service" else "endpointslices", obj["metadata"]["name"]))
            if obj["kind"] == "Service" and have and (have.get("spec") or {}).get("type") != obj["spec"]["type"]:
                await self._k8s_write("delete", obj, ns)  # a type change is a replacement
                await self._k8s_write("create", obj, ns)
            else:
                await self._k8s_write("patch", obj, ns)
        for resource, name in acts.delete:
            await self._k8s_write("delete", {"kind": "Service" if resource == "services" else "EndpointSlice",
                                             "metadata": {"name": name}}, ns)
        log.info("kubernetes: %d created, %d updated, %d deleted in namespace %s", len(acts.create),
                 len(acts.update), len(acts.delete), ns)

    async def _k8s_write(self, verb: str, obj: Obj, ns: str) -> None:
        svc = obj["kind"] == "Service"
        name = obj["metadata"]["name"]
        api_name = "service" if svc else "endpoint_slice"
        api = self.core if svc else self.discovery
        if verb == "create":
            call = getattr(api, f"create_namespaced_{api_name}")(ns, obj, _preload_content=False)
        elif verb == "patch":
            body = dict(obj)
            if svc:
                body["spec"] = dict(obj["spec"], externalName=obj["spec"].get("externalName"))
            call = getattr(api, f"patch_namespaced_{api_name}")(name, ns, body, _preload_content=False,
                                                                  _content_type="application/merge-patch+json")
        else:
            call = getattr(api, f"delete_namespaced_{api_name}")(name, ns, _preload_content=False)
        try:
            resp = await call
            status, text = resp.status, (await resp.read())[:300].decode(errors="replace")
            resp.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            status, text = 0, f"{type(e).__name__}: {e}"
        if status < 300 or (verb == "delete" and status == 404):
            self.metrics.inc("consul_sync_catalog_to_k8s_deregister" if verb == "delete"
                             else "consul_sync_catalog_to_k8s_register")
            return
        self.metrics.inc("consul_sync_catalog_to_k8s_error")
        if status == 409 and verb == "create":
            log.warning("kubernetes: %s %s/%s exists and is not ours (no %s label): left alone", obj["kind"], ns, name,
                        to_k8s.OWNER_LABEL)
            return
        raise KubeError(f"kubernetes: {verb} {obj['kind']} {ns}/{name}: {status} {text}")

    async def k8s_loop(self) -> None:
        delay = 0.1
        while True:
            await self.k8s_dirty.wait()
            await asyncio.sleep(self.opts.settle)
            self.k8s_dirty.clear()
            try:
                await self.reconcile_k8s()
                delay = 0.1
            except KubeError as e:
                log.error("%s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.k8s_dirty.set()

    # ------------------------------------------------------------------ health and metrics
    def app(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def ready(_: web.Request) -> web.Response:
            ok = (not self.opts.to_consul or self.both_listed()) and (not self.opts.to_k8s or self.k8s_listed())
            return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

        async def metrics(_: web.Request) -> web.Response:
            self.metrics.counters["proconsul_k8s_sync_relist_total"] = sum(
                i.relists for i in self.informers + self.k8s_informers)
            return web.Response(text=self.metrics.prometheus(), content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/health/ready", ready)
        app.router.add_get("/metrics", metrics)
        return app

    # ------------------------------------------------------------------ run
    async def _listen(self) -> web.AppRunner | None:
        """Serve /health and /metrics; a listen address that cannot be bound is a ConfigError (one line)."""
        if self.opts.listen in ("", "off"):
            return None
        host, _, port = self.opts.listen.rpartition(":")
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, int(port)).start()
        except OSError as e:
            await runner.cleanup()
            raise ConfigError(f"--listen {self.opts.listen}: {e.strerror or e} (another process has it? "
                              "choose another address, or off)") from None
        return runner

    async def run(self, stop: asyncio.Event) -> None:
        # Listen first: a syncer that cannot serve its health endpoint stops before it claims the node (a claim
        # left behind would keep the next start out until the session's TTL ran out).
        runner = await self._listen()
        try:
            await self.claim()
        except BaseException:
            if runner is not None:
                await runner.cleanup()
            raise
        if runner is not None:
            log.info("health and metrics on http://%s/health and /metrics", self.opts.listen)
        node = self.opts.consul_node_name
        tasks = [self.heartbeat()]
        if self.opts.to_consul:
            tasks += [i.run() for i in self.informers]
            # Our own writes keep the view current; these blocking queries catch changes made behind our back, at
            # most once a second (each answer is the whole node, thousands of rows).
            tasks += [self.follow_view(f"/v1/catalog/node-services/{node}", self._on_services, 1.0),
                      self.follow_view(f"/v1/health/node/{node}", self._on_checks, 1.0), self.consul_loop()]
        if self.opts.to_k8s:
            tasks += [i.run() for i in self.k8s_informers]
            tasks += [self.follow_view(f"/v1/catalog/services{self._dc_query('?')}", self._on_catalog), self.k8s_loop()]
        running = [asyncio.ensure_future(t) for t in tasks]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait([*running, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in [*running, stopper, *self.health_tasks.values()]:
                t.cancel()
            await asyncio.gather(*running, stopper, *self.health_tasks.values(), return_exceptions=True)
            await self.release()
            if runner is not None:
                await runner.cleanup()
