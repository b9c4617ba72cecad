"""The agent process: one object that owns every listener and background task.

`Agent.run()` starts everything under one asyncio.TaskGroup — the HTTP API, the DNS server, the
server role's leader duties, anti-entropy — so start-up and shutdown are one story: cancel the
group (SIGINT/SIGTERM, or `/v1/agent/leave`) and everything stops, in order, with nothing left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proconsul.agent.acl.resolver import Resolver
from proconsul.agent.acl.state import ACLState, leader_setup
from proconsul.agent.acl.tokens import load_agent_tokens, save_agent_tokens
from proconsul.agent.api.read_cache import ReadCache
from proconsul.agent.api.tls import HTTPSConfigError, https_context
from proconsul.agent.checks.agent_tls import CONTEXT_KEY as AGENT_TLS
from proconsul.agent.checks.kinds import standard_kinds
from proconsul.agent.checks.manager import CheckManager
from proconsul.agent.checks.runner import DEFAULT_OUTPUT_MAX
from proconsul.agent.cluster.caller import acting_as
from proconsul.agent.cluster.cluster import Cluster
from proconsul.agent.cluster.errors import ClusterError
from proconsul.agent.cluster.remote import RemoteBackend
from proconsul.agent.cluster.rpc_acl import RPCGuard
from proconsul.agent.cluster.server import ServerRole, StartingReplicator
from proconsul.agent.config.load import finalize, load_config
from proconsul.agent.config.model import AgentConfig
from proconsul.agent.connect import entry_graph
from proconsul.agent.local import sidecar
from proconsul.agent.local.definitions import DefinitionError
from proconsul.agent.local.events import EventBuffer, accepts
from proconsul.agent.local.remote_exec import EVENT_NAME as REXEC_EVENT
from proconsul.agent.local.remote_exec import Runner as RemoteExecRunner
from proconsul.agent.local.state import LocalState, service_row
from proconsul.agent.observe.logs import LogMonitor, level_number
from proconsul.agent.observe.telemetry import Telemetry
from proconsul.catalog.commands import KVOp
from proconsul.catalog.queries import get_query
from proconsul.catalog.store import ACL_TABLES, CRITICAL, StateStore

log = logging.getLogger("proconsul.agent")


# Consul's metric for each kind of write (a timing sample in milliseconds).
COMMAND_METRICS = {"KVOp": "kvs.apply", "Register": "catalog.register", "Deregister": "catalog.deregister",
                   "SessionCreate": "session.apply", "SessionDestroy": "session.apply", "Txn": "txn.apply",
                   "TableSet": "config_entry.apply", "TableDelete": "config_entry.apply"}


class AgentError(Exception):
    """The agent cannot start or carry out an operation; the message says why."""


class Agent:
    def __init__(self, config: AgentConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.started = time.time()
        self.store: StateStore | None = None
        self.server: ServerRole | None = None
        if config.server:
            self.store = StateStore(config.datacenter)
            self.store.set_table_check(entry_graph.TABLE, entry_graph.config_entry_check(config.datacenter))
            # Until Raft is up (Cluster.start), this server has no leader and serves nothing locally.
            self.server = ServerRole(self.store, StartingReplicator(), rng=self.rng)
        try:
            self.cluster = Cluster(self)
        except ClusterError as e:
            raise AgentError(str(e)) from None
        self.backend: Any = self.server if self.server is not None else RemoteBackend(self.cluster.call_any_server)
        self.read_cache = ReadCache(self.store) if self.store is not None else None
        self.acl_state = ACLState(self.backend)
        self.acl_tokens: dict[str, str] = load_agent_tokens(config)  # acl.tokens, and /v1/agent/token/:type
        self.acl: Resolver | None = self._acl_resolver() if config.acl.enabled else None
        if self.acl is not None and self.store is not None:  # every RPC is checked against its token
            self.cluster.rpc.guard = RPCGuard(self.acl, self.store)
            resolver = self.acl

            async def acl_resolve(args: dict[str, Any]) -> Any:
                return list(await resolver.bundle(str(args.get("secret") or ""), not args.get("from_follower")))
            self.cluster.rpc.register("acl.resolve", acl_resolve)
        self.node = {
            "ID": config.node_id,
            "Node": config.node_name,
            "Address": config.advertise,
            "Datacenter": config.datacenter,
            "TaggedAddresses": {"lan": config.advertise, "lan_ipv4": config.advertise,
                                "wan": config.advertise_addr_wan or config.advertise,
                                "wan_ipv4": config.advertise_addr_wan or config.advertise,
                                **config.tagged_addresses},
            "Meta": dict(config.node_meta, **{"consul-network-segment": ""}),
        }
        self.service_tokens: dict[str, str] = {}  # service ID -> the token it was registered with (ACLs on)
        self.local = LocalState(self.node, self._sync_apply if self.acl is not None else self.backend.apply,
                                self._read_own_node,
                                check_update_interval=config.check_update_interval,
                                sync_interval=config.sync_interval,
                                data_dir=None if config.dev else config.data_dir, rng=self.rng,
                                cluster_size=lambda: len(self.members()))
        self.checks = CheckManager(self._check_result, standard_kinds(), self.rng)
        self.checks.context["agent"] = self
        if config.enable_agent_tls_for_checks:  # HTTP/TCP+TLS/gRPC checks present the agent's certificate
            self.checks.context[AGENT_TLS] = config.tls
        self.events = EventBuffer(config.node_name)
        self.cluster.lan.on_event = self._membership_event
        self.http_routes: list[web.RouteTableDef] = []  # routes of optional components (Connect, UI)
        self.connect: Any = None
        self.dns_handler: Any = None
        self.listeners: list[Callable[[Agent, asyncio.Event], Any]] = []  # extra components (DNS, …)
        # Components' sockets, bound before the cluster and HTTP start: a port in use is one clear
        # error at start-up, and an agent that answers HTTP has every listener up.
        self.binders: list[Callable[[], Awaitable[None]]] = []
        self.http_port: int | None = None
        self.https_port: int | None = None
        self._https_context: Any = None
        if config.https_port >= 0:  # checked before anything starts: unusable files are one line, at once
            try:
                self._https_context = https_context(config.https_tls)
            except HTTPSConfigError as e:
                raise AgentError(str(e)) from None
        self.auto_encrypt: Any = None
        if config.auto_encrypt_tls and self.cluster.tls.client is not None:
            from proconsul.agent.connect.auto_encrypt import AutoEncryptClient

            self.auto_encrypt = AutoEncryptClient(
                node=config.node_name, node_id=config.node_id, datacenter=config.datacenter,
                data_dir=config.data_dir, client_ctx=self.cluster.tls.client,
                call=lambda method, args: self.cluster.call_any_server(method, args, 10.0),
                reset=self.cluster.pool.close, dns_san=config.auto_encrypt_dns_san)
        self.ready = asyncio.Event()
        self.log_monitor: LogMonitor | None = None  # /v1/agent/monitor's subscribers, while running
        self.telemetry = Telemetry()
        if self.server is not None:
            self.server.observe = self._observe_write
        self._stop = asyncio.Event()
        self.fatal = ""  # why the agent stopped itself (give_up); "" for a normal stop
        self._exec_tasks: set[asyncio.Task[Any]] = set()  # remote exec jobs running here
        self._local_changed = asyncio.Event()
        self._leaving = False
        self._config_services: set[str] = set()
        self._config_checks: set[str] = set()
        self.loopback: Any = None  # answers requests forwarded from other datacenters (servers)
        if self.server is not None:
            from proconsul.agent.api.forward import LoopbackClient

            self.loopback = LoopbackClient(self)
            self.cluster.rpc.register("http.serve", self.loopback.serve)
        _load_components(self)

    def _acl_resolver(self) -> Resolver:
        cfg = self.config.acl
        store = self.store
        query = get_query("acl.token_bundle")

        async def fetch(secret: str) -> tuple[int, dict[str, Any]]:
            with acting_as(secret):  # whoever holds a secret may resolve it
                index, bundle = await self.cluster.call_any_server("acl.resolve", {"secret": secret}, 10.0)
            return index, bundle

        async def fetch_remote(secret: str) -> tuple[int, dict[str, Any]]:
            with acting_as(secret):  # a secondary's server asks the primary for a token it has not replicated
                index, bundle = await self.cluster.forward_dc(self.config.primary_datacenter, "acl.resolve",
                                                              {"secret": secret}, 10.0, True)
            return index, bundle

        def fetch_local(secret: str) -> tuple[int, dict[str, Any]]:
            return query.run(store, {"secret": secret})  # a server resolves from its own replica

        async def fetch_leader(secret: str) -> tuple[int, dict[str, Any]] | None:
            leader = self.cluster.leader_address()
            if self.cluster.is_leader() or not leader:
                return None
            with acting_as(secret):  # a follower's replica may lag a token the leader has just written
                index, bundle = await self.cluster.forward(leader, "acl.resolve",
                                                         {"secret": secret, "from_follower": True}, 5.0)
            return index, bundle

        resolver = Resolver(default_allow=cfg.default_policy == "allow", down_policy=cfg.down_policy,
                            datacenter=self.config.datacenter, token_ttl=cfg.token_ttl, fetch=fetch,
                            clock=time.monotonic, wall=time.time, fetch_local=fetch_local if store is not None else None,
                            fetch_remote=fetch_remote if self.cluster.secondary else None,
                            fetch_leader=fetch_leader if store is not None and not self.cluster.secondary else None)
        if store is not None:
            acl_tables = frozenset(ACL_TABLES)

            def on_change(changes: Any) -> None:
                if not acl_tables.isdisjoint(changes.tables):
                    resolver.changed()
            store.subscribe(on_change)
        return resolver

    async def _sync_apply(self, cmd: Any) -> Any:
        """Anti-entropy's writes with ACLs on, as Consul's agent makes them: the node with the agent token
        (else the default one), each service with the token it was registered with (else the agent's). A
        write the token may not make is skipped with a warning instead of failing the whole sync round."""
        from proconsul.agent.acl.errors import ACLNotFound, PermissionDenied
        from proconsul.catalog import commands as c

        assert self.acl is not None
        agent_token = self.own_token()
        node = self.config.node_name
        wants: list[tuple[str, str, str]] = []  # (token, kind, name)
        sid = ""
        if isinstance(cmd, c.Register):
            if not cmd.skip_node_update:
                wants.append((agent_token, "node", node))
            if cmd.service is not None:
                sid = cmd.service.get("ID", "")
                wants.append((self.service_tokens.get(sid, agent_token), "service", cmd.service["Service"]))
            for chk in cmd.checks:
                csid = chk.get("ServiceID") or ""
                svc = self.local.service(csid) if csid else None
                if svc is not None:
                    wants.append((self.service_tokens.get(csid, agent_token), "service", svc["Service"]))
                elif not csid:
                    wants.append((agent_token, "node", node))
        elif isinstance(cmd, c.Deregister):
            wants.append((self.service_tokens.get(cmd.service_id, agent_token), "node", node) if not cmd.service_id
                         else (self.service_tokens.get(cmd.service_id, agent_token), "service-id", cmd.service_id))
        for token, kind, name in wants:
            whose = "service's" if kind.startswith("service") and sid in self.service_tokens else "agent"
            try:
                authz = await self.acl.resolve(token)
            except ACLNotFound:
                log.warning("anti-entropy: %s %s not synced: the %s token matches no ACL token", kind, name, whose)
                return None
            if kind == "service-id":
                continue  # the catalog's copy is ours to remove; its name is unknown here once deregistered
            if not authz.allowed(kind, name, "write"):
                what = "Node info update" if kind == "node" else f"Service {name!r} sync"
                hint = "; this agent has no agent token: set acl.tokens.agent" if not token else ""
                log.warning("anti-entropy: %s blocked by ACLs (the %s token lacks %s:write%s)", what, whose, kind,
                            hint)
                return None
        # The server checks again, against the token the write carries (the service's, else the agent's).
        token = wants[-1][0] if wants else agent_token
        try:
            with acting_as(token):
                return await self.backend.apply(cmd)
        except (PermissionDenied, ACLNotFound) as e:
            log.warning("anti-entropy: the servers refused %s: %s", type(cmd).__name__, e)
            return None

    def own_token(self) -> str:
        """The token of the agent's own work (anti-entropy, Connect's watches): acl.tokens.agent, else default."""
        return self.acl_tokens.get("agent") or self.acl_tokens.get("default", "")

    def dns_may_read(self, kind: str, name: str) -> bool:
        """What DNS may answer: the agent's `dns` token, else its `default` token, else anonymous (Consul)."""
        assert self.acl is not None
        secret = self.acl_tokens.get("dns") or self.acl_tokens.get("default", "")
        return self.acl.resolve_local(secret).allowed(kind, name, "read")

    def set_agent_token(self, kind: str, secret: str) -> None:
        """/v1/agent/token/:type: replace one of the agent's tokens (persisted with enable_token_persistence)."""
        self.acl_tokens[kind] = secret
        if self.acl is not None:
            self.acl.invalidate()
        if kind in ("dns", "default") and self.dns_handler is not None and hasattr(self.dns_handler, "invalidate"):
            self.dns_handler.invalidate(None)  # DNS answers with these tokens: cached answers may differ now
        if self.config.acl.enable_token_persistence and self.config.data_dir and not self.config.dev:
            save_agent_tokens(self.config.data_dir, self.acl_tokens, self.config.acl.tokens)

    # ------------------------------------------------------------------ identity & status
    def known_leader(self) -> bool:
        if self.server is None:
            return self.backend.known_leader
        return bool(self.server.replicator.leader)

    def last_contact(self) -> float:
        if self.server is None:
            return self.backend.last_contact
        return self.server.replicator.last_contact()

    def is_leader(self) -> bool:
        return self.server is not None and self.server.replicator.is_leader

    async def wait_leadership(self, stop: asyncio.Event) -> bool:
        """Wait until this server leads (True) or `stop` is set (False)."""
        if self.is_leader():
            return True
        leading = asyncio.ensure_future(self.cluster.leading.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({leading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leading.cancel()
            stopping.cancel()
        return self.is_leader() and not stop.is_set()

    async def leader_address(self) -> str:
        if self.server is None:
            return str(await self.cluster.call_any_server("status.leader", {}, timeout=5.0))
        return self.server.replicator.leader

    async def peer_addresses(self) -> list[str]:
        if self.server is None:
            return list(await self.cluster.call_any_server("status.peers", {}, timeout=5.0))
        return self.server.replicator.peers()

    async def consistent_read(self) -> None:
        """Wait until this server may answer a linearizable read (Raft's ReadIndex on a cluster)."""
        read_index = getattr(self.server.replicator if self.server else None, "read_index", None)
        if read_index is not None:
            await read_index()

    def user_event(self, event: dict[str, Any]) -> bool:
        """Deliver a user event to this agent: kept when it matches our node and services and is new."""
        services = [(s["Service"], s.get("Tags") or []) for s in self.local.services().values()]
        if not accepts(event, self.config.node_name, services):
            return False
        kept = self.events.receive(event)
        if kept:
            log.info("user event %r (%s) received", event["Name"], event["ID"])
            if event["Name"] == REXEC_EVENT:
                self._remote_exec(event)
        return kept

    def _remote_exec(self, event: dict[str, Any]) -> None:
        """A `consul exec` job for this node (agent/local/remote_exec.py), unless disable_remote_exec."""
        if self.config.disable_remote_exec:
            log.info("remote exec event %s ignored: disable_remote_exec is true (the default)", event["ID"])
            return
        token = self.own_token()

        async def get(key: str) -> bytes | None:
            with acting_as(token):
                _, rows = await self.backend.query("kv.get", {"key": key}, 0, 0.0, "default")
            return (rows[0]["Value"] or b"") if rows else None

        async def put(key: str, value: bytes, session: str) -> bool:
            try:
                with acting_as(token):
                    return bool(await self.backend.apply(KVOp(verb="lock", key=key, value=value, session=session)))
            except Exception as e:  # the session may be gone (the CLI gave up): stop uploading
                log.warning("remote exec: cannot write %s: %s", key, e)
                return False

        task = asyncio.get_running_loop().create_task(RemoteExecRunner(self.config.node_name, get, put).run(
            bytes(event.get("Payload") or b"")))
        self._exec_tasks.add(task)
        task.add_done_callback(self._exec_tasks.discard)

    async def fire_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Fire a user event: gossiped to every member of the LAN pool (delivered here too, through the
        pool's event). Without a LAN listener a client agent hands it to a server (Consul's
        Internal.EventFire)."""
        event = self.events.stamp(event)
        if self.cluster.gossip is not None:
            self.cluster.gossip.fire_event(event["ID"], event["Name"], event["Payload"], event["NodeFilter"],
                                           event["ServiceFilter"], event["TagFilter"], event["LTime"])
            return event
        if self.server is None:
            await self.cluster.call_any_server("event.fire", {"event": event}, None, False)
        self.user_event(event)
        return event

    def _membership_event(self, kind: str, member: str, detail: Any) -> None:
        if kind == "user-event":
            event = {k: detail[k] for k in ("ID", "Name", "Payload", "NodeFilter", "ServiceFilter", "TagFilter",
                                            "LTime")}
            self.user_event(dict(event, Version=1))

    async def datacenters(self) -> list[str]:
        """Every known datacenter, nearest first (by round trip over the WAN)."""
        return await self.cluster.datacenters()

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def members(self, wan: bool = False) -> list[dict[str, Any]]:
        if wan:
            return self.cluster.wan_member_rows()  # empty on a client agent: only servers are in the WAN
        return self.cluster.member_rows()

    def _observe_write(self, kind: str, millis: float) -> None:
        t = self.telemetry
        t.sample("raft.commitTime", millis)
        t.incr("raft.apply")
        name = COMMAND_METRICS.get(kind)
        if name is not None:
            t.sample(name, millis)

    # ------------------------------------------------------------------ services & checks
    async def register_service(self, defn: dict[str, Any], *, replace_existing_checks: bool = False,
                               persist: bool = True) -> None:
        """Register a service (and, for a Connect.SidecarService, its sidecar proxy) with this agent."""
        sidecar_defn = self._sidecar_for(defn)
        await self._register_one(defn, replace_existing_checks=replace_existing_checks, persist=persist)
        if sidecar_defn is not None:
            await self._register_one(sidecar_defn, replace_existing_checks=True, persist=persist)

    def _sidecar_for(self, defn: dict[str, Any]) -> dict[str, Any] | None:
        """The expanded sidecar registration of a service definition, checked before anything is written."""
        current = self.local.service(sidecar.sidecar_id(defn["ID"]))
        used = {s["Port"] for s in self.local.services().values()
                if s.get("Kind") == "connect-proxy" and s is not current}
        return sidecar.expand(defn, used_ports=used, min_port=self.config.sidecar_min_port,
                              max_port=self.config.sidecar_max_port,
                              current_port=current["Port"] if current and sidecar.is_sidecar_of(current, defn["ID"])
                              else None)

    async def _register_one(self, defn: dict[str, Any], *, replace_existing_checks: bool, persist: bool) -> None:
        sid = defn["ID"]
        row = service_row(defn, self.config.datacenter)
        checks = defn.get("Checks") or []
        if replace_existing_checks:
            wanted = {self._service_check_id(sid, i, len(checks), chk) for i, chk in enumerate(checks)}
            for row_chk in list(self.local.service_checks(sid)):
                if row_chk["CheckID"] not in wanted and not row_chk["CheckID"].startswith("_service_maintenance:"):
                    await self.deregister_check(row_chk["CheckID"])
        self.local.add_service(row, persist=persist)
        for i, chk in enumerate(checks):
            chk = dict(chk, ServiceID=sid)
            chk["CheckID"] = self._service_check_id(sid, i, len(checks), chk)
            if not chk.get("Name"):
                chk["Name"] = f"Service '{row['Service']}' check"
            await self.register_check(chk, persist=persist)
        self._notify_local()

    @staticmethod
    def _service_check_id(sid: str, i: int, n: int, chk: dict[str, Any]) -> str:
        if chk.get("CheckID"):
            return chk["CheckID"]
        return f"service:{sid}" if n == 1 else f"service:{sid}:{i + 1}"

    async def deregister_service(self, sid: str) -> bool:
        """Deregister a service; a sidecar its SidecarService registered goes with it (as in Consul)."""
        proxy = self.local.service(sidecar.sidecar_id(sid))
        if proxy is not None and sidecar.is_sidecar_of(proxy, sid):
            await self.deregister_service(proxy["ID"])
        for chk in self.local.service_checks(sid):
            self.checks.stop(chk["CheckID"])
        ok = self.local.remove_service(sid)
        self._notify_local()
        return ok

    async def register_check(self, defn: dict[str, Any], *, persist: bool = True) -> None:
        cid = defn.get("CheckID") or defn.get("Name")
        sid = defn.get("ServiceID") or ""
        if sid and self.local.service(sid) is None:
            raise DefinitionError(f'ServiceID "{sid}" does not exist')  # Consul's words
        if not defn.get("OutputMaxSize") and self.config.check_output_max_size != DEFAULT_OUTPUT_MAX:
            defn = dict(defn, OutputMaxSize=self.config.check_output_max_size)
        # Consul: enable_local_script_checks admits scripts from config files only (persist=False), never the API.
        if defn.get("Kind") == "script" and not (self.config.enable_script_checks or (
                self.config.enable_local_script_checks and not persist)):
            from proconsul.agent.api.errors import BadRequest

            raise BadRequest("Scripts are disabled on this agent; to enable, configure 'enable_script_checks' "
                             "or 'enable_local_script_checks' to true")
        status = defn.get("Status") or CRITICAL
        row = {"Node": self.config.node_name, "CheckID": cid, "Name": defn.get("Name") or cid, "Status": status,
               "Notes": defn.get("Notes") or "", "Output": "", "ServiceID": defn.get("ServiceID") or "",
               "ServiceName": "", "ServiceTags": [], "Type": defn.get("Kind") or "",
               "Interval": defn.get("Interval") or "", "Timeout": defn.get("Timeout") or "", "ExposedPort": 0,
               "Definition": {}, "CreateIndex": 0, "ModifyIndex": 0}
        self.local.add_check(row, defn, persist=persist)
        self.checks.start(cid, defn, self.local.check(cid)["Status"])
        self._notify_local()

    async def deregister_check(self, cid: str) -> bool:
        self.checks.stop(cid)
        ok = self.local.remove_check(cid)
        self._notify_local()
        return ok

    def update_ttl_check(self, cid: str, status: str, output: str) -> None:
        runner = self.checks.runner(cid)
        if not hasattr(runner, "set_status"):
            from proconsul.agent.api.errors import NotFoundHTTP

            raise NotFoundHTTP(f'CheckID "{cid}" does not have associated TTL')
        output = runner.set_status(status, output)  # re-arms the TTL, cuts the output to OutputMaxSize
        if self.local.update_check(cid, status, output, ttl_update=True):
            self._notify_local()

    def _check_result(self, cid: str, status: str, output: str) -> None:
        if self.config.discard_check_output:
            output = ""  # Consul's discard_check_output: statuses only, so output churn never syncs
        if self.local.update_check(cid, status, output):
            self._notify_local()

    def _notify_local(self) -> None:
        self._local_changed.set()
        self._local_changed = asyncio.Event()

    async def local_changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._local_changed.wait(), max(timeout, 0))

    async def reap_critical_services(self, stop: asyncio.Event) -> None:
        """Deregister services whose check stayed critical past deregister_critical_service_after."""
        from proconsul.agent.local.state import REAP_INTERVAL

        while not stop.is_set():
            for sid in self.local.services_to_reap(time.monotonic()):
                log.info("service %s: a check has been critical longer than its deregister_critical_service_after;"
                         " deregistering it", sid)
                await self.deregister_service(sid)
            try:
                await asyncio.wait_for(stop.wait(), REAP_INTERVAL)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ config (re)loading
    async def load_services_from_config(self) -> None:
        """Register the services and checks in config files; a reload replaces the previous set."""
        from proconsul.agent.local.definitions import DefinitionError, check_definition, service_definition

        services, checks = [], []
        try:
            for i, raw in enumerate(self.config.services):
                services.append(service_definition(raw, f"services[{i}]"))
            for i, raw in enumerate(self.config.checks):
                checks.append(check_definition(raw, f"checks[{i}]"))
        except DefinitionError as e:
            raise AgentError(f"invalid service or check in config: {e}") from None
        new_services = {s["ID"] for s in services}
        for sid in self._config_services - new_services:
            await self.deregister_service(sid)
        try:
            for s in services:
                await self.register_service(s, replace_existing_checks=True, persist=False)
        except DefinitionError as e:
            raise AgentError(f"invalid service in config: {e}") from None
        new_checks = {chk.get("CheckID") or chk["Name"] for chk in checks}
        for cid in self._config_checks - new_checks:
            await self.deregister_check(cid)
        try:
            for chk in checks:
                await self.register_check(chk, persist=False)
        except DefinitionError as e:
            raise AgentError(f"invalid check in config: {e}") from None
        self._config_services, self._config_checks = new_services, new_checks

    async def reload(self) -> None:
        """Re-read config files (services, checks, log level) as Consul's `reload` does."""
        base = AgentConfig(**{k: v for k, v in vars(self.config).items()
                              if k not in ("services", "checks", "config_files", "config_dirs")})
        base.services, base.checks = [], []
        try:
            fresh = finalize(load_config(self.config.config_files, self.config.config_dirs, base))
        except ValueError as e:
            raise AgentError(f"reload failed, keeping the running configuration: {e}") from None
        self.config.services, self.config.checks = fresh.services, fresh.checks
        self.config.log_level = fresh.log_level
        logging.getLogger("proconsul").setLevel(level_number(fresh.log_level))
        await self.load_services_from_config()
        log.info("configuration reloaded: %d services, %d checks from config files",
                 len(fresh.services), len(fresh.checks))

    async def _restore_persisted(self) -> None:
        services, checks = self.local.load()
        for row in services:
            self.local.add_service(row, write=False)
        for row, defn in checks:
            if defn.get("Kind") == "script" and not self.config.enable_script_checks:
                log.error("not restoring script check %s: script checks are disabled on this agent "
                          "(enable_script_checks)", row.get("CheckID"))
                continue
            try:
                self.local.add_check(row, defn, write=False)
            except KeyError:
                continue
            self.checks.start(row["CheckID"], defn, row["Status"])
        if self.local.migrated:
            self.local.save()
        if services or checks:
            log.info("restored %d services and %d checks registered before the restart", len(services), len(checks))

    # ------------------------------------------------------------------ membership (single agent for now)
    def request_leave(self) -> None:
        log.info("leave requested: leaving the cluster and shutting down")
        self._leaving = True
        self._stop.set()

    async def force_leave(self, node: str, wan: bool = False, prune: bool = False) -> None:
        from proconsul.agent.api.errors import BadRequest

        if wan:
            if not self.cluster.wan_force_leave(node, prune, self.loop_time()):
                raise BadRequest(f"No node {node!r} is failed or left in this server's WAN member list"
                                 + ("" if self.config.server else " (WAN members are only known to servers)"))
            log.info("force-leave -wan: member %s marked left%s", node, " and pruned" if prune else "")
            return
        members = self.cluster.members
        status = members.status(node) if node != self.config.node_name else "self"
        if node not in {m.name for m, _ in members.members()}:
            raise BadRequest(f"No node {node!r} in this agent's member list")
        if members.force_leave(node, self.loop_time()):
            log.info("force-leave: member %s marked left", node)
            self.cluster.membership_changed([node])
        else:  # alive (or ourselves): nothing to do, and no error (Consul's behaviour)
            log.info("force-leave: member %s is %s; nothing to do", node, status)

    async def join(self, address: str, wan: bool = False) -> None:
        from proconsul.agent.api.errors import BadRequest
        from proconsul.agent.cluster.lan import JoinError

        if wan:
            try:
                await self.cluster.wan_join([address])
            except ClusterError as e:
                raise BadRequest(str(e)) from None
            return
        if self.cluster.gossip is None:
            raise BadRequest("this agent has no LAN gossip listener (serf_lan port is -1)")
        try:
            await self.cluster.gossip.join([address])
        except JoinError as e:
            raise BadRequest(str(e)) from None

    # ------------------------------------------------------------------ catalog plumbing
    async def _read_own_node(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        from proconsul.agent.acl.errors import ACLNotFound

        try:
            _, ns = await self.backend.query("catalog.node_services", {"node": self.config.node_name})
            _, checks = await self.backend.query("health.node", {"node": self.config.node_name})
        except ACLNotFound:
            raise AgentError("the agent token (acl.tokens.agent, else acl.tokens.default) matches no ACL token: "
                             "the servers refuse this agent's reads of its own node") from None
        if ns is None:
            return None, [], checks
        return ns["Node"], ns["Services"], checks

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Run until stopped: listeners and background work under one TaskGroup."""
        from proconsul.agent.api.app import build_app
        from proconsul.agent.api.lean import LeanAppRunner, LeanFront

        cfg = self.config
        _raise_fd_limit()
        self.log_monitor = LogMonitor(asyncio.get_running_loop())
        logging.getLogger().addHandler(self.log_monitor)
        app = build_app(self)
        # On shutdown, requests still running after 1 s (parked blocking queries) are cut: clients retry.
        # The lean front answers cached hot reads before aiohttp's request cycle (api/lean.py).
        runner = LeanAppRunner(app, LeanFront(app), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            # What this agent owns comes back before anything can ask for it (HTTP, DNS, the cluster).
            await self._restore_persisted()
            await self.load_services_from_config()
            for bind in self.binders:
                await bind()
            try:
                await self.cluster.start()
            except ClusterError as e:
                raise AgentError(str(e)) from None
            if self.auto_encrypt is not None:  # nothing reaches a server before this agent has its certificate
                await self.auto_encrypt.obtain(self._stop)
            if self.cluster.is_leader():  # dev and single-server: register ourselves before "ready"
                await self.cluster.reconcile()
            if cfg.https_port >= 0:
                self.https_port = await _listen(runner, "HTTPS", cfg.https_bind, cfg.https_port, self._https_context)
                log.info("HTTPS API listening on %s:%s (client certificates %s)", cfg.https_bind, self.https_port,
                         "required" if cfg.https_tls.verify_incoming else "not required")
            if cfg.http_port >= 0:
                self.http_port = await _listen(runner, "HTTP", cfg.http_bind, cfg.http_port, None)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.cluster.run(self._stop), name="cluster")
                tg.create_task(self.local.run(self._stop), name="anti-entropy")
                tg.create_task(self.reap_critical_services(self._stop), name="reaper")
                if self.auto_encrypt is not None:
                    tg.create_task(self.auto_encrypt.renew(self._stop), name="auto-encrypt-renew")
                if self.server is not None:
                    tg.create_task(self.server.run_leader_duties(self._stop), name="leader-duties")
                    if self.acl is not None:
                        # A secondary that replicates ACLs gets its management tokens from the primary.
                        initial = "" if self.cluster.acl_replication else self.acl_tokens.get("initial_management", "")
                        tg.create_task(leader_setup(self.acl_state, initial,
                                                    self.is_leader, self.wait_leadership, self._stop),
                                       name="acl-setup")
                    if cfg.config_entries:
                        tg.create_task(self._bootstrap_config_entries(), name="config-entries-bootstrap")
                for start in self.listeners:
                    tg.create_task(start(self, self._stop), name=getattr(start, "__name__", "listener"))
                _tune_gc()
                log.info("agent running: node=%s datacenter=%s http=%s:%s server=%s dev=%s", cfg.node_name,
                         cfg.datacenter, cfg.http_bind, self.http_port, cfg.server, cfg.dev)
                self.ready.set()
                await self._stop.wait()
                log.info("shutting down")
        finally:
            await self.checks.close()
            leave = self._leaving or (self.config.leave_on_terminate and not self.config.dev)
            await self.cluster.stop(leave=leave)
            if self.loopback is not None:
                await self.loopback.close()
            await runner.cleanup()
            logging.getLogger().removeHandler(self.log_monitor)

    async def _bootstrap_config_entries(self) -> None:
        """Consul's config_entries.bootstrap: the leader writes each entry that does not exist yet."""
        from proconsul.agent.api.config import put_entry, validate_entry
        from proconsul.agent.api.errors import HTTPError

        entries = []
        for raw in self.config.config_entries:
            try:
                entries.append(validate_entry(raw))
            except HTTPError as e:
                log.error("config_entries.bootstrap: skipping an entry: %s", e)
        while not self._stop.is_set():
            if not await self.wait_leadership(self._stop):
                return
            try:
                for entry in entries:
                    if await put_entry(self, entry, cas=0):
                        log.info("config_entries.bootstrap: wrote %s/%s", entry["Kind"], entry["Name"])
                return
            except Exception as e:  # leadership moved: the next leader writes what is missing
                log.warning("config_entries.bootstrap interrupted: %s", e)
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()

    def give_up(self, reason: str) -> None:
        """Stop the agent because something it must do cannot be done (`run_agent` exits with `reason`)."""
        log.error("%s: stopping the agent", reason)
        self.fatal = reason
        self._stop.set()


def _tune_gc() -> None:
    """Everything allocated while starting lives for the whole run: move it out of the collector's
    sight, and collect the young generation less often (a server allocates many short-lived
    objects per request; the default threshold of 700 runs a collection every few requests)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _raise_fd_limit() -> None:
    """Many blocking queries mean many sockets: lift the soft descriptor limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit above %d", soft)


async def _listen(runner: web.AppRunner, what: str, host: str, port: int, ssl_context: Any) -> int:
    """Start one API listener; the port it got (port 0 picks one). A port in use is one line."""
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as e:
        raise AgentError(f"cannot listen for {what} on {host}:{port}: {e.strerror}") from None
    return _bound_port(site)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; we need the real port for port 0
    for sock in getattr(server, "sockets", []) or []:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return sock.getsockname()[1]
    raise AgentError("HTTP listener has no socket")


def _load_components(agent: Agent) -> None:
    """Attach optional components (DNS, UI, Connect) that register listeners or HTTP routes."""
    import importlib

    for module_name in ("proconsul.dns.service", "proconsul.agent.api.ui", "proconsul.agent.api.connect",
                        "proconsul.agent.api.canary"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        module.attach(agent)


async def run_agent(config: AgentConfig) -> None:
    """Run an agent in the current event loop, stopping cleanly on SIGINT/SIGTERM; SIGHUP reloads."""
    agent = Agent(config)
    loop = asyncio.get_running_loop()

    def _interrupted() -> None:
        # Consul: SIGINT leaves gracefully unless skip_leave_on_interrupt (default: servers skip);
        # SIGTERM leaves only with leave_on_terminate.
        if not config.skip_leave_on_interrupt and not config.dev:
            agent.request_leave()
        agent.stop()

    loop.add_signal_handler(signal.SIGINT, _interrupted)
    loop.add_signal_handler(signal.SIGTERM, agent.stop)

    def _hup() -> None:
        task = loop.create_task(agent.reload())
        task.add_done_callback(lambda t: t.cancelled() or not t.exception()
                               or log.error("%s", t.exception()))

    loop.add_signal_handler(signal.SIGHUP, _hup)
    pid_file = _write_pid_file(config.pid_file)
    try:
        await agent.run()
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    if agent.fatal:
        raise AgentError(agent.fatal)


def _write_pid_file(path: str) -> Any:
    """Consul's pid_file: the agent's PID, removed when it exits."""
    if not path:
        return None
    import os
    from pathlib import Path

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise AgentError(f"cannot write pid_file {path}: {e.strerror or e}") from None
    return p
