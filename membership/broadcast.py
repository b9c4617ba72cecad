"""News waiting to be gossiped: memberlist's transmit-limited queue.

Each item is one encoded message about one member. A newer item about the same member replaces the
older one (it is stale news). `take` fills the room left in a datagram with the least-sent items first
(newest first among equals), counts a transmission for each, and drops an item once it has been sent
`limit` times (retransmit_mult * ceil(log10(n + 1))).
"""

from __future__ import annotations

MAX_ITEMS = 4096  # beyond this the most-sent items go first: news older than that is stale anyway


class BroadcastQueue:
    __slots__ = ("_items", "_by_name", "_next_id", "sent")

    def __init__(self) -> None:
        # [transmits, -id, name, msg]; sorted on demand (the queue is short: news lives ~1 s)
        self._items: list[list] = []
        self._by_name: dict[str, list] = {}
        self._next_id = 0
        self.sent = 0  # items handed out, for metrics

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, name: str, msg: bytes) -> None:
        old = self._by_name.get(name)
        if old is not None:
            self._items.remove(old)
        self._next_id += 1
        item = [0, -self._next_id, name, msg]
        self._items.append(item)
        self._by_name[name] = item
        if len(self._items) > MAX_ITEMS:
            self._items.sort()
            for dropped in self._items[MAX_ITEMS:]:
                del self._by_name[dropped[2]]
            del self._items[MAX_ITEMS:]

    def pending(self, name: str) -> bool:
        return name in self._by_name

    def take(self, room: int, limit: int) -> list[bytes]:
        """Messages that fit in `room` bytes, least-sent first; each counts one transmission."""
        items = self._items
        if not items:
            return []
        if len(items) > 1:
            items.sort()
        out: list[bytes] = []
        done = False
        for item in items:
            msg = item[3]
            if len(msg) > room:
                if room < 16:
                    break
                continue
            out.append(msg)
            room -= len(msg)
            item[0] += 1
            if item[0] >= limit:
                done = True
        if done:
            keep = []
            for item in items:
                if item[0] >= limit:
                    del self._by_name[item[2]]
                else:
                    keep.append(item)
            self._items = keep
        self.sent += len(out)
        return out

    def clear(self) -> None:
        self._items.clear()
        self._by_name.clear()
