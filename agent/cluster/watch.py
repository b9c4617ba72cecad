"""Wake blocking queries when the state store changes: per table, per KV key and per KV prefix.

The store calls `on_change` synchronously after each applied command; waiters are asyncio futures,
so a blocking query costs nothing while it waits and no one polls.
"""

from __future__ import annotations

import asyncio
import contextlib

from proconsul.catalog.store import KVS, Changes


class ChangeNotifier:
    def __init__(self) -> None:
        self._tables: dict[str, set[asyncio.Future[None]]] = {}
        self._kv_exact: dict[str, set[asyncio.Future[None]]] = {}
        self._kv_prefix: dict[str, set[asyncio.Future[None]]] = {}

    @property
    def waiting(self) -> int:
        """How many waits are registered (for tests and metrics)."""
        return sum(len(s) for d in (self._tables, self._kv_exact, self._kv_prefix) for s in d.values())

    def on_change(self, ch: Changes) -> None:
        for table in ch.tables:
            if table != KVS:
                self._wake(self._tables.pop(table, None))
        if ch.kv_keys:
            for key in ch.kv_keys:
                self._wake(self._kv_exact.pop(key, None))
            if self._kv_prefix:
                hit = [p for p in self._kv_prefix if any(k.startswith(p) for k in ch.kv_keys)]
                for p in hit:
                    self._wake(self._kv_prefix.pop(p))

    @staticmethod
    def _wake(waiters: set[asyncio.Future[None]] | None) -> None:
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, tables: tuple[str, ...], timeout: float, kv_key: str | None = None,
                   kv_prefix: bool = False) -> bool:
        """Wait until one of `tables` (or the KV key/prefix) changes; False when `timeout` passes first."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        registered: list[tuple[dict[str, set[asyncio.Future[None]]], str]] = []
        if kv_key is not None:
            registered.append((self._kv_prefix if kv_prefix else self._kv_exact, kv_key))
        else:
            registered.extend((self._tables, t) for t in tables)
        for d, k in registered:
            d.setdefault(k, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for d, k in registered:
                s = d.get(k)
                if s is not None:
                    s.discard(fut)
                    if not s:
                        with contextlib.suppress(KeyError):
                            del d[k]
