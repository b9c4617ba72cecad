"""The WAN pool's pure core: which servers of which datacenters exist, and which of them answer.

Servers are few (3–5 per datacenter), so every server exchanges its list with every other one each
round: the exchange spreads who exists (and who left), and a member's liveness is judged from this
server's own exchanges with it — a server is `failed` once nothing has come back from it for
`fail_after` seconds, and alive again as soon as an exchange succeeds. The round trip of each
exchange is the member's RTT, which orders datacenters by distance.

A member's news carries a version `(incarnation, rank)`: a restart bumps the incarnation, and at
the same incarnation "left" (rank 1) beats "alive" (rank 0). A member told it has left while it is
running refutes that by bumping its incarnation.

Times are passed in (`now`), so the rules are unit-tested without a clock. This module is the
whole contract the router and the HTTP API rely on (`WANMembership`), so the pool can move to the
SWIM membership library without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from statistics import median
from typing import Any, Protocol

ALIVE = "alive"
FAILED = "failed"
LEFT = "left"
STATUS_CODES = {ALIVE: 1, LEFT: 3, FAILED: 4}  # Serf's codes, as /v1/agent/members?wan reports them
_RANK = {ALIVE: 0, LEFT: 1}


class WANError(Exception):
    """A malformed WAN message or member entry, or a refused operation; the message says why."""


@dataclass(frozen=True)
class WANServer:
    """One server as the WAN pool knows it (what it says about itself)."""

    node: str
    datacenter: str
    addr: str  # WAN advertise address
    port: int  # WAN (serf_wan) port
    rpc_port: int
    node_id: str = ""
    status: str = ALIVE  # ALIVE or LEFT: what the member says of itself
    incarnation: int = 0
    build: str = ""

    @property
    def name(self) -> str:
        return f"{self.node}.{self.datacenter}"

    @property
    def rpc_address(self) -> str:
        return f"{self.addr}:{self.rpc_port}"

    @property
    def version(self) -> tuple[int, int]:
        return (self.incarnation, _RANK[self.status])

    def to_wire(self) -> list[Any]:
        return [self.node, self.datacenter, self.addr, self.port, self.rpc_port, self.node_id, self.status,
                self.incarnation, self.build]

    @classmethod
    def from_wire(cls, w: Any) -> WANServer:
        if (type(w) is not list or len(w) != 9 or not all(type(x) is str for x in (w[0], w[1], w[2], w[5], w[8]))
                or not w[0] or not w[1] or "." in w[1] or type(w[3]) is not int or type(w[4]) is not int
                or w[6] not in _RANK or type(w[7]) is not int or not (0 < w[3] < 65536 and 0 < w[4] < 65536)):
            raise WANError(f"malformed WAN member entry: {w!r:.160}")
        return cls(w[0], w[1].lower(), w[2], w[3], w[4], w[5], w[6], w[7], w[8])


@dataclass
class _Entry:
    server: WANServer
    last_contact: float  # local time of the last successful exchange (or of first hearing of it)
    failed: bool = False
    rtts: list[float] = field(default_factory=list)  # the last few round trips, seconds
    changed_at: float = 0.0  # local time its status last changed (for reaping)
    hidden: bool = False  # pruned: kept only so stale news of it cannot bring it back
    coord: Any = None  # its network coordinate, as it last told us (vivaldi.Coordinate)


@dataclass(frozen=True)
class MemberView:
    """One member and this server's verdict on it."""

    server: WANServer
    status: str
    rtt: float | None  # median of the recent round trips, seconds; None before the first exchange
    last_contact: float

    @property
    def name(self) -> str:
        return self.server.name


class WANMembership(Protocol):
    """What the router and the API need of the WAN pool — the seam for moving it to SWIM."""

    def members(self) -> list[MemberView]: ...

    def servers(self, datacenter: str) -> list[MemberView]: ...

    def datacenters(self) -> list[str]: ...


RTT_SAMPLES = 5


