"""Connect on a client agent: the servers hold the CA and the intentions; this agent caches them.

As Consul's agent cache does, the client follows the servers' public roots (`connect.roots`) and the
intention config entries with blocking queries and answers from its copies: roots, leaves (the key
and CSR are made here, the servers sign: `connect.sign`), intention reads, match, check and
authorize, with no server round trip on the hot path. Writes (CA configuration, intentions) are
forwarded to a server (`connect.*` RPC), which applies them through Raft.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.agent.connect.base import ConnectBase, ConnectHost, intentions_of
from proconsul.agent.local.stopping import until_stopped
from proconsul.connect.errors import CANotReady

log = logging.getLogger("proconsul.connect")
ServerCall = Callable[[str, dict[str, Any]], Awaitable[Any]]
FIRST_LOAD = 10.0  # seconds a request waits for the first copy from the servers


class _Followed:
    """One value followed from the servers with blocking queries: its latest copy and index."""

    def __init__(self) -> None:
        self.index = 0
        self.value: Any = None
        self.changed = asyncio.Event()  # replaced after each change: waiters see every change once
        self.loaded = asyncio.Event()

    def update(self, index: int, value: Any) -> None:
        self.index, self.value = index, value
        self.loaded.set()
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_past(self, min_index: int, wait: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.index <= min_index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


class ClientConnect(ConnectBase):
    def __init__(self, agent: ConnectHost, call_server: ServerCall) -> None:
        super().__init__(agent)
        self._call = call_server
        self._roots = _Followed()
        self._intentions = _Followed()
        self._config: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reads, from the copies
    def roots_body(self) -> tuple[int, dict[str, Any]]:
        if self._roots.value is None:
            return 0, {"ActiveRootID": "", "TrustDomain": "", "Roots": []}
        return self._roots.index, self._roots.value

    def config(self) -> dict[str, Any] | None:
        return self._config

    def intentions(self) -> list[dict[str, Any]]:
        return self._intentions.value or []

    def intentions_index(self) -> int:
        return self._intentions.index

    async def loaded(self) -> None:
        """Wait (bounded) for the first copies; a client that cannot reach a server says so."""
        try:
            async with asyncio.timeout(FIRST_LOAD):
                await self._roots.loaded.wait()
                await self._intentions.loaded.wait()
        except TimeoutError:
            raise CANotReady("no Connect state from the servers yet (are any reachable?)") from None

    async def wait_roots(self, min_index: int, wait: float) -> None:
        await self.loaded()
        await self._roots.wait_past(min_index, wait)

    async def wait_intentions(self, min_index: int, wait: float) -> None:
        await self.loaded()
        await self._intentions.wait_past(min_index, wait)

    async def refresh_config(self) -> dict[str, Any] | None:
        _, self._config = await self.agent.backend.query("table.get", {"table": "ca_config", "key": "config"})
        return self._config

    # ------------------------------------------------------------------ forwarded to a server
    async def sign_csr(self, csr_pem: str, service: str) -> dict[str, Any]:
        return await self._call("connect.sign", {"csr": csr_pem, "service": service})

    async def set_config(self, body: dict[str, Any]) -> None:
        await self._call("connect.set_config", {"config": body})

    async def upsert(self, ixn: dict[str, Any], replace_id: str | None = None) -> dict[str, Any]:
        out = await self._call("connect.upsert", {"intention": ixn, "replace_id": replace_id or ""})
        await self._intentions.wait_past(self._intentions.index, 2.0)  # read-your-writes, as far as it goes
        return out

    async def remove_ids(self, ids: list[str]) -> bool:
        out = bool(await self._call("connect.remove", {"ids": ids}))
        if out:
            await self._intentions.wait_past(self._intentions.index, 2.0)
        return out

    # ------------------------------------------------------------------ following the servers
    async def _follow(self, name: str, args: dict[str, Any], into: _Followed,
                      convert: Callable[[Any], Any], stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            query = await until_stopped(self.agent.backend.query(name, args, into.index, 300.0), stop)
            if query is None:
                return
            try:
                idx, value = query.result()
            except Exception as e:  # no server yet, or a failover: retry, never die
                log.debug("connect: following %s failed: %s", name, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if idx < into.index:
                into.index = 0  # the servers' state went backwards (a restored snapshot): reload
                continue
            if idx != into.index or into.value is None:
                into.update(idx, convert(value))
                self.forget_decisions()
                if into is self._roots:
                    await self.refresh_leaves()

    async def run_duties(self, wait_leadership: Callable[[asyncio.Event], Awaitable[bool]],
                         stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow("connect.roots", {}, self._roots, lambda v: v, stop))
            tg.create_task(self._follow("config.list", {"kind": "service-intentions"}, self._intentions,
                                        intentions_of, stop))
