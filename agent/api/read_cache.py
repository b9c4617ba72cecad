"""A cache of whole read responses, keyed by the request's path and query string.

An entry is valid while the highest index of the tables its query reads is unchanged, so a hit is
never stale; any write to those tables makes the next read recompute. Only non-blocking reads of a
local state store are cached (blocking reads use the server's per-query encoded cache instead).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from multidict import CIMultiDict

from proconsul.catalog.store import StateStore

DEFAULT_SIZE = 4096


@dataclass(slots=True, frozen=True)
class Entry:
    tables: tuple[str, ...]
    tables_index: int
    status: int
    body: bytes
    headers: CIMultiDict[str]  # with Content-Type: a hit builds its response without parsing anything


class ReadCache:
    def __init__(self, store: StateStore, size: int = DEFAULT_SIZE) -> None:
        self._store = store
        self._size = size
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.tables_index != self._store.table_index(*entry.tables):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def mark(self, tables: tuple[str, ...]) -> int:
        """The validity token to store with a response computed now from `tables`."""
        return self._store.table_index(*tables)

    def put(self, key: str, entry: Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