class WANPool:
    """This server's view of the WAN pool."""

    def __init__(self, me: WANServer, *, fail_after: float = 6.0, reap_after: float = 72 * 3600.0) -> None:
        self.me_name = me.name
        self.fail_after = fail_after
        self.reap_after = reap_after
        self._entries: dict[str, _Entry] = {me.name: _Entry(me, 0.0)}

    @property
    def me(self) -> WANServer:
        return self._entries[self.me_name].server

    # ---- news ---------------------------------------------------------------------------------
    def merge(self, servers: list[WANServer], now: float) -> list[str]:
        """Take in a peer's list; returns names that are new or whose status changed."""
        changed = []
        for s in servers:
            if s.name == self.me_name:
                if s.version > self.me.version or (s.status == LEFT and self.me.status == ALIVE
                                                   and s.incarnation >= self.me.incarnation):
                    # Someone says we left (a force-leave) or remembers a newer us: refute, we are running.
                    mine = self._entries[self.me_name]
                    if self.me.status == ALIVE:
                        mine.server = replace(mine.server, incarnation=max(s.incarnation, self.me.incarnation) + 1)
                continue
            entry = self._entries.get(s.name)
            if entry is None:
                self._entries[s.name] = _Entry(s, now, changed_at=now)
                changed.append(s.name)
                continue
            if s.version <= entry.server.version:
                continue
            before = self.status(s.name)
            entry.server = s
            if s.status == ALIVE:
                entry.hidden = False
            if s.status == ALIVE and entry.failed:
                entry.last_contact = now  # a restart: give it a full fail_after to answer us
                entry.failed = False
            if self.status(s.name) != before:
                entry.changed_at = now
                changed.append(s.name)
        return changed

    def contact(self, name: str, now: float, rtt: float) -> bool:
        """An exchange with `name` succeeded after `rtt` seconds. Returns True if it was failed before."""
        entry = self._entries.get(name)
        if entry is None or name == self.me_name:
            return False
        entry.last_contact = now
        entry.rtts = [*entry.rtts[-(RTT_SAMPLES - 1):], max(rtt, 0.0)]
        was_failed = entry.failed
        if was_failed:
            entry.failed = False
            entry.changed_at = now
        return was_failed

    def tick(self, now: float) -> list[str]:
        """Judge liveness and reap the long-gone. Returns names whose status changed."""
        changed = []
        for name, entry in list(self._entries.items()):
            if name == self.me_name:
                continue
            if entry.server.status == LEFT:
                if now - entry.changed_at > self.reap_after:
                    del self._entries[name]
                continue
            silent = now - entry.last_contact
            if not entry.failed and silent > self.fail_after:
                entry.failed = True
                entry.changed_at = now
                changed.append(name)
            elif entry.failed and now - entry.changed_at > self.reap_after:
                del self._entries[name]
                changed.append(name)
        return changed

    def set_coordinate(self, name: str, coord: Any) -> None:
        entry = self._entries.get(name)
        if entry is not None and coord is not None:
            entry.coord = coord

    def coordinates(self) -> list[tuple[WANServer, Any]]:
        """(member, coordinate) for every alive member whose coordinate we know, ours included."""
        return [(e.server, e.coord) for n, e in sorted(self._entries.items())
                if e.coord is not None and self.status(n) == ALIVE]

    def leave(self) -> WANServer:
        """Mark ourselves left: the news to push before shutting down."""
        mine = self._entries[self.me_name]
        mine.server = replace(mine.server, status=LEFT)
        return mine.server

    def update_me(self, **changes: Any) -> None:
        mine = self._entries[self.me_name]
        mine.server = replace(mine.server, **changes)

    def force_leave(self, name: str, now: float, *, prune: bool = False) -> bool:
        """An operator says a failed member is gone: mark it left (and with `prune`, forget it now)."""
        entry = self._entries.get(name)
        if entry is None or name == self.me_name:
            return False
        if self.status(name) == ALIVE and not prune:
            return False
        entry.server = replace(entry.server, status=LEFT)
        entry.failed = False
        entry.changed_at = now
        entry.hidden = prune
        return True

    def forget_datacenter(self, datacenter: str, now: float) -> list[str]:
        """Mark every server of a datacenter left at once (removing a dead datacenter)."""
        names = [n for n, e in self._entries.items() if e.server.datacenter == datacenter and n != self.me_name]
        for n in names:
            self.force_leave(n, now, prune=True)
        return names

    # ---- views --------------------------------------------------------------------------------
    def status(self, name: str) -> str:
        entry = self._entries.get(name)
        if entry is None or entry.server.status == LEFT:
            return LEFT
        return FAILED if entry.failed else ALIVE

    def members(self) -> list[MemberView]:
        out = []
        for name, e in sorted(self._entries.items()):
            if e.hidden:
                continue
            rtt = 0.0 if name == self.me_name else (median(e.rtts) if e.rtts else None)
            out.append(MemberView(e.server, self.status(name), rtt, e.last_contact))
        return out

    def servers(self, datacenter: str) -> list[MemberView]:
        """The members of one datacenter that have not left (alive or failed)."""
        return [m for m in self.members() if m.server.datacenter == datacenter and m.status != LEFT]

    def datacenters(self) -> list[str]:
        """Every datacenter with at least one member that has not left, by name."""
        return sorted({m.server.datacenter for m in self.members() if m.status != LEFT})

    def targets(self) -> list[WANServer]:
        """Who to exchange with this round: every member that has not left, but us."""
        return [e.server for n, e in self._entries.items() if n != self.me_name and e.server.status != LEFT]

    def wire(self) -> list[list[Any]]:
        return [e.server.to_wire() for e in self._entries.values()]
