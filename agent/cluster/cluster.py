"""Clustering: the catalog replicated with our Raft, server RPC, LAN membership and the leader's duties.

On a server, the state store is the FSM of a `RaftNode` (`FileStorage` under `<data_dir>/raft`,
or an in-memory log in dev mode — the same code path). The server port carries Raft and RPC
(`rpc.ServerPort`); the LAN port carries SWIM + Lifeguard gossip (`lan.LANGossip`, over
`proconsul.membership`). What Consul's servers do, ours do:

- **bootstrap_expect**: once that many servers of the datacenter are alive in the LAN pool, and
  none of them reports Raft state of its own, each bootstraps Raft with the same configuration.
  A server that has state never bootstraps again, so a restart rejoins its cluster and a
  bootstrapped cluster never forms a second one.
- **the leader's reconcile**: every member of the pool is a catalog node with a `serfHealth`
  check (passing while alive, critical once gossip says it is failed; a member that left is
  deregistered); servers get the `consul` service; alive servers missing from the Raft
  configuration are added as voters, servers that left are removed.
- **RPC**: followers and client agents forward writes and default/consistent reads to the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from proconsul.agent.cluster.autopilot_driver import AutopilotDriver
from proconsul.agent.cluster.caller import acting_as, with_token
from proconsul.agent.cluster.coordinate_sync import CoordinateFlusher, CoordinateSender, update_row
from proconsul.agent.cluster.endpoints import ServerEndpoints
from proconsul.agent.cluster.errors import ClusterError
from proconsul.agent.cluster.gossip_snapshot import SnapshotError, SnapshotFile
from proconsul.agent.cluster.host import ClusterHost
from proconsul.agent.cluster.keyring import GossipKeys, Target
from proconsul.agent.cluster.lan import LANGossip, lan_timings
from proconsul.agent.cluster.membership import STATUS_CODES, Member
from proconsul.agent.cluster.reconcile import SERF_CHECK_ID, catalog_plan, raft_plan, reaped_plan
from proconsul.agent.cluster.replication import TableReplicator
from proconsul.agent.cluster.rpc import (
    MUX_RAFT,
    NoLeader,
    RPCNotSent,
    RPCPool,
    RPCServer,
    RPCUnavailable,
    ServerPort,
)
from proconsul.agent.cluster.rpc_tls import TLSConfigError, rpc_tls
from proconsul.agent.cluster.server import ServerRole
from proconsul.agent.cluster.wan.pool import STATUS_CODES as WAN_STATUS_CODES
from proconsul.agent.cluster.wan.pool import WANPool, WANServer
from proconsul.agent.cluster.wan.router import Router
from proconsul.agent.config.model import ConfigError
from proconsul.agent.config.values import as_duration
from proconsul.agent.version import PROTOCOL, VERSION
from proconsul.catalog import commands as c
from proconsul.catalog.store import CRITICAL, StateStore
from proconsul.consensus.errors import RaftError
from proconsul.consensus.node import NodeOptions, RaftNode, Server
from proconsul.consensus.storage import FileStorage, MemoryStorage
from proconsul.membership.config import WAN
from proconsul.membership.errors import JoinError, MembershipError
from proconsul.membership.keyring import KeyringError
from proconsul.membership.view import ALIVE as REC_ALIVE
from proconsul.membership.view import SUSPECT as REC_SUSPECT

log = logging.getLogger("proconsul.cluster")

RECONCILE_INTERVAL = 5.0
# A node the pool does not know is reaped only after this long up: a restarted server re-joins the members it
# knew (its gossip snapshot) and learns the rest by push-pull first. A dev agent keeps no catalog across runs.
REAP_GRACE = 30.0
FORWARD_TIMEOUT_SLACK = 30.0  # an RPC waits the query's own wait plus this much


class CatalogFSM:
    """The state store as Raft's state machine: committed entries are encoded catalog commands."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def apply(self, index: int, data: bytes) -> Any:
        return self.store.apply_bytes(index, data)

    def snapshot(self) -> bytes:
        return self.store.snapshot()

    def restore(self, data: bytes) -> None:
        self.store.restore(data)


