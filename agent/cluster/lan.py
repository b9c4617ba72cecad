"""LAN gossip: the SWIM + Lifeguard pool (`proconsul.membership`) on `--serf-lan-port` (8301, UDP and TCP).

This module wires the membership core and its asyncio shell (`membership.pool.Pool`) into the agent:
timings from Consul's `gossip_lan { … }` block, the pool label `lan:<datacenter>` (a packet from
another datacenter's pool is dropped, a push-pull from one is refused with a reason), `-retry-join`
until a peer answers, a graceful leave that waits for the news to spread, membership events handed
to the cluster (which reconciles them into the catalog), and this agent's LAN network coordinate
measured from its probes (all of that in `gossip.GossipMember`, which the WAN pool shares).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proconsul.agent.cluster.gossip import GossipMember
from proconsul.agent.cluster.gossip_snapshot import SnapshotFile
from proconsul.agent.cluster.membership import MemberList
from proconsul.membership.config import LAN, Timings
from proconsul.membership.errors import JoinError
from proconsul.membership.pool import RequestHandler, Sealer, parse_address

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


class LANGossip(GossipMember):
    """The agent's LAN pool member: label `lan:<datacenter>`, members as Serf statuses, user events."""

    def __init__(self, name: str, addr: str, port: int, tags: dict[str, str], datacenter: str, bind: str, *,
                 timings: Timings = LAN, retry_join: list[str] | None = None, retry_interval: float = 30.0,
                 rng: random.Random | None = None, incarnation: int = 0,
                 on_change: Callable[[list[str]], None] | None = None,
                 on_event: Callable[[str, str, Any], None] | None = None, sealer: Sealer | None = None,
                 on_request: RequestHandler | None = None, snapshot: SnapshotFile | None = None,
                 rejoin_after_leave: bool = False) -> None:
        super().__init__(name, addr, port, tags, label=f"lan:{datacenter}", bind=bind, timings=timings, what="LAN",
                         default_port=DEFAULT_PORT, retry_join=retry_join, retry_interval=retry_interval, rng=rng,
                         incarnation=incarnation, on_change=on_change, on_event=on_event, sealer=sealer,
                         on_request=on_request, snapshot=snapshot, rejoin_after_leave=rejoin_after_leave)
        self.datacenter = datacenter
        self.members = MemberList(self.core, self._now)

    def fire_event(self, id: str, name: str, payload: bytes, node_filter: str = "", service_filter: str = "",
                   tag_filter: str = "", ltime: int = 0) -> dict[str, Any]:
        """Gossip a user event to the pool (delivered here too, through `on_event`)."""
        ev = self.core.fire_event(self.pool.now(), id, name, payload, node_filter, service_filter, tag_filter,
                                  ltime)
        self.pool.flush()
        return ev
