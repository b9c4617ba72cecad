"""The router: for each datacenter, the servers to send a call to, and failover between them.

It reads the WAN pool through `WANMembership` only. A call to another datacenter goes to the server
that answered last time (or a random alive one); a server that cannot be reached is skipped and the
next one tried; when none answers — or the pool says all of them are failed — the call fails at once
with Consul's "Remote DC has no server currently reachable". Servers that only fail to answer *our*
probes (failed in this server's view while the pool holds them alive) are tried when no other is left. A datacenter the pool has never heard
of is "No path to datacenter".
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.agent.cluster.errors import DatacenterUnreachable, NoPathToDatacenter
from proconsul.agent.cluster.rpc import RPCNotSent, RPCUnavailable
from proconsul.agent.cluster.wan.pool import ALIVE, MemberView, WANMembership

log = logging.getLogger("proconsul.router")

Call = Callable[[str, str, dict[str, Any], "float | None"], Awaitable[Any]]  # (address, method, args, timeout)


class Router:
    def __init__(self, pool: WANMembership, datacenter: str, call: Call, rng: random.Random | None = None,
                 blocked: Callable[[], set[str]] | None = None) -> None:
        self.pool = pool
        self.datacenter = datacenter
        self._call = call
        self.rng = rng or random.Random()
        self._blocked = blocked or (lambda: set())
        self._preferred: dict[str, str] = {}  # datacenter -> the server name that answered last
        self.last_success: dict[str, float] = {}  # datacenter -> loop time of the last answered call
        self.last_error: dict[str, str] = {}

    def datacenters(self) -> list[str]:
        """Every known datacenter, nearest first: ours, then by median round trip to its alive
        servers; those never measured come last, by name."""
        rtts: dict[str, list[float]] = {self.datacenter: [0.0]}
        for m in self.pool.members():
            rtts.setdefault(m.server.datacenter, [])
            if m.status == ALIVE and m.rtt is not None:
                rtts[m.server.datacenter].append(m.rtt)
        known = set(self.pool.datacenters()) | {self.datacenter}

        def key(dc: str) -> tuple[int, float, str]:
            samples = sorted(rtts.get(dc) or [])
            if dc == self.datacenter:
                return (0, 0.0, dc)
            if not samples:
                return (2, 0.0, dc)
            return (1, samples[len(samples) // 2], dc)

        return sorted(known, key=key)

    def servers(self, datacenter: str) -> list[MemberView]:
        """The servers to try for `datacenter`, in order; raises when there is no path or none alive."""
        members = self.pool.servers(datacenter)
        if not members:
            raise NoPathToDatacenter(datacenter)
        blocked = self._blocked()
        alive = [m for m in members if m.status == ALIVE and m.name not in blocked]
        if not alive:
            # None answers our probes directly, but the pool says some are alive (others reach them): try
            # those rather than refuse on our probes alone (a busy server misses acks too).
            alive = [m for m in members if m.pool_alive and m.name not in blocked]
        if not alive:
            raise DatacenterUnreachable(datacenter)
        self.rng.shuffle(alive)
        preferred = self._preferred.get(datacenter)
        alive.sort(key=lambda m: m.name != preferred)
        return alive

    async def call(self, datacenter: str, method: str, args: dict[str, Any], timeout: float | None = None, *,
                   idempotent: bool = False, now: Callable[[], float] | None = None) -> Any:
        """Send an RPC to a server of `datacenter`, failing over to the next one that is alive."""
        last: Exception | None = None
        for m in self.servers(datacenter):
            try:
                result = await self._call(m.server.rpc_address, method, args, timeout)
            except RPCUnavailable as e:
                if not idempotent and not isinstance(e, RPCNotSent):
                    raise
                last = e
                self._preferred.pop(datacenter, None)
                log.info("%s: server %s did not answer (%s); trying another", datacenter, m.name, e)
                continue
            self._preferred[datacenter] = m.name
            if now is not None:
                self.last_success[datacenter] = now()
            return result
        self.last_error[datacenter] = str(last)
        raise DatacenterUnreachable(datacenter)