class RaftReplicator:
    """The server role's `Replicator` over a `RaftNode`."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    async def propose(self, cmd: c.Command) -> Any:
        return await self.node.propose(c.encode(cmd))

    async def read_index(self) -> None:
        await self.node.read_index()

    @property
    def is_leader(self) -> bool:
        return self.node.is_leader

    @property
    def leader(self) -> str:
        return self.node.leader_addr if self.node.leader_id else ""

    def peers(self) -> list[str]:
        return [s.address for s in self.node.configuration() if s.voter] if self.node.core else []

    def last_contact(self) -> float:
        lc = self.node.last_contact
        return 0.0 if lc == float("inf") else lc


class Cluster:
    """Everything that makes an agent part of a cluster; one per agent."""

    def __init__(self, host: ClusterHost) -> None:
        cfg = host.config
        self.host = host
        self.config = cfg
        self.rng = random.Random(host.rng.getrandbits(64))
        try:
            self.tls = rpc_tls(cfg)
        except TLSConfigError as e:
            raise ClusterError(str(e)) from None
        self.pool = RPCPool(self.tls.client, self.tls.server_hostname)
        self.rpc = RPCServer()
        self.raft: RaftNode | None = None
        self.port: ServerPort | None = None
        try:
            timings = lan_timings(cfg.gossip_lan, cfg.reconnect_timeout,
                                  lambda v: as_duration("gossip_lan", v, "gossip_lan"))
            # The servers' WAN pool runs the same core with these (checked on every agent: a bad block stops it).
            self.wan_timings = lan_timings(cfg.gossip_wan, cfg.reconnect_timeout_wan,
                                           lambda v: as_duration("gossip_wan", v, "gossip_wan"), WAN, "gossip_wan")
        except (MembershipError, ConfigError) as e:
            raise ClusterError(str(e)) from None
        try:
            self.keys = GossipKeys(cfg, wan=bool(cfg.server and cfg.serf_wan_port >= 0))
        except KeyringError as e:
            raise ClusterError(str(e)) from None
        # The incarnation starts at the wall clock's seconds, so a restarted agent is newer than it was.
        self.lan = LANGossip(cfg.node_name, cfg.advertise, max(cfg.serf_lan_port, 0), self._tags(), cfg.datacenter,
                             cfg.serf_lan_addr or cfg.bind_addr, timings=timings, retry_join=cfg.retry_join,
                             retry_interval=cfg.retry_interval, rng=self.rng, incarnation=int(time.time()),
                             on_change=self.membership_changed, sealer=self.keys.lan_sealer,
                             on_request=self.keys.handle, snapshot=self._gossip_snapshot("local.snapshot"),
                             rejoin_after_leave=cfg.rejoin_after_leave)
        self.lan.pool.allowed = _networks(cfg.serf_lan_allowed_cidrs)
        self.lan.retry_max, self.lan.on_give_up = cfg.retry_max, host.give_up
        self.members = self.lan.members
        self.gossip: LANGossip | None = None
        self._bootstrap_wanted = asyncio.Event()  # one event per waiting loop: neither clears the other's
        self._reconcile_wanted = asyncio.Event()
        self.leading = asyncio.Event()  # set while this server is the leader
        self._bootstrapped = False
        self._reap_from = time.monotonic() + (0.0 if cfg.dev else REAP_GRACE)
        self.autopilot: AutopilotDriver | None = None
        if host.server is not None:
            self.autopilot = AutopilotDriver(host.server.store, cfg.autopilot, self.members.members, cfg.node_id,
                                             cfg.datacenter, monotonic=time.monotonic, wall=time.time)
        self.coordinate_flusher: CoordinateFlusher | None = None
        if host.server is not None:
            self.coordinate_flusher = CoordinateFlusher(
                lambda cmd: self.server().apply(cmd), self.is_leader,
                period=cfg.coordinate_update_period or (0.1 if cfg.dev else 5.0),
                batch_size=cfg.coordinate_update_batch_size, max_batches=cfg.coordinate_update_max_batches)
        self.coordinate_sender: CoordinateSender | None = None
        if not cfg.disable_coordinates:
            self.coordinate_sender = CoordinateSender(
                cfg.node_name, self.lan.coordinates, lambda: len(self.lan.core.view), self.submit_coordinate,
                rate_target=cfg.sync_coordinate_rate_target, interval_min=cfg.sync_coordinate_interval_min,
                rng=random.Random(self.rng.getrandbits(64)))
        self.wan: WANPool | None = None
        self.router: Router | None = None
        if cfg.server and cfg.serf_wan_port >= 0:
            self._init_wan()
        self.replicators: list[TableReplicator] = []
        self.report_parts: dict[str, Callable[[], Any]] = {}  # other components' lines in the link view
        if self.secondary:
            self.replicators.append(TableReplicator(
                "config-entries", cfg.primary_datacenter, "config_entries", "config.list", {},
                lambda r: f"{r['Kind']}/{r['Name']}", is_leader=self.is_leader, leading=self.leading,
                forward_dc=self.forward_dc, apply=lambda cmd: self.server().apply(cmd),
                local_rows=lambda table: self.server().store.table_list(table)[1],
                rng=random.Random(self.rng.getrandbits(64))))
            if self.acl_replication:
                self._init_acl_replication()
        ServerEndpoints(self).register(self.rpc)

    @property
    def acl_replication(self) -> bool:
        """A secondary's servers copy the primary's ACL policies and roles (and, with
        enable_token_replication, its global tokens) once they have a replication token, as Consul's."""
        acl = self.config.acl
        return self.secondary and acl.enabled and bool(acl.tokens.get("replication"))

    def _init_acl_replication(self) -> None:
        cfg = self.config
        tables = [("acl-policies", "acl_policies", "ID", None), ("acl-roles", "acl_roles", "ID", None)]
        if cfg.acl.enable_token_replication:
            tables.append(("acl-tokens", "acl_tokens", "AccessorID", lambda r: not r.get("Local")))
        for name, table, key, select in tables:
            self.replicators.append(TableReplicator(
                name, cfg.primary_datacenter, table, "table.list", {"table": table},
                lambda r, k=key: r[k], is_leader=self.is_leader, leading=self.leading, forward_dc=self.forward_dc,
                apply=lambda cmd: self.server().apply(cmd),
                local_rows=lambda t: self.server().store.table_list(t)[1],
                rng=random.Random(self.rng.getrandbits(64)), select=select))

    def acl_replication_status(self) -> dict[str, Any]:
        """Consul's /v1/acl/replication, from this server's ACL replicators."""
        from proconsul.agent.acl.state import rfc3339

        def when(t: float) -> str:
            return rfc3339(t) if t else "0001-01-01T00:00:00Z"

        reps = {r.status.name: r.status for r in self.replicators if r.status.name.startswith("acl-")}
        enabled = self.acl_replication
        errors = sorted((s for s in reps.values() if s.last_error_at), key=lambda s: s.last_error_at)
        successes = [s.last_success for s in reps.values() if s.last_success]
        return {"Enabled": enabled, "Running": enabled and any(s.running for s in reps.values()),
                "SourceDatacenter": self.config.primary_datacenter if enabled else "",
                "ReplicationType": ("tokens" if self.config.acl.enable_token_replication else "policies")
                if enabled else "",
                "ReplicatedIndex": reps["acl-policies"].index if "acl-policies" in reps else 0,
                "ReplicatedRoleIndex": reps["acl-roles"].index if "acl-roles" in reps else 0,
                "ReplicatedTokenIndex": reps["acl-tokens"].index if "acl-tokens" in reps else 0,
                "LastSuccess": when(min(successes) if len(successes) == len(reps) and reps else 0.0),
                "LastError": when(errors[-1].last_error_at if errors else 0.0),
                "LastErrorMessage": errors[-1].last_error if errors else ""}

    def _tags(self) -> dict[str, str]:
        cfg = self.config
        tags = {"role": "consul" if cfg.server else "node", "dc": cfg.datacenter, "id": cfg.node_id,
                "vsn": "2", "vsn_min": "2", "vsn_max": "3", "build": VERSION, "port": str(cfg.server_port),
                "segment": ""}
        if cfg.server:
            tags["expect"] = str(cfg.bootstrap_expect)
            if cfg.serf_wan_port >= 0:
                tags["wan_join_port"] = str(cfg.serf_wan_port)
        return tags

    async def keyring_operation(self, op: str, key: str = "", local_only: bool = False) -> list[dict[str, Any]]:
        """A keyring operation on every member of the LAN pool and, on a server, of the WAN pool
        (agent/cluster/keyring.py)."""
        def others(core: Any) -> list[Target]:
            return [Target(r.node.name, r.node.addr, r.node.port) for r in core.view
                    if r.node.name != core.name and r.state in (REC_ALIVE, REC_SUSPECT)]

        wan = (self.wan.pool, others(self.wan.core)) if self.wan is not None else None
        return await self.keys.operate(self.lan.pool, others(self.lan.core), op, key, local_only, wan)

    # ------------------------------------------------------------------ WAN pool and router (servers)
    def _init_wan(self) -> None:
        cfg = self.config
        me = WANServer(cfg.node_name, cfg.datacenter, cfg.advertise_addr_wan or cfg.advertise,
                       max(cfg.serf_wan_port, 0), max(cfg.server_port, 0), cfg.node_id, VERSION)
        # The same SWIM core and shell as the LAN, with memberlist's WAN timings (gossip_wan); the incarnation
        # starts at the wall clock's seconds, so a restarted server is newer than it was.
        self.wan = WANPool(me, cfg.serf_wan_addr or cfg.bind_addr, timings=self.wan_timings,
                           retry_join=cfg.retry_join_wan, retry_interval=cfg.retry_interval_wan, rng=self.rng,
                           incarnation=int(time.time()), on_change=self._wan_changed,
                           local_servers=self._local_wan_servers, sealer=self.keys.wan_sealer,
                           on_request=self.keys.handle, snapshot=self._gossip_snapshot("remote.snapshot"),
                           rejoin_after_leave=cfg.rejoin_after_leave)
        self.wan.pool.allowed = _networks(cfg.serf_wan_allowed_cidrs)
        self.wan.retry_max, self.wan.on_give_up = cfg.retry_max_wan, self.host.give_up
        self.router = Router(self.wan, cfg.datacenter, self.pool.call, random.Random(self.rng.getrandbits(64)),
                             blocked=lambda: self.wan.blocked if self.wan else set())

    def _gossip_snapshot(self, name: str) -> SnapshotFile | None:
        """Serf's snapshot of a pool, `<data_dir>/serf/<name>` (none in dev mode, which keeps nothing)."""
        cfg = self.config
        return SnapshotFile(Path(cfg.data_dir) / "serf" / name) if cfg.data_dir and not cfg.dev else None

    def _local_wan_servers(self) -> list[tuple[str, str, int]]:
        """This datacenter's servers as the LAN knows them — (WAN name, address, WAN port) — for flood-joining
        them to the WAN."""
        out = []
        for m in self.server_members():
            port = m.tags.get("wan_join_port", "")
            if m.name != self.config.node_name and port.isdigit():
                out.append((f"{m.name}.{self.config.datacenter}", m.addr, int(port)))
        return out

    def _wan_changed(self, names: list[str]) -> None:
        pass  # the router reads the pool on every call; nothing to refresh

    def wan_member_rows(self) -> list[dict[str, Any]]:
        if self.wan is None:
            return []
        rows = []
        for m in self.wan.members():
            s = m.server
            rows.append({"Name": s.name, "Addr": s.addr, "Port": s.port, "Tags": s.tags(),
                         "Status": WAN_STATUS_CODES[m.status], "ProtocolMin": 1, "ProtocolMax": 5,
                         "ProtocolCur": PROTOCOL, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4})
        return rows

    async def wan_join(self, addresses: list[str]) -> int:
        if self.wan is None:
            raise ClusterError("WAN join must be performed on a server with a WAN port (serf_wan is -1 "
                               "or this is a client agent)")
        try:
            return await self.wan.join(addresses)
        except JoinError as e:
            raise ClusterError(f"WAN join: {e}") from None

    def wan_force_leave(self, name: str, prune: bool, now: float) -> bool:
        return self.wan is not None and self.wan.force_leave(name, prune=prune)

    def federation_report(self) -> dict[str, Any]:
        """The link view: per remote datacenter its servers, RTT and last contact; our replication."""
        cfg = self.config
        now = asyncio.get_running_loop().time()
        out: dict[str, Any] = {"Datacenter": cfg.datacenter, "PrimaryDatacenter": cfg.primary_datacenter or "",
                               "Server": cfg.node_name, "Datacenters": [], "Replication": [],
                               "Extra": {}}
        if self.wan is None or self.router is None:
            return out
        blocked = self.wan.blocked
        for dc in self.router.datacenters():
            servers = []
            for m in self.wan.servers(dc):
                status = "partitioned" if m.name in blocked else m.status
                servers.append({"Name": m.name, "Address": m.server.rpc_address, "Status": status,
                                "RTTMillis": None if m.rtt is None else round(m.rtt * 1000, 3),
                                "LastContactSeconds": None if m.name == self.wan.me_name or not m.last_contact
                                else round(max(now - m.last_contact, 0.0), 3)})
            alive = [x for x in servers if x["Status"] == "alive"]
            rtts = sorted(x["RTTMillis"] for x in alive if x["RTTMillis"] is not None)
            contacts = [x["LastContactSeconds"] for x in servers if x["LastContactSeconds"] is not None]
            last_ok = self.router.last_success.get(dc)
            out["Datacenters"].append({
                "Datacenter": dc, "Local": dc == cfg.datacenter, "Primary": dc == (cfg.primary_datacenter or ""),
                "Reachable": bool(alive), "AliveServers": len(alive), "Servers": servers,
                "RTTMillis": rtts[len(rtts) // 2] if rtts else None,
                "LastContactSeconds": min(contacts) if contacts else None,
                "LastForwardSecondsAgo": None if last_ok is None else round(now - last_ok, 3),
                "LastForwardError": self.router.last_error.get(dc, "")})
        out["Replication"] = [r.status.to_json() for r in self.replicators]
        for name, part in self.report_parts.items():
            out["Extra"][name] = part()
        return out

    def coordinate_datacenters(self) -> list[dict[str, Any]]:
        """Consul's /v1/coordinate/datacenters: each datacenter's servers' WAN coordinates."""
        by_dc: dict[str, list[dict[str, Any]]] = {}
        if self.wan is not None:
            for server, coord in self.wan.member_coordinates():
                by_dc.setdefault(server.datacenter, []).append({"Node": server.name, "Segment": "",
                                                                "Coord": coord.to_json()})
        order = self.router.datacenters() if self.router is not None else sorted(by_dc)
        return [{"Datacenter": dc, "AreaID": "WAN", "Coordinates": by_dc[dc]} for dc in order if dc in by_dc]

    def forget_datacenter(self, datacenter: str) -> list[str]:
        """Remove a dead datacenter from the WAN pool at once (its servers leave everyone's lists)."""
        if self.wan is None:
            raise ClusterError("this agent has no WAN pool (a client agent, or serf_wan is -1)")
        if datacenter == self.config.datacenter:
            raise ClusterError(f"{datacenter} is this server's own datacenter")
        alive = [m.name for m in self.wan.servers(datacenter) if m.status == "alive"]
        if alive:
            raise ClusterError(f"datacenter {datacenter} still has alive servers ({', '.join(alive)}): stop them "
                               "(or cut the WAN) first")
        names = self.wan.forget_datacenter(datacenter)
        if not names:
            from proconsul.agent.cluster.errors import NoPathToDatacenter

            raise NoPathToDatacenter(datacenter)
        log.warning("removed datacenter %s from the WAN pool (%s)", datacenter, ", ".join(names))
        return names

    async def coordinate_update(self, args: dict[str, Any]) -> None:
        """Consul's Coordinate.Update on a server: checked here, queued on the leader (forwarded there from a
        follower), written with the next batch."""
        row = update_row(args)
        flusher = self.coordinate_flusher
        if flusher is None:
            raise ClusterError("this agent is not a server")

        async def here() -> None:
            flusher.add(row)

        await self.server().on_leader(here, "coordinate.update", args, idempotent=True)

    async def submit_coordinate(self, args: dict[str, Any]) -> None:
        """Send a coordinate update from this agent: to our own server role, or to any server."""
        if self.raft is not None:
            await self.coordinate_update(args)
        else:
            await self.call_any_server("coordinate.update", args, timeout=10.0)

    async def datacenters(self) -> list[str]:
        """Known datacenters, nearest first (a client agent asks a server)."""
        if self.router is not None:
            return self.router.datacenters()
        if self.raft is not None:
            return [self.config.datacenter]
        return list(await self.call_any_server("federation.datacenters", {}, timeout=5.0))

    async def forward_dc(self, datacenter: str, method: str, args: dict[str, Any], timeout: float | None = None,
                         idempotent: bool = False) -> Any:
        """Send an RPC to a server of another datacenter: through the router on a server, through a
        server of ours on a client agent (clients never dial other datacenters)."""
        if self.router is not None:
            return await self.router.call(datacenter, method, self.stamp(args), timeout, idempotent=idempotent,
                                          now=lambda: asyncio.get_running_loop().time())
        if self.raft is not None:  # a server with its WAN port off: it knows no other datacenter
            from proconsul.agent.cluster.errors import NoPathToDatacenter

            raise NoPathToDatacenter(datacenter)
        return await self.call_any_server("federation.forward", {
            "dc": datacenter, "method": method, "args": self.stamp(args), "timeout": timeout, "idempotent": idempotent},
            timeout=None if timeout is None else timeout + 5.0, idempotent=idempotent)

    @property
    def secondary(self) -> bool:
        """A server of a datacenter that is not the primary: it replicates what the primary owns."""
        cfg = self.config
        return bool(cfg.server and cfg.primary_datacenter and cfg.primary_datacenter != cfg.datacenter
                    and self.router is not None)

    @property
    def rpc_address(self) -> str:
        return f"{self.config.advertise}:{self.config.server_port}"

    # ------------------------------------------------------------------ start / stop
    async def start(self) -> None:
        cfg = self.config
        if cfg.server:
            await self._start_server()
        if cfg.serf_lan_port >= 0:
            self.gossip = self.lan
            await self._listen("LAN gossip", self.gossip.start, "serf_lan_port")
            if cfg.retry_join:
                with contextlib.suppress(Exception):
                    await self.gossip.join(cfg.retry_join)
        if self.wan is not None:
            bound = await self._listen("WAN gossip", self.wan.start, "serf_wan_port")
            self.wan.update_me(bound, cfg.server_port)
            if cfg.retry_join_wan:
                try:
                    await self.wan.join(cfg.retry_join_wan)
                except JoinError as e:
                    log.warning("retry-join-wan: %s; retrying every %.0fs", e, cfg.retry_interval_wan)

    async def _listen(self, what: str, start: Callable[[], Awaitable[int]], port_attr: str) -> int:
        """Start a listener; a port of 0 becomes the bound one (in the config and our member tags)."""
        cfg = self.config
        try:
            bound = await start()
        except OSError as e:
            raise ClusterError(f"cannot listen for {what} on {cfg.bind_addr}:{getattr(cfg, port_attr)}: "
                               f"{e.strerror or e}") from None
        except SnapshotError as e:
            raise ClusterError(str(e)) from None
        if bound != getattr(cfg, port_attr):
            setattr(cfg, port_attr, bound)
            self._refresh_self()
        return bound

    async def _start_server(self) -> None:
        cfg = self.config
        server = self.host.server
        assert server is not None
        self.port = ServerPort(cfg.bind_addr, cfg.server_port, self.rpc, self._serve_raft, self.tls.server,
                               self.tls.cert_required)
        bound = await self._listen("server RPC", self.port.start, "server_port")
        if cfg.dev:
            storage: Any = MemoryStorage()
        else:
            try:
                storage = FileStorage(Path(cfg.data_dir) / "raft")
            except RaftError as e:
                raise ClusterError(str(e)) from None
        # performance.raft_multiplier scales Raft's timing for slow or shared machines, as Consul's does.
        options = NodeOptions(tick_interval=cfg.raft_tick * cfg.raft_multiplier, election_ticks=cfg.raft_election_ticks,
                              snapshot_threshold=cfg.raft_snapshot_threshold, trailing_logs=cfg.raft_trailing_logs)
        self.raft = RaftNode(cfg.node_id, CatalogFSM(server.store), storage, bind=f"{cfg.bind_addr}:{bound}",
                             options=options, rng=random.Random(self.rng.getrandbits(64)),
                             advertise=self.rpc_address, client_ssl=self.tls.client,
                             transport_options={"listen": False, "preamble": MUX_RAFT,
                                                "server_hostname": self.tls.server_hostname})
        await self.raft.start()
        server.replicator = RaftReplicator(self.raft)
        server.forward = self.forward
        self.raft.on_leader_change(self._leader_changed)
        if self.has_raft_state():
            self._bootstrapped = True
            log.info("raft: resuming with the state in %s (term %d, last index %d)",
                     cfg.data_dir or "memory", self.raft.term, self.raft.last_index)
        elif cfg.bootstrap_expect == 1:
            await self._bootstrap([Server(cfg.node_id, self.rpc_address)])
        elif cfg.bootstrap_expect == 0:
            log.warning("no bootstrap_expect set: this server waits to be added to an existing cluster "
                        "(pass --bootstrap-expect N to form a new one)")
        if {s.id for s in self.raft.configuration() if s.voter} == {cfg.node_id}:
            with contextlib.suppress(TimeoutError):
                await self.raft.wait_for_leader(5.0)  # a lone voter elects itself at once

    async def _serve_raft(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.raft is not None and self.raft.transport is not None:
            await self.raft.transport.serve_connection(reader, writer)

    def _refresh_self(self) -> None:
        self.members.update_me(self.config.serf_lan_port, self._tags())

    async def stop(self, leave: bool) -> None:
        if self.wan is not None:
            await self.wan.stop(leave)
        if self.gossip is not None:
            await self.gossip.stop(leave)
        if self.raft is not None:
            if leave and self.raft.is_leader and len(self.raft.configuration()) > 1:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.raft.transfer_leadership(), 3.0)
            await self.raft.stop()
        if self.port is not None:
            await self.port.stop()
        await self.pool.close()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.gossip is not None:
                tg.create_task(self.gossip.run(stop), name="lan-gossip")
                if self.coordinate_sender is not None:
                    tg.create_task(self.coordinate_sender.run(stop), name="coordinate-sync")
            if self.coordinate_flusher is not None and self.raft is not None:
                tg.create_task(self.coordinate_flusher.run(stop), name="coordinate-batch")
            if self.wan is not None:
                tg.create_task(self.wan.run(stop), name="wan-gossip")
            for rep in self.replicators:
                tg.create_task(self._replicate(rep, stop), name=f"replicate-{rep.status.name}")
            if self.raft is not None:
                tg.create_task(self._bootstrap_loop(stop), name="bootstrap-expect")
                tg.create_task(self._reconcile_loop(stop), name="leader-reconcile")

    async def forward_primary(self, datacenter: str, method: str, args: dict[str, Any], timeout: float | None = None,
                              idempotent: bool = False) -> Any:
        """A secondary's own call to the primary (replication, its intermediate CA): with ACLs on it carries
        acl.tokens.replication, as Consul's do."""
        token = self.config.acl.tokens.get("replication", "")
        with acting_as(token) if token else contextlib.nullcontext():
            return await self.forward_dc(datacenter, method, args, timeout, idempotent)

    async def _replicate(self, rep: TableReplicator, stop: asyncio.Event) -> None:
        """A replicator's calls to the primary carry acl.tokens.replication (Consul's replication token)."""
        token = self.config.acl.tokens.get("replication", "")
        if self.config.acl.enabled and not token:
            log.warning("replication of %s from %s: no acl.tokens.replication set; the primary checks these "
                        "reads against this server's agent token", rep.status.name, rep.primary)
        with acting_as(token) if token else contextlib.nullcontext():
            await rep.run(stop)

    # ------------------------------------------------------------------ status
    def has_raft_state(self) -> bool:
        return self.raft is not None and (self.raft.last_index > 0 or self.raft.term > 0)

    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.is_leader

    def leader_address(self) -> str:
        return self.raft.leader_addr if self.raft is not None and self.raft.leader_id else ""

    def server_members(self) -> list[Member]:
        return [m for m in self.members.alive(servers_only=True) if m.tags.get("dc") == self.config.datacenter]

    def member_rows(self) -> list[dict[str, Any]]:
        rows = []
        for m, status in self.members.members():
            rows.append({"Name": m.name, "Addr": m.addr, "Port": m.port, "Tags": dict(m.tags),
                         "Status": STATUS_CODES[status], "ProtocolMin": 1, "ProtocolMax": 5,
                         "ProtocolCur": PROTOCOL, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4})
        return rows

    def raft_configuration(self) -> dict[str, Any]:
        if self.raft is None or self.raft.core is None:
            raise ClusterError("this agent is not a server")
        leader = self.raft.leader_id
        servers = [{"ID": s.id, "Node": self._node_name(s.id), "Address": s.address, "Leader": s.id == leader,
                    "ProtocolVersion": "3", "Voter": s.voter, "LastIndex": self.raft.last_index
                    if s.id == self.raft.id else 0} for s in self.raft.configuration()]
        return {"Servers": servers, "Index": self.raft.commit_index}

    def autopilot_report(self, what: str) -> dict[str, Any]:
        """Autopilot's health or state, as the leader sees it (call through on_leader)."""
        if self.autopilot is None or self.raft is None:
            raise ClusterError("this agent is not a server")
        return self.autopilot.report(self.raft, what)

    def _node_name(self, server_id: str) -> str:
        for m, _ in self.members.members():
            if m.tags.get("id") == server_id:
                return m.name
        return server_id if server_id != self.config.node_id else self.config.node_name

    async def operator_call(self, method: str, args: dict[str, Any]) -> Any:
        """An operator RPC from this agent's HTTP API: served here on a server (which forwards to
        the leader as needed), sent to a server from a client agent."""
        if self.raft is None:
            return await self.call_any_server(method, args, timeout=30.0)
        return await self.rpc.methods[method](args)

    def partition(self, names: list[str]) -> None:
        """Fault injection: drop Raft and gossip traffic to and from these members (empty: heal)."""
        ids = {m.tags.get("id", "") for m, _ in self.members.members() if m.name in names}
        if self.raft is not None and self.raft.transport is not None:
            self.raft.transport.unblock_all()
            for sid in ids - {""}:
                self.raft.transport.block(sid)
        if self.gossip is not None:
            self.gossip.blocked = set(names)
        if self.wan is not None:
            # WAN members by name (node.dc), or a whole datacenter by its name: a simulated WAN cut.
            self.wan.blocked = {m.name for m in self.wan.members()
                                if m.name in names or m.server.datacenter in names}
            for m in self.wan.members():
                if m.name in self.wan.blocked:
                    self.pool.drop(m.server.rpc_address)  # calls parked there (replication) fail now
        log.warning("debug: traffic to and from %s is dropped", ", ".join(sorted(names)) or "no one")

    # ------------------------------------------------------------------ forwarding
    def stamp(self, args: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments with the caller's token (the agent's own for its own work): with ACLs on,
        the server that runs the call checks it (rpc_acl.py)."""
        return with_token(args, self.host.own_token()) if self.config.acl.enabled else args

    async def forward(self, address: str, method: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        return await self.pool.call(address, method, self.stamp(args), timeout)

    async def call_any_server(self, method: str, args: dict[str, Any], timeout: float | None = None,
                              idempotent: bool = True) -> Any:
        """A client agent's call: try the alive servers in random order until one answers. A call
        that was sent but got no answer is tried again elsewhere only if it is `idempotent`."""
        servers = self.server_members()
        self.rng.shuffle(servers)
        if not servers:
            raise NoLeader("No known Consul servers")
        args = self.stamp(args)
        last: Exception | None = None
        for m in servers:
            try:
                return await self.pool.call(m.rpc_address, method, args, timeout)
            except RPCUnavailable as e:
                if not idempotent and not isinstance(e, RPCNotSent):
                    raise
                last = e
                log.info("server %s did not answer (%s); trying another", m.name, e)
        raise NoLeader(f"No server answered: {last}")

    # ------------------------------------------------------------------ bootstrap
    async def _bootstrap(self, servers: list[Server]) -> None:
        assert self.raft is not None
        await self.raft.bootstrap(servers)
        self._bootstrapped = True
        log.info("raft: bootstrapped a new cluster of %d server(s): %s", len(servers),
                 ", ".join(s.id for s in servers))

    async def _bootstrap_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        while not stop.is_set() and not self._bootstrapped and cfg.bootstrap_expect > 1:
            self._bootstrap_wanted.clear()
            try:
                await self._maybe_bootstrap()
            except Exception as e:
                log.warning("bootstrap check failed: %s", e)
            if self._bootstrapped or self.has_raft_state():
                self._bootstrapped = True
                break
            await _wait_either(self._bootstrap_wanted, stop, 1.0)

    async def _maybe_bootstrap(self) -> None:
        cfg = self.config
        servers = self.server_members()
        if len(servers) < cfg.bootstrap_expect:
            return
        expects = {m.tags.get("expect") for m in servers}
        if expects != {str(cfg.bootstrap_expect)}:
            log.error("servers disagree on bootstrap_expect (%s): not bootstrapping", ", ".join(sorted(
                str(e) for e in expects)))
            return
        if self.has_raft_state():
            return
        for m in servers:
            if m.name == cfg.node_name:
                continue
            try:
                state = await self.pool.call(m.rpc_address, "raft.state", {}, timeout=5.0)
            except Exception as e:
                log.info("bootstrap: cannot ask %s about its raft state yet: %s", m.name, e)
                return
            if state.get("has_state"):
                log.info("bootstrap: server %s already has raft state; waiting to be added to its cluster", m.name)
                self._bootstrapped = True
                return
        await self._bootstrap([Server(m.tags["id"], m.rpc_address) for m in sorted(servers, key=lambda m: m.name)])

    # ------------------------------------------------------------------ leader reconcile
    def membership_changed(self, names: list[str]) -> None:
        self._bootstrap_wanted.set()
        self._reconcile_wanted.set()

    def _leader_changed(self, leader_id: str) -> None:
        server = self.host.server
        if server is None or self.raft is None:
            return
        if self.raft.is_leader:
            self.leading.set()
            log.info("raft: this server (%s) is the leader, term %d", self.config.node_name, self.raft.term)
            server.rearm_sessions()
            self._reconcile_wanted.set()
        else:
            self.leading.clear()
            server.disarm_sessions()
            if leader_id:
                log.info("raft: the leader is %s", self._node_name(leader_id))

    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._reconcile_wanted.clear()  # before the round: news during it wakes the next one
            if self.is_leader():
                try:
                    await self.reconcile()
                except (RaftError, NoLeader) as e:
                    log.info("reconcile interrupted: %s", e)
                except Exception:
                    log.exception("reconcile failed")
            await _wait_either(self._reconcile_wanted, stop, RECONCILE_INTERVAL)

    async def reconcile(self) -> None:
        """Make the catalog and the Raft configuration agree with the LAN pool (leader only)."""
        server = self.host.server
        assert server is not None and self.raft is not None
        store = server.store

        def lookup(name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]], bool]:
            _, (node, services) = store.node_services(name)
            _, checks = store.node_checks(name)
            return node, checks, any(s["ID"] == "consul" for s in services)

        members = self.members.members()
        for cmd in catalog_plan(members, lookup, self.config.datacenter):
            if isinstance(cmd, c.Deregister):
                log.info("member %s left: deregistering its node", cmd.node)
            elif cmd.checks and cmd.checks[0]["Status"] == CRITICAL:
                log.warning("member %s is failed: marking its serfHealth critical", cmd.node["Node"])
            await server.apply(cmd)
        reaped = (reaped_plan(members, store.nodes_with_check(SERF_CHECK_ID), self.config.node_name)
                  if time.monotonic() >= self._reap_from else [])
        for cmd in reaped:
            log.info("node %s has serfHealth but is no member of the LAN pool (reaped): deregistering it",
                     cmd.node)
            await server.apply(cmd)
        for change in raft_plan(members, {s.id for s in self.raft.configuration()}, self.raft.id,
                                self.config.datacenter):
            if change.action == "add_nonvoter":
                log.info("adding server %s (%s) to the raft configuration as a non-voter (autopilot promotes "
                         "it once it is stable)", change.name, change.address)
                await self.raft.add_nonvoter(change.server_id, change.address)
            else:
                log.info("removing server %s from the raft configuration: it left", change.name)
                await self.raft.remove_server(change.server_id)
        if self.autopilot is not None:
            await self.autopilot.run_once(self.raft)

    async def dns_forward(self, packet: bytes, udp: bool) -> bytes | None:
        cfg = self.config
        return await self.call_any_server("dns.query", {"packet": packet, "udp": udp, **(
            {"wan_for": cfg.datacenter} if cfg.translate_wan_addrs else {})}, timeout=5.0)

    async def on_leader(self, method: str, args: dict[str, Any], local: Callable[[], Any], *,
                        idempotent: bool = False) -> Any:
        """An operator call: with `stale` answered here, otherwise by the leader — through the server
        role's one leader-or-forward mechanism (which waits out elections)."""
        if args.get("stale"):
            return await _maybe_await(local())

        async def here() -> Any:
            return await _maybe_await(local())

        return await self.server().on_leader(here, method, args, idempotent=idempotent)

    def server(self) -> ServerRole:
        if self.host.server is None:
            raise ClusterError("this agent is not a server")
        return self.host.server

    async def remove_peer(self, id: str = "", address: str = "", **_: Any) -> str:
        assert self.raft is not None
        conf = self.raft.configuration()
        match = [s for s in conf if (id and s.id == id) or (address and s.address == address)]
        if not match:
            raise ClusterError(f"no server with {'id ' + repr(id) if id else 'address ' + repr(address)} "
                               "in the raft configuration")
        await self.raft.remove_server(match[0].id)
        log.info("removed server %s (%s) from the raft configuration", match[0].id, match[0].address)
        return match[0].id

    async def transfer_leader(self, id: str = "", **_: Any) -> str:
        assert self.raft is not None
        if id and id not in {s.id for s in self.raft.configuration() if s.voter}:
            raise ClusterError(f"no voter with id {id!r} in the raft configuration")
        try:
            return await self.raft.transfer_leadership(id or None)
        except RaftError as e:
            raise ClusterError(f"leadership transfer failed: {e}") from None


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def _wait_either(wanted: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Until `wanted` or `stop` is set, or `timeout` passes (a loop's pause that never delays shutdown)."""
    waiters = {asyncio.ensure_future(wanted.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _networks(cidrs: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """serf_*_allowed_cidrs as networks (checked when the config was read)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
