"""LAN gossip: the SWIM + Lifeguard pool (`proconsul.membership`) on `--serf-lan-port` (8301, UDP and TCP).

This module wires the membership core and its asyncio shell (`membership.pool.Pool`) into the agent:
timings from Consul's `gossip_lan { … }` block, the pool label `lan:<datacenter>` (a packet from
another datacenter's pool is dropped, a push-pull from one is refused with a reason), `-retry-join`
until a peer answers, a graceful leave that waits for the news to spread, and membership events handed
to the cluster (which reconciles them into the catalog). With gossip encryption the agent passes the
keyring's sealer (every frame AES-GCM sealed, membership/keyring.py) and its keyring request handler
(agent/cluster/keyring.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proconsul.agent.cluster.membership import MemberList
from proconsul.membership import core as k
from proconsul.membership.config import LAN, Timings
from proconsul.membership.core import Membership
from proconsul.membership.errors import JoinError
from proconsul.membership.pool import Pool, RequestHandler, Sealer, parse_address

log = logging.getLogger("proconsul.lan")

LEAVE_PROPAGATE_DELAY = 5.0  # Consul's leave_propagate_delay bound: wait this long at most for the news
DEFAULT_PORT = 8301

__all__ = ["JoinError", "LANGossip", "lan_timings", "parse_join_address"]


def parse_join_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    return parse_address(text, default_port)


def lan_timings(block: dict[str, Any], reconnect_timeout: float, parse_duration: Callable[[Any], float],
                base: Timings = LAN, where: str = "gossip_lan") -> Timings:
    """Consul's `gossip_lan` block (durations as Consul writes them) over memberlist's LAN defaults."""
    from proconsul.membership.config import DURATION_KEYS

    parsed = {key: parse_duration(v) if key in DURATION_KEYS and isinstance(v, str) else v for key, v in block.items()}
    return replace(base.with_consul(parsed, where), reconnect_timeout=reconnect_timeout)


_LOG = {k.JOIN: ("info", "joined"), k.FAILED: ("warning", "failed"), k.LEFT_EVENT: ("info", "left"),
        k.SUSPECTED: ("info", "suspected"), k.RECOVERED: ("info", "alive again"), k.REAPED: ("info", "reaped"),
        k.REFUTED: ("warning", "suspected of us: refuted"), k.UPDATE: ("debug", "updated")}
_CHANGES = {k.JOIN, k.FAILED, k.LEFT_EVENT, k.RECOVERED, k.REAPED, k.UPDATE}


class LANGossip:
    """The agent's LAN pool member."""

    def __init__(self, name: str, addr: str, port: int, tags: dict[str, str], datacenter: str, bind: str, *,
                 timings: Timings = LAN, retry_join: list[str] | None = None, retry_interval: float = 30.0,
                 rng: random.Random | None = None, incarnation: int = 0,
                 on_change: Callable[[list[str]], None] | None = None,
                 on_event: Callable[[str, str, Any], None] | None = None, sealer: Sealer | None = None,
                 on_request: RequestHandler | None = None) -> None:
        self.rng = rng or random.Random()
        self.core = Membership(name, addr, port, tags, rng=random.Random(self.rng.getrandbits(64)), timings=timings,
                               label=f"lan:{datacenter}", incarnation=incarnation)
        self.datacenter = datacenter
        self.bind = bind
        self.retry_join = list(retry_join or [])
        self.retry_interval = retry_interval
        self.on_change = on_change or (lambda names: None)
        self.on_event = on_event
        self.pool = Pool(self.core, bind, port, on_events=self._events, sealer=sealer, on_request=on_request)
        self.members = MemberList(self.core, self._now)
        self._blocked: set[str] = set()
        self._started = False

    def _now(self) -> float:
        return self.pool.now() if self._started else 0.0

    @property
    def port(self) -> int:
        return self.pool.port

    async def start(self) -> int:
        port = await self.pool.start()
        self._started = True
        return port

    async def stop(self, leave: bool) -> None:
        if leave and self._started:
            spread = await self.pool.leave(LEAVE_PROPAGATE_DELAY)
            log.info("left the LAN pool (%s)", "news spread" if spread else "gave up waiting for the news to spread")
        await self.pool.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Retry-join until a peer answers (Consul's -retry-join), then wait for shutdown."""
        while not stop.is_set():
            if self.retry_join and not self.members.peers():
                try:
                    await self.join(self.retry_join)
                except JoinError as e:
                    log.warning("retry-join: %s; retrying in %.0fs", e, self.retry_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_interval if self.retry_join else 3600.0)

    async def join(self, addresses: list[str]) -> int:
        """Push-pull with every address; returns how many answered. Raises JoinError if none did."""
        ok = await self.pool.join(addresses, DEFAULT_PORT)
        log.info("joined the LAN pool through %d of %d addresses", ok, len(addresses))
        return ok

    def fire_event(self, id: str, name: str, payload: bytes, node_filter: str = "", service_filter: str = "",
                   tag_filter: str = "", ltime: int = 0) -> dict[str, Any]:
        """Gossip a user event to the pool (delivered here too, through `on_event`)."""
        ev = self.core.fire_event(self.pool.now(), id, name, payload, node_filter, service_filter, tag_filter,
                                  ltime)
        self.pool.flush()
        return ev

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

    def _events(self, events: list[tuple[str, str, Any]]) -> None:
        changed = []
        for kind, name, detail in events:
            level, what = _LOG.get(kind, ("debug", kind))
            if kind == k.USER:
                log.debug("user event %s from %s", detail.get("Name"), name)
            elif kind != k.RTT:
                getattr(log, level)("member %s %s (incarnation %s)", name, what, detail)
            if kind in _CHANGES:
                changed.append(name)
            if self.on_event is not None:
                self.on_event(kind, name, detail)
        if changed:
            self.on_change(changed)
