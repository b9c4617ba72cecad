"""The WAN pool: the servers of every datacenter in one SWIM + Lifeguard pool on `serf_wan_port` (8302).

It is the LAN's protocol and code — the pure core `proconsul.membership.core`, the asyncio shell
`proconsul.membership.pool.Pool` (so gossip encryption's `Sealer` covers it too) and the agent's wrapper
`gossip.GossipMember` (retry-join, leave, coordinates from the probes) — with memberlist's WAN timings
(`gossip_wan { … }`), the pool label `wan`, and members named `<node>.<dc>` whose tags say their
datacenter, node ID and server RPC port. What this module adds is what the router and the API read
(`WANMembership`):

- **Status, as this server sees it.** The pool's verdict (alive/suspect → alive, dead → failed, left), and
  on top of it this server's own reach: a member that has not answered two probes of ours in a row
  directly (UDP before the probe timeout, or the TCP ping) is *failed here*, even while others reach it
  and vouch for it through indirect probes — a server that only answers through a third datacenter is of
  no use to our RPCs. Its next direct answer makes it alive here again.
- **Round-trip times** of our direct probes (the median of the last few, per member), which sort the
  datacenters, and the **coordinates** the probes measured (ours, and each peer's from its acks) for
  `/v1/coordinate/datacenters`.
- `force_leave` (a failed member → left everywhere; `prune` also hides it here at once) and
  `forget_datacenter`; **flood join**: servers of our own datacenter known from the LAN (with a
  `wan_join_port` tag) are joined on the WAN as Consul's servers do, so one `retry_join_wan` per
  datacenter is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Protocol

from proconsul.agent.cluster.gossip import GossipMember
from proconsul.agent.cluster.gossip_snapshot import SnapshotFile
from proconsul.agent.cluster.vivaldi import Coordinate
from proconsul.membership import core as k
from proconsul.membership.config import WAN, Timings
from proconsul.membership.errors import JoinError
from proconsul.membership.pool import RequestHandler, Sealer
from proconsul.membership.view import DEAD, Rec
from proconsul.membership.view import LEFT as LEFT_STATE

ALIVE = "alive"
FAILED = "failed"
LEFT = "left"
STATUS_CODES = {ALIVE: 1, LEFT: 3, FAILED: 4}  # Serf's codes, as /v1/agent/members?wan reports them
DEFAULT_PORT = 8302
LABEL = "wan"
UNREACHABLE_AFTER = 2  # probes in a row without a direct answer: failed in this server's view
RTT_SAMPLES = 5
FLOOD_INTERVAL = 1.0  # how often our own datacenter's servers (from the LAN) are checked for a WAN join


@dataclass(frozen=True)
class WANServer:
    """One server as the WAN pool knows it (what its gossip record says)."""

    node: str
    datacenter: str
    addr: str  # WAN advertise address
    port: int  # WAN (serf_wan) port
    rpc_port: int
    node_id: str = ""
    build: str = ""

    @property
    def name(self) -> str:
        return f"{self.node}.{self.datacenter}"

    @property
    def rpc_address(self) -> str:
        return f"{self.addr}:{self.rpc_port}"

    def tags(self) -> dict[str, str]:
        """The member tags a server gossips on the WAN (Consul's names)."""
        return {"role": "consul", "dc": self.datacenter, "id": self.node_id, "port": str(self.rpc_port),
                "build": self.build, "vsn": "2", "vsn_min": "2", "vsn_max": "3", "segment": ""}

    @classmethod
    def from_record(cls, rec: Rec) -> WANServer | None:
        """The server a pool record describes; None when its name and tags do not fit `<node>.<dc>`."""
        n = rec.node
        dc = n.tags.get("dc", "")
        port = n.tags.get("port", "")
        if not dc or "." in dc or not n.name.endswith("." + dc) or len(n.name) <= len(dc) + 1 or not port.isdigit():
            return None
        return cls(n.name[:-len(dc) - 1], dc, n.addr, n.port, int(port), n.tags.get("id", ""), n.tags.get("build", ""))


@dataclass(frozen=True)
class MemberView:
    """One member and this server's verdict on it."""

    server: WANServer
    status: str
    rtt: float | None  # median of our recent direct round trips, seconds; None before the first
    last_contact: float  # loop time of its last direct answer (0: never)
    pool_alive: bool = True  # the pool's own verdict (alive or suspect), whatever our reach

    @property
    def name(self) -> str:
        return self.server.name


class WANMembership(Protocol):
    """What the router and the API need of the WAN pool."""

    def members(self) -> list[MemberView]: ...

    def servers(self, datacenter: str) -> list[MemberView]: ...

    def datacenters(self) -> list[str]: ...


@dataclass
class _Link:
    """Our own probes of one member."""

    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))
    last_contact: float = 0.0
    misses: int = 0  # probes in a row it did not answer directly


