"""The client agent's backend: every catalog write and read goes to a server over RPC.

Same interface as the server role (`apply`, `query`, `session_*`), so the HTTP API, anti-entropy
and the check runners do not care which kind of agent they run on. Calls go to a random alive
server from the LAN pool and fail over to the next one when it does not answer; while no server is
known (the agent is still joining) a call waits up to LEADER_HOLD seconds for one.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from proconsul.agent.cluster.caller import mark_filtered
from proconsul.agent.cluster.host import ServerCall
from proconsul.agent.cluster.rpc import NoLeader
from proconsul.agent.cluster.server import DEFAULT_WAIT, LEADER_HOLD, MAX_WAIT, NotLeaderError
from proconsul.catalog import commands as c


class RemoteBackend:
    def __init__(self, call_any_server: ServerCall, rng: random.Random | None = None) -> None:
        self._call_any_server = call_any_server
        self.rng = rng or random.Random()
        self.known_leader = False  # as the last server to answer a read saw it
        self.last_contact = 0.0

    async def _call(self, method: str, args: dict[str, Any], timeout: float | None = None,
                    idempotent: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_HOLD
        while True:
            try:
                return await self._call_any_server(method, args, timeout, idempotent)
            except NoLeader as e:
                if loop.time() >= deadline:
                    raise NotLeaderError(f"No cluster leader ({e})") from None
            await asyncio.sleep(0.1 + self.rng.random() * 0.1)

    async def apply(self, cmd: c.Command) -> Any:
        return await self._call("catalog.apply", {"cmd": c.encode(cmd)})

    async def query(self, name: str, args: dict[str, Any], min_index: int = 0, wait: float = DEFAULT_WAIT,
                    mode: str = "leader") -> tuple[int, Any]:
        idx, result, known, contact, *filtered = await self._call(
            "catalog.query", {"name": name, "args": args, "index": min_index, "wait": wait, "mode": mode},
            timeout=min(wait, MAX_WAIT) + 30.0, idempotent=True)
        self.known_leader, self.last_contact = known, contact
        mark_filtered(bool(filtered and filtered[0]))  # the server cut the answer to the caller's token
        return idx, result

    async def session_create(self, session: dict[str, Any]) -> str:
        return await self._call("session.create", {"session": session})

    async def session_destroy(self, sid: str) -> bool:
        return await self._call("session.destroy", {"id": sid})

    async def session_renew(self, sid: str) -> dict[str, Any] | None:
        return await self._call("session.renew", {"id": sid}, idempotent=True)
