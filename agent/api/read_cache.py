"""A cache of whole read responses, keyed by the request's path and query string.

An entry is valid while the highest index of the tables its query reads is unchanged, so a hit is
never stale; any write to those tables makes the next read recompute. Only non-blocking reads of a
local state store are cached (blocking reads use the server's per-query encoded cache instead).
Each entry also keeps its status line and headers in wire format, so the lean front (`lean.py`)
answers a hit with one write.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from proconsul.catalog.store import StateStore

DEFAULT_SIZE = 4096


HEAD_TAIL = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode()  # after the Date, to the body


def wire_head(status: int, headers: CIMultiDict[str], length: int) -> bytes:
    """A response's status line and headers in aiohttp's order, up to the value of its Date header: the
    sender adds the date and HEAD_TAIL."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {length}", "Date: "]
    return "\r\n".join(lines).encode("latin-1")


@dataclass(slots=True, frozen=True)
class Entry:
    tables: tuple[str, ...]
    tables_index: int
    status: int
    body: bytes
    headers: CIMultiDict[str]  # with Content-Type: a hit builds its response without parsing anything
    lean: bool = True  # no route guard ran before the handler: the lean front may answer it (ACLs: one lookup)
    head: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", wire_head(self.status, self.headers, len(self.body)))


def may_answer_cached(agent: Any, qs: str, has: Callable[[str], bool]) -> bool:
    """Whether this agent may answer a read with query string `qs` from its response cache: only reads it
    may give from its own store (the leader's, or anyone's with ?stale), and never a blocking, pretty,
    ?near or ?consistent one. `has(name)` says whether the query has that parameter (substring tests
    first: parsing the query string costs more than the cache hit itself)."""
    if "index=" in qs or "pretty" in qs or "near=" in qs or ("consistent" in qs and has("consistent")):
        return False
    return agent.is_leader() or ("stale" in qs and has("stale"))


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
