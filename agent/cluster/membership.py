"""LAN membership, the pure part: who is in the cluster, and who is alive (no sockets, no clock).

A gossip-style heartbeat failure detector (van Renesse, Minsky & Hayden, 1998). Every member
bumps its own heartbeat counter each round and pushes its whole member list to a random peer,
which merges it and answers with its own (push-pull). A member's entry with the higher
`(incarnation, heartbeat)` wins a merge, so news travels in O(log n) rounds. Each node judges
liveness for itself: a member whose heartbeat has not advanced for `fail_after` seconds of *this
node's* clock is failed; when it advances again the member is alive. Leaving is news the member
spreads about itself (status "left" with a bumped heartbeat), so it wins every merge.

Times are passed in (`now`), so the rules are unit-tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ALIVE = "alive"
FAILED = "failed"
LEFT = "left"
# Serf's member status codes, as /v1/agent/members reports them.
STATUS_CODES = {ALIVE: 1, LEFT: 3, FAILED: 4}


class MembershipError(Exception):
    """A join or a gossip message was refused (wrong datacenter, malformed member)."""


@dataclass(frozen=True)
class Member:
    name: str
    addr: str  # host
    port: int  # LAN (gossip) port
    tags: dict[str, str] = field(default_factory=dict)
    status: str = ALIVE
    incarnation: int = 0  # bumped by the member itself when it restarts
    heartbeat: int = 0  # bumped by the member itself every round

    @property
    def version(self) -> tuple[int, int]:
        return (self.incarnation, self.heartbeat)

    @property
    def is_server(self) -> bool:
        return self.tags.get("role") == "consul"

    @property
    def rpc_address(self) -> str:
        return f"{self.addr}:{self.tags.get('port', '8300')}"

    def to_wire(self) -> list[Any]:
        return [self.name, self.addr, self.port, self.tags, self.status, self.incarnation, self.heartbeat]

    @classmethod
    def from_wire(cls, w: Any) -> Member:
        if (type(w) is not list or len(w) != 7 or type(w[0]) is not str or not w[0] or type(w[1]) is not str
                or type(w[2]) is not int or type(w[3]) is not dict or w[4] not in STATUS_CODES
                or type(w[5]) is not int or type(w[6]) is not int
                or not all(type(k) is str and type(v) is str for k, v in w[3].items())):
            raise MembershipError(f"malformed member entry: {w!r:.120}")
        return cls(w[0], w[1], w[2], dict(w[3]), w[4], w[5], w[6])


@dataclass
class _Seen:
    member: Member
    changed_at: float  # local time the heartbeat last advanced (or the entry arrived)


class MemberList:
    """This node's view of the LAN pool."""

    def __init__(self, me: Member, *, fail_after: float = 6.0, reap_after: float = 72 * 3600.0) -> None:
        self.me_name = me.name
        self.fail_after = fail_after
        self.reap_after = reap_after
        self._seen: dict[str, _Seen] = {me.name: _Seen(me, 0.0)}
        self._failed: set[str] = set()

    @property
    def me(self) -> Member:
        return self._seen[self.me_name].member

    def tick(self, now: float) -> list[str]:
        """One round: bump our heartbeat, judge liveness. Returns names whose status changed."""
        mine = self._seen[self.me_name]
        mine.member = replace(mine.member, heartbeat=mine.member.heartbeat + 1)
        mine.changed_at = now
        changed = []
        for name, seen in list(self._seen.items()):
            if name == self.me_name:
                continue
            if seen.member.status == LEFT:
                if now - seen.changed_at > self.reap_after:
                    del self._seen[name]
                continue
            failed = now - seen.changed_at > self.fail_after
            if failed and name not in self._failed:
                self._failed.add(name)
                changed.append(name)
            elif failed and now - seen.changed_at > self.reap_after:
                del self._seen[name]
                self._failed.discard(name)
        return changed

    def merge(self, members: list[Member], now: float) -> list[str]:
        """Take in a peer's list; returns names that are new or whose status changed."""
        changed = []
        for m in members:
            if m.name == self.me_name:
                if m.version > self.me.version:
                    # Someone remembers us with a newer heartbeat (we restarted): jump ahead of it.
                    seen = self._seen[self.me_name]
                    seen.member = replace(seen.member, incarnation=m.incarnation + 1, heartbeat=0)
                continue
            seen = self._seen.get(m.name)
            if seen is None:
                self._seen[m.name] = _Seen(m, now)
                changed.append(m.name)
                continue
            if m.version <= seen.member.version:
                continue
            before, old_tags = self.status(m.name), seen.member.tags
            seen.member = m
            seen.changed_at = now
            self._failed.discard(m.name)
            if self.status(m.name) != before or m.tags != old_tags:
                changed.append(m.name)
        return changed

    def update_me(self, port: int, tags: dict[str, str]) -> None:
        """Our own port or tags changed (a port bound as 0): the news travels with the next heartbeat."""
        seen = self._seen[self.me_name]
        seen.member = replace(seen.member, port=port, tags=dict(tags))

    def leave(self) -> Member:
        """Mark ourselves left (the news to spread before shutting down)."""
        seen = self._seen[self.me_name]
        seen.member = replace(seen.member, status=LEFT, heartbeat=seen.member.heartbeat + 1)
        return seen.member

    def force_leave(self, name: str, now: float) -> bool:
        """An operator says a failed member is gone for good: mark it left (Consul's force-leave)."""
        seen = self._seen.get(name)
        if seen is None or name == self.me_name or self.status(name) == ALIVE:
            return False
        seen.member = replace(seen.member, status=LEFT, heartbeat=seen.member.heartbeat + 1)
        seen.changed_at = now
        self._failed.discard(name)
        return True

    def status(self, name: str) -> str:
        seen = self._seen.get(name)
        if seen is None:
            return LEFT
        if seen.member.status == LEFT:
            return LEFT
        return FAILED if name in self._failed else ALIVE

    def members(self) -> list[tuple[Member, str]]:
        """Every known member with this node's verdict on it, sorted by name."""
        return [(s.member, self.status(n)) for n, s in sorted(self._seen.items())]

    def alive(self, *, servers_only: bool = False) -> list[Member]:
        return [m for m, st in self.members() if st == ALIVE and (m.is_server or not servers_only)]

    def peers(self) -> list[Member]:
        """Alive members other than us: the candidates for the next push-pull."""
        return [m for m in self.alive() if m.name != self.me_name]

    def wire(self) -> list[list[Any]]:
        """Our list as gossip: entries we judge failed still travel, with the versions we saw."""
        return [s.member.to_wire() for s in self._seen.values()]
