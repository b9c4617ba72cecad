"""One agent's member of one gossip pool — the LAN pool, or the servers' WAN pool — on real sockets.

Both pools run the same SWIM + Lifeguard core (`proconsul.membership.core`) in the same asyncio shell
(`proconsul.membership.pool.Pool`, where gossip encryption's `Sealer` plugs in); this class is what the
agent adds around them, the same for both: timings and a pool label, `retry_join` until a peer answers,
a graceful leave that waits for the news to spread, fault injection by member name, membership events
logged and handed on, and the **network coordinate** measured from the probes (Serf's ping delegate:
our acks carry our coordinate, and every probe the target answered itself moves ours by one Vivaldi
step — `coordinates.ProbeCoordinates`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from proconsul.agent.cluster.coordinates import ProbeCoordinates
from proconsul.agent.cluster.gossip_snapshot import SnapshotFile
from proconsul.membership import core as k
from proconsul.membership.config import Timings
from proconsul.membership.core import Membership
from proconsul.membership.errors import JoinError
from proconsul.membership.pool import Pool, RequestHandler, Sealer

LEAVE_PROPAGATE_DELAY = 5.0  # Consul's leave_propagate_delay bound: wait this long at most for the news

_LOG = {k.JOIN: ("info", "joined"), k.FAILED: ("warning", "failed"), k.LEFT_EVENT: ("info", "left"),
        k.SUSPECTED: ("info", "suspected"), k.RECOVERED: ("info", "alive again"), k.REAPED: ("info", "reaped"),
        k.REFUTED: ("warning", "suspected of us: refuted"), k.UPDATE: ("debug", "updated")}
CHANGES = frozenset({k.JOIN, k.FAILED, k.LEFT_EVENT, k.RECOVERED, k.REAPED, k.UPDATE})
_QUIET = frozenset({k.RTT, k.UNREACHED, k.USER})


class GossipMember:
    """This agent in one gossip pool: `start`, `join`, `run` (retry-join), `stop` (with a leave)."""

    def __init__(self, name: str, addr: str, port: int, tags: dict[str, str], *, label: str, bind: str,
                 timings: Timings, what: str, default_port: int, retry_join: list[str] | None = None,
                 retry_interval: float = 30.0, rng: random.Random | None = None, incarnation: int = 0,
                 on_change: Callable[[list[str]], None] | None = None,
                 on_event: Callable[[str, str, Any], None] | None = None, sealer: Sealer | None = None,
                 on_request: RequestHandler | None = None, snapshot: SnapshotFile | None = None,
                 rejoin_after_leave: bool = False) -> None:
        self.rng = rng or random.Random()
        self.core = Membership(name, addr, port, tags, rng=random.Random(self.rng.getrandbits(64)), timings=timings,
                               label=label, incarnation=incarnation)
        self.coordinates = ProbeCoordinates(random.Random(self.rng.getrandbits(64)))
        self.core.want_rtt = True
        self.core.ack_payload = self.coordinates.payload()
        self.bind = bind
        self.what = what
        self.default_port = default_port
        self.log = logging.getLogger(f"proconsul.{what.lower()}")
        self.retry_join = list(retry_join or [])
        self.retry_interval = retry_interval
        # Consul's retry_max / retry_max_wan: after that many failed retry-join rounds (0: never) the agent
        # gives up — `on_give_up(reason)` stops it with that line.
        self.retry_max = 0
        self.on_give_up: Callable[[str], None] | None = None
        self.on_change = on_change or (lambda names: None)
        self.on_event = on_event
        self.pool = Pool(self.core, bind, port, on_events=self._events, sealer=sealer, on_request=on_request)
        self._blocked: set[str] = set()
        self._started = False
        self.snapshot = snapshot  # Serf's snapshot: whom to re-join after a restart (gossip_snapshot.py)
        self.rejoin_after_leave = rejoin_after_leave
        self._rejoin: asyncio.Task[None] | None = None

    def _now(self) -> float:
        return self.pool.now() if self._started else 0.0

    @property
    def port(self) -> int:
        return self.pool.port

    async def start(self) -> int:
        """Listen; with a snapshot, replay it (raises SnapshotError when it cannot be used) and re-join the
        members it remembers, in the background."""
        rejoin: list[str] = []
        if self.snapshot is not None:
            remembered = self.snapshot.load()
            self.core.event_ltime = max(self.core.event_ltime, remembered.event_clock)
            rejoin = remembered.rejoin_addresses(self.core.name, self.rejoin_after_leave)
            if remembered.left and remembered.alive and not rejoin:
                self.log.info("not re-joining the %d %s members known before: this agent left gracefully "
                              "(rejoin_after_leave is off)", len(remembered.alive), self.what)
        port = await self.pool.start()
        self._started = True
        if rejoin:
            self._rejoin = asyncio.create_task(self._rejoin_previous(rejoin))
        return port

    async def _rejoin_previous(self, addresses: list[str]) -> None:
        """Serf's rejoin: the members alive when we stopped, one at a time in random order, until one answers."""
        order = list(addresses)
        self.rng.shuffle(order)
        for addr in order:
            if self.core.alive_peers() > 0:
                return  # joined meanwhile (retry_join, or a peer found us)
            try:
                await self.pool.join([addr], self.default_port)
            except JoinError as e:
                self.log.debug("re-join through %s: %s", addr, e)
                continue
            self.log.info("re-joined the %s pool through %s, a member known before the restart", self.what, addr)
            return
        self.log.warning("could not re-join the %s pool through any of the %d members known before the restart",
                         self.what, len(order))

    async def stop(self, leave: bool) -> None:
        if self._rejoin is not None:
            self._rejoin.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rejoin
        if leave and self._started:
            if self.snapshot is not None:
                self.snapshot.leave()
            spread = await self.pool.leave(LEAVE_PROPAGATE_DELAY)
            self.log.info("left the %s pool (%s)", self.what,
                          "news spread" if spread else "gave up waiting for the news to spread")
        await self.pool.stop()
        if self.snapshot is not None:
            self.snapshot.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Retry-join until a peer answers (Consul's -retry-join), then wait for shutdown."""
        failed = 0
        while not stop.is_set():
            if self.retry_join and self.core.alive_peers() == 0:
                try:
                    await self.join(self.retry_join)
                except JoinError as e:
                    failed += 1
                    if self.retry_max and failed >= self.retry_max and self.on_give_up is not None:
                        self.on_give_up(f"could not join the {self.what} pool after {failed} attempts "
                                        f"(retry_max{'_wan' if self.what == 'WAN' else ''} = {self.retry_max}): {e}")
                        return
                    self.log.warning("retry-join: %s; retrying in %gs", e, self.retry_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_interval if self.retry_join else 3600.0)

    async def join(self, addresses: list[str]) -> int:
        """Push-pull with every address; returns how many answered. Raises JoinError if none did."""
        ok = await self.pool.join(addresses, self.default_port)
        self.log.info("joined the %s pool through %d of %d addresses", self.what, ok, len(addresses))
        return ok

    @property
    def blocked(self) -> set[str]:
        return self._blocked

    @blocked.setter
    def blocked(self, names: set[str]) -> None:
        """Fault injection: drop gossip to and from these members (by name; empty heals)."""
        self._blocked = set(names)
        addrs = set()
        for name in names:
            r = self.core.view.get(name)
            if r is not None:
                addrs.add((r.node.addr, r.node.port))
        self.pool.blocked = addrs

    def observe(self, kind: str, name: str, detail: Any) -> None:
        """A subclass's look at every event, before it is logged and handed on."""

    def _remember(self, kind: str, name: str, detail: Any) -> None:
        snapshot = self.snapshot
        assert snapshot is not None
        if kind == k.USER:
            snapshot.event_clock(int(detail.get("LTime", 0)))
        elif name == self.core.name:
            return
        elif kind in (k.JOIN, k.UPDATE, k.RECOVERED):
            rec = self.core.view.get(name)
            if rec is not None:
                host = rec.node.addr
                snapshot.alive(name, f"[{host}]:{rec.node.port}" if ":" in host else f"{host}:{rec.node.port}")
        elif kind in (k.FAILED, k.LEFT_EVENT, k.REAPED):
            snapshot.gone(name)

    def _events(self, events: list[tuple[str, str, Any]]) -> None:
        changed = []
        coords = self.coordinates
        for kind, name, detail in events:
            if kind == k.RTT:
                if coords.on_rtt(name, detail[0], detail[1]):
                    self.core.ack_payload = coords.payload()
            elif kind in (k.LEFT_EVENT, k.REAPED):
                coords.forget(name)
            self.observe(kind, name, detail)
            if self.snapshot is not None:
                self._remember(kind, name, detail)
            if kind not in _QUIET:
                level, what = _LOG.get(kind, ("debug", kind))
                getattr(self.log, level)("member %s %s (incarnation %s)", name, what, detail)
            if kind in CHANGES:
                changed.append(name)
            if self.on_event is not None:
                self.on_event(kind, name, detail)
        if changed:
            self.on_change(changed)
