"""The LAN pool as the rest of the agent sees it: members with Serf's statuses, read from the SWIM core.

The protocol lives in `proconsul.membership` (a pure SWIM + Lifeguard core); this module turns the
core's view into `Member` rows with Consul's statuses — alive (alive or suspect: Serf reports a suspect
member as alive), failed (dead) and left — for reconcile, autopilot, bootstrap and `/v1/agent/members`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proconsul.membership.core import Membership
from proconsul.membership.view import DEAD, Rec
from proconsul.membership.view import LEFT as LEFT_STATE

ALIVE = "alive"
FAILED = "failed"
LEFT = "left"
# Serf's member status codes, as /v1/agent/members reports them.
STATUS_CODES = {ALIVE: 1, LEFT: 3, FAILED: 4}


@dataclass(frozen=True)
class Member:
    name: str
    addr: str  # host
    port: int  # LAN (gossip) port
    tags: dict[str, str] = field(default_factory=dict)
    status: str = ALIVE
    incarnation: int = 0

    @property
    def is_server(self) -> bool:
        return self.tags.get("role") == "consul"

    @property
    def rpc_address(self) -> str:
        return f"{self.addr}:{self.tags.get('port', '8300')}"


def status_of(rec: Rec) -> str:
    return LEFT if rec.state == LEFT_STATE else FAILED if rec.state == DEAD else ALIVE


def member_of(rec: Rec) -> Member:
    n = rec.node
    return Member(n.name, n.addr, n.port, dict(n.tags), status_of(rec), rec.inc)


class MemberList:
    """This agent's view of the LAN pool, over the membership core (which the gossip shell drives)."""

    def __init__(self, core: Membership, clock: Callable[[], float]) -> None:
        self.core = core
        self._clock = clock

    @property
    def me(self) -> Member:
        return member_of(self.core.me)

    def members(self) -> list[tuple[Member, str]]:
        """Every known member with this node's verdict on it, sorted by name."""
        out = [(member_of(r), status_of(r)) for r in self.core.view]
        out.sort(key=lambda p: p[0].name)
        return out

    def status(self, name: str) -> str:
        r = self.core.view.get(name)
        return LEFT if r is None else status_of(r)

    def alive(self, *, servers_only: bool = False) -> list[Member]:
        return [m for m, st in self.members() if st == ALIVE and (m.is_server or not servers_only)]

    def peers(self) -> list[Member]:
        return [m for m in self.alive() if m.name != self.core.name]

    def update_me(self, port: int, tags: dict[str, str]) -> None:
        """Our own port or tags changed (a port bound as 0): a newer incarnation of us is gossiped."""
        self.core.update_tags(self._clock(), tags, port)

    def force_leave(self, name: str, now: float) -> bool:
        """Consul's force-leave: a failed member becomes left everywhere. False for an alive or unknown one."""
        return self.core.force_leave(now, name)