class WANPool(GossipMember):
    """This server in the WAN pool."""

    def __init__(self, me: WANServer, bind: str, *, timings: Timings = WAN, retry_join: list[str] | None = None,
                 retry_interval: float = 30.0, rng: random.Random | None = None, incarnation: int = 0,
                 on_change: Callable[[list[str]], None] | None = None,
                 local_servers: Callable[[], list[tuple[str, str, int]]] | None = None,
                 sealer: Sealer | None = None, on_request: RequestHandler | None = None,
                 snapshot: SnapshotFile | None = None, rejoin_after_leave: bool = False) -> None:
        super().__init__(me.name, me.addr, me.port, me.tags(), label=LABEL, bind=bind, timings=timings, what="WAN",
                         default_port=DEFAULT_PORT, retry_join=retry_join, retry_interval=retry_interval, rng=rng,
                         incarnation=incarnation, on_change=on_change, sealer=sealer, on_request=on_request,
                         snapshot=snapshot, rejoin_after_leave=rejoin_after_leave)
        self.me_name = me.name
        self._me = me
        self.local_servers = local_servers or (lambda: [])
        self._links: dict[str, _Link] = {}
        self._hidden: set[str] = set()  # pruned: kept as left in the pool (stale news cannot revive them), not shown

    @property
    def me(self) -> WANServer:
        return self._me

    def update_me(self, port: int, rpc_port: int) -> None:
        """Our bound WAN port or RPC port changed: a newer incarnation of us is gossiped."""
        me = self._me
        self._me = WANServer(me.node, me.datacenter, me.addr, port, rpc_port, me.node_id, me.build)
        self.core.update_tags(self._now(), self._me.tags(), port)
        if self._started:
            self.pool.flush()

    # ---- what the probes tell us ----------------------------------------------------------------
    def observe(self, kind: str, name: str, detail: Any) -> None:
        if kind == k.RTT:
            link = self._links.setdefault(name, _Link())
            link.rtts.append(max(detail[0], 0.0))
            link.last_contact = self._now()
            if link.misses >= UNREACHABLE_AFTER:
                self.log.info("WAN member %s answers us again", name)
                link.misses = 0
                self.on_change([name])
            link.misses = 0
        elif kind == k.UNREACHED:
            link = self._links.setdefault(name, _Link())
            link.misses += 1
            if link.misses == UNREACHABLE_AFTER:
                self.log.warning("WAN member %s has not answered %d probes of ours directly%s: failed in this "
                                 "server's view", name, UNREACHABLE_AFTER,
                                 " (others reach it)" if detail else "")
                self.on_change([name])
        elif kind == k.JOIN:
            self._hidden.discard(name)
            self._links.pop(name, None)
        elif kind == k.REAPED:
            self._hidden.discard(name)
            self._links.pop(name, None)

    # ---- views ----------------------------------------------------------------------------------
    def status(self, name: str) -> str:
        rec = self.core.view.get(name)
        if rec is None or rec.state == LEFT_STATE:
            return LEFT
        if rec.state == DEAD:
            return FAILED
        link = self._links.get(name)
        if name != self.me_name and link is not None and link.misses >= UNREACHABLE_AFTER:
            return FAILED
        return ALIVE

    def members(self) -> list[MemberView]:
        out = []
        for rec in self.core.view:
            name = rec.node.name
            if name in self._hidden:
                continue
            server = self._me if name == self.me_name else WANServer.from_record(rec)
            if server is None:
                continue
            link = self._links.get(name)
            rtt = 0.0 if name == self.me_name else (median(link.rtts) if link and link.rtts else None)
            out.append(MemberView(server, self.status(name), rtt, link.last_contact if link else 0.0,
                                  rec.state < DEAD))
        out.sort(key=lambda m: m.name)
        return out

    def servers(self, datacenter: str) -> list[MemberView]:
        """The members of one datacenter that have not left (alive or failed)."""
        return [m for m in self.members() if m.server.datacenter == datacenter and m.status != LEFT]

    def datacenters(self) -> list[str]:
        """Every datacenter with at least one member that has not left, by name."""
        return sorted({m.server.datacenter for m in self.members() if m.status != LEFT})

    def member_coordinates(self) -> list[tuple[WANServer, Coordinate]]:
        """(member, coordinate) for every alive member whose coordinate we know, ours included."""
        known = {**self.coordinates.peers, self.me_name: self.coordinates.coord}
        return [(m.server, known[m.name]) for m in self.members() if m.status == ALIVE and m.name in known]

    # ---- operator actions -----------------------------------------------------------------------
    def force_leave(self, name: str, *, prune: bool = False) -> bool:
        """An operator says a failed member is gone: it becomes left everywhere (and with `prune`, is no longer
        listed here). An alive member is refused unless pruned; a running one refutes the leave."""
        rec = self.core.view.get(name)
        if rec is None or name == self.me_name or name in self._hidden:
            return False
        if self.status(name) == ALIVE and not prune:
            return False
        if rec.state < LEFT_STATE:
            self.core.force_leave(self._now(), name, unreachable=True)
            self.pool.flush()
        if prune:
            self._hidden.add(name)
        return True

    def forget_datacenter(self, datacenter: str) -> list[str]:
        """Every server of a datacenter left and pruned at once (removing a dead datacenter)."""
        names = [m.name for m in self.servers(datacenter) if m.name != self.me_name]
        for name in names:
            self.force_leave(name, prune=True)
        return names

    # ---- joining --------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Retry-join (`retry_join_wan`) until a peer answers, and flood-join our own datacenter's servers."""
        loop = asyncio.get_running_loop()
        next_retry = loop.time()
        while not stop.is_set():
            if self.retry_join and self.core.alive_peers() == 0 and loop.time() >= next_retry:
                next_retry = loop.time() + self.retry_interval
                try:
                    await self.join(self.retry_join)
                except JoinError as e:
                    self.log.warning("retry-join-wan: %s; retrying in %.0fs", e, self.retry_interval)
            await self.flood()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLOOD_INTERVAL)

    async def flood(self) -> int:
        """Join the servers of our own datacenter that the LAN knows (as (WAN name, address, WAN port)) and the WAN
        does not (Consul's flood join)."""
        view = self.core.view
        missing = [f"{addr}:{port}" for name, addr, port in self.local_servers() if view.get(name) is None]
        if not missing:
            return 0
        try:
            return await self.pool.join(missing, DEFAULT_PORT)
        except JoinError as e:
            self.log.debug("flood join: %s", e)
            return 0
