"""One member's view of the pool: every member it knows, with incarnation and state.

Records are immutable and replaced on change. A `View` keeps, besides the records:
- an index space (`size`, `name_at`) for round-robin probing and random picks without copying lists;
- 256 bucket hashes of (name, incarnation, state), kept up to date per change, so a push-pull compares
  two views with a 2 KiB summary and exchanges entries only for the buckets that differ;
- counts per state and a graveyard of dead and left members ordered by time of death (for reaping).

A view may sit on a shared `Baseline`: records that every view of a simulated pool agrees on, held once.
A view then stores only its differences; `fold` moves records every view agrees on back into the
baseline. That is how the simulator keeps 10,000 views of 10,000 members in memory. In an agent the
baseline is private and empty, and every record lives in the view itself — the same code path.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator

from .errors import InvariantViolation

ALIVE, SUSPECT, DEAD, LEFT = 0, 1, 2, 3
STATE_NAMES = ("alive", "suspect", "dead", "left")
BUCKET_BITS = 8
BUCKETS = 1 << BUCKET_BITS
_MASK64 = (1 << 64) - 1
_MISSING = object()


def name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def entry_hash(h: int, incarnation: int, state: int) -> int:
    """A 64-bit hash of one digest entry (splitmix64 finaliser over the name hash, incarnation and state)."""
    x = (h ^ (incarnation * 0x9E3779B97F4A7C15) ^ (state << 61)) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Node:
    """Who a member is: name, address, gossip port and tags. Immutable; shared between records."""

    __slots__ = ("name", "addr", "port", "tags", "h")

    def __init__(self, name: str, addr: str, port: int, tags: dict[str, str] | None = None) -> None:
        self.name = name
        self.addr = addr
        self.port = port
        self.tags = tags if tags is not None else {}
        self.h = name_hash(name)

    def same(self, addr: str, port: int, tags: dict[str, str]) -> bool:
        return self.addr == addr and self.port == port and self.tags == tags

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.addr!r}, {self.port})"


class Rec:
    """One member as a view sees it. Immutable: a change is a new record."""

    __slots__ = ("node", "inc", "state", "since", "eh")

    def __init__(self, node: Node, inc: int, state: int, since: float) -> None:
        self.node = node
        self.inc = inc
        self.state = state
        self.since = since  # local time of the last change of state
        self.eh = entry_hash(node.h, inc, state)

    @property
    def name(self) -> str:
        return self.node.name

    def __repr__(self) -> str:
        return f"Rec({self.node.name!r}, inc={self.inc}, {STATE_NAMES[self.state]}, since={self.since:.3f})"


class Baseline:
    """Records shared read-only by the views of one simulated pool (an agent's baseline is empty)."""

    def __init__(self, records: Iterable[Rec] = ()) -> None:
        self.records: dict[str, Rec] = {}
        self.names: list[str] = []
        self.bucket_names: list[list[str]] = [[] for _ in range(BUCKETS)]
        self.hashes = [0] * BUCKETS
        self.counts = [0, 0, 0, 0]
        for r in records:
            self._add(r)

    def _add(self, r: Rec) -> None:
        name = r.node.name
        if name in self.records:
            raise ValueError(f"duplicate member {name!r} in a baseline")
        self.records[name] = r
        self.names.append(name)
        self.bucket_names[r.node.h & (BUCKETS - 1)].append(name)
        self.hashes[r.node.h & (BUCKETS - 1)] ^= r.eh
        self.counts[r.state] += 1


class View:
    """name -> record for one member, on top of a (possibly shared) baseline."""

    def __init__(self, baseline: Baseline | None = None) -> None:
        base = baseline if baseline is not None else Baseline()
        self.baseline = base
        self._base = base.records
        self._base_names = base.names
        self._own: dict[str, Rec | None] = {}  # differences from the baseline; None: forgotten here
        self._extra: list[str] = []  # names not in the baseline, appended to its index space
        self._extra_pos: dict[str, int] = {}
        self._extra_buckets: dict[int, list[str]] = {}
        self._delta: dict[int, int] = {}  # bucket -> our hash XOR the baseline's (only non-zero ones)
        self.counts = list(base.counts)  # members per state in this view
        # (since, name) of members that died or left, oldest first; entries may be stale (checked on use).
        self.graveyard: list[tuple[float, str]] = [(r.since, r.node.name) for r in base.records.values()
                                                   if r.state >= DEAD]
        heapq.heapify(self.graveyard)

    # ---- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> Rec | None:
        r = self._own.get(name, _MISSING)
        if r is _MISSING:
            return self._base.get(name)
        return r  # type: ignore[return-value]

    @property
    def size(self) -> int:
        """The index space for probing and random picks (some indexes may hold forgotten members)."""
        return len(self._base_names) + len(self._extra)

    def name_at(self, i: int) -> str:
        nb = len(self._base_names)
        return self._base_names[i] if i < nb else self._extra[i - nb]

    def __iter__(self) -> Iterator[Rec]:
        for name in self._base_names:
            r = self.get(name)
            if r is not None:
                yield r
        for name in self._extra:
            r = self._own.get(name)
            if r is not None:
                yield r

    def __len__(self) -> int:
        return sum(self.counts)

    def differences(self) -> Iterator[tuple[str, Rec | None]]:
        """This view's records that differ from its baseline (cheap: no walk over the baseline)."""
        return iter(self._own.items())

    # ---- writing -----------------------------------------------------------------------------
    def put(self, rec: Rec) -> Rec | None:
        """Store a record, replacing the member's previous one (returned). An incarnation never goes back."""
        name = rec.node.name
        old = self.get(name)
        if old is not None:
            if rec.inc < old.inc:
                raise InvariantViolation(f"incarnation of {name!r} would go back from {old.inc} to {rec.inc}")
            self.counts[old.state] -= 1
            x = old.eh ^ rec.eh
        else:
            if name not in self._base and name not in self._extra_pos:
                self._add_extra(name, rec.node.h)
            x = rec.eh
        self.counts[rec.state] += 1
        if x:
            self._xor(rec.node.h & (BUCKETS - 1), x)
        if rec.state >= DEAD and (old is None or old.state != rec.state):
            heapq.heappush(self.graveyard, (rec.since, name))
        if self._base.get(name) is rec:
            self._own.pop(name, None)
        else:
            self._own[name] = rec
        return old

    def forget(self, name: str) -> Rec | None:
        """Drop a member altogether (reaped); returns its last record."""
        old = self.get(name)
        if old is None:
            return None
        self.counts[old.state] -= 1
        self._xor(old.node.h & (BUCKETS - 1), old.eh)
        if name in self._base:
            self._own[name] = None
        else:
            self._own.pop(name, None)
            self._drop_extra(name, old.node.h)
        return old

    def _xor(self, b: int, x: int) -> None:
        d = self._delta.get(b, 0) ^ x
        if d:
            self._delta[b] = d
        else:
            self._delta.pop(b, None)

    def _add_extra(self, name: str, h: int) -> None:
        self._extra_pos[name] = len(self._extra)
        self._extra.append(name)
        self._extra_buckets.setdefault(h & (BUCKETS - 1), []).append(name)

    def _drop_extra(self, name: str, h: int) -> None:
        i = self._extra_pos.pop(name)
        last = self._extra.pop()
        if last != name:
            self._extra[i] = last
            self._extra_pos[last] = i
        lst = self._extra_buckets[h & (BUCKETS - 1)]
        lst.remove(name)
        if not lst:
            del self._extra_buckets[h & (BUCKETS - 1)]

    # ---- anti-entropy summaries ----------------------------------------------------------------
    def bucket_hashes(self, bits: int = BUCKET_BITS) -> list[int]:
        """The view's bucket hashes folded to 2**bits buckets (bucket = low bits of the name hash)."""
        base = self.baseline.hashes
        fine = [base[b] ^ self._delta[b] if b in self._delta else base[b] for b in range(BUCKETS)]
        if bits == BUCKET_BITS:
            return fine
        mask = (1 << bits) - 1
        out = [0] * (1 << bits)
        for b, h in enumerate(fine):
            out[b & mask] ^= h
        return out

    def in_buckets(self, bits: int, buckets: Iterable[int]) -> Iterator[Rec]:
        """Every record whose name falls in one of these buckets (at 2**bits buckets)."""
        wanted = set(buckets)
        mask = (1 << bits) - 1
        for b in range(BUCKETS):
            if b & mask not in wanted:
                continue
            for name in self.baseline.bucket_names[b]:
                r = self.get(name)
                if r is not None:
                    yield r
            for name in self._extra_buckets.get(b, ()):
                r = self._own.get(name)
                if r is not None:
                    yield r


def summary_bits(n: int) -> int:
    """Buckets for a push-pull summary: about one per 32 members, 1 to 256."""
    bits = 0
    while bits < BUCKET_BITS and (32 << bits) < n:
        bits += 1
    return bits


def fold(baseline: Baseline, views: list[View]) -> int:
    """Move into the baseline every record that all these views (all that share it) hold alike, so each
    stops storing its own copy. Suspect records stay put (they are short-lived). Returns how many moved.
    The views' contents, counts and hashes are unchanged by it."""
    if not views:
        return 0
    seen: dict[str, list[Rec]] = {}
    for v in views:
        if v.baseline is not baseline:
            raise ValueError("fold: a view does not sit on this baseline")
        for name, r in v._own.items():
            if r is None or r.state == SUSPECT:
                continue
            lst = seen.get(name)
            if lst is None:
                seen[name] = [r]
            else:
                lst.append(r)
    moved = 0
    for name, recs in seen.items():
        if len(recs) != len(views):
            continue
        first = recs[0]
        if any(r.inc != first.inc or r.state != first.state or (r.node is not first.node and not first.node.same(
                r.node.addr, r.node.port, r.node.tags)) for r in recs):
            continue
        new = max(recs, key=lambda r: r.since)
        old = baseline.records.get(name)
        b = new.node.h & (BUCKETS - 1)
        x = new.eh ^ (old.eh if old is not None else 0)
        for v in views:
            del v._own[name]
            if old is None:
                v._drop_extra(name, new.node.h)
            if x:
                v._xor(b, x)
        if old is None:
            baseline.names.append(name)
            baseline.bucket_names[b].append(name)
        else:
            baseline.counts[old.state] -= 1
        baseline.records[name] = new
        baseline.hashes[b] ^= x
        baseline.counts[new.state] += 1
        moved += 1
    return moved
