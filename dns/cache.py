"""The wire cache: answers kept as bytes, keyed by the question's bytes, dropped when the catalog moves.

Sans-I/O. The key is the query packet after its 2-byte ID, so the name's case (which the answer
echoes), type, class, flags and EDNS0 size are all part of it; a hit costs a dictionary lookup and
an ID patch. Queries whose EDNS0 options vary per packet (cookies) are keyed by a canonical form of
the question instead, which the handler computes on its slower path.

Answers whose order is shuffled are kept as a few differently shuffled copies served in rotation
(Consul shuffles per response). Each entry records which catalog change makes it wrong — one
service name, or CATALOG for "any change" — so a health flap of one service leaves the others
cached. The cache is bounded: past `max_entries` it starts over.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import cycle

from .answer import CATALOG

VARIANTS = 4  # differently shuffled copies kept per shuffled answer
MAX_ENTRIES = 50_000


class WireCache:
    def __init__(self, variants: int = VARIANTS, max_entries: int = MAX_ENTRIES) -> None:
        self.variants = variants
        self.max_entries = max_entries
        # key -> endless rotation over the answer bodies (bytes after the ID); the hot path reads this.
        self.ready: dict[bytes, Iterator[bytes]] = {}
        self._filling: dict[bytes, list[bytes]] = {}  # shuffled answers still collecting their copies
        self._deps: dict[str, set[bytes]] = {}  # dependency -> keys
        self.hits = 0

    def __len__(self) -> int:
        return len(self.ready) + len(self._filling)

    def get(self, packet: bytes) -> bytes | None:
        """The cached response for this query packet (its own ID patched in), or None."""
        rotation = self.ready.get(packet[2:])
        if rotation is None:
            return None
        self.hits += 1
        return packet[:2] + next(rotation)

    def lookup_key(self, key: bytes, ident: bytes) -> bytes | None:
        rotation = self.ready.get(key)
        return None if rotation is None else ident + next(rotation)

    def add(self, key: bytes, response: bytes, depends: str, shuffled: bool) -> None:
        """Remember `response` (a whole message) for `key`; shuffled answers need VARIANTS copies first."""
        if key in self.ready:
            return
        if len(self) >= self.max_entries:
            self.clear()
        body = response[2:]
        if shuffled and self.variants > 1:
            copies = self._filling.setdefault(key, [])
            copies.append(body)
            if len(copies) < self.variants:
                self._deps.setdefault(depends, set()).add(key)
                return
            del self._filling[key]
            self.ready[key] = cycle(copies)
        else:
            self.ready[key] = cycle((body,))
        self._deps.setdefault(depends, set()).add(key)

    def invalidate(self, services: Iterable[str] | None) -> None:
        """Drop what a catalog change may have made wrong: those services' answers and every answer
        that depends on the catalog as a whole; everything when `services` is None."""
        if services is None:
            self.clear()
            return
        for dep in (CATALOG, *services):
            for key in self._deps.pop(dep, ()):
                self.ready.pop(key, None)
                self._filling.pop(key, None)

    def clear(self) -> None:
        self.ready.clear()
        self._filling.clear()
        self._deps.clear()
