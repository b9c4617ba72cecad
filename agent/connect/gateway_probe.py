"""Mesh gateway probes for the link view (beyond Consul, whose operators cannot see whether the path
between datacenters works until traffic fails).

Every `interval` a server lists the mesh gateways of each known datacenter (its own from its replica,
the others through the router: `health.service` on their servers) and opens a TCP connection to each —
its `wan` address in another datacenter (what traffic from here crosses), its `lan` address here — and
closes it at once (a gateway drops a connection that sends no ClientHello). `/v1/operator/federation`
shows the results under `Extra.MeshGateways`: per datacenter, each gateway's address, whether it
answered, the connect time, the error and how long ago it was probed; `Reachable` says whether any did.
A datacenter whose gateway list cannot be read is shown with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from proconsul.connect.proxy.addresses import mesh_gateway_address

log = logging.getLogger("proconsul.connect")
INTERVAL = 5.0
PROBE_TIMEOUT = 1.0
LIST_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Probe:
    address: str
    port: int
    ok: bool
    rtt: float | None  # seconds to connect
    error: str
    at: float  # unix time of the probe

    def to_json(self, now: float) -> dict[str, Any]:
        return {"Address": self.address, "Port": self.port, "OK": self.ok,
                "ConnectMillis": None if self.rtt is None else round(self.rtt * 1000, 3), "Error": self.error,
                "ProbedSecondsAgo": round(max(now - self.at, 0.0), 3)}


def gateway_addresses(entries: list[dict[str, Any]], *, local: bool) -> list[tuple[str, int]]:
    """The address traffic uses for each mesh gateway of a health answer: `lan` here, `wan` elsewhere
    (falling back to the service's, then the node's address)."""
    out: list[tuple[str, int]] = []
    for e in entries:
        where = mesh_gateway_address(e, local=local)
        if where is not None and where not in out:
            out.append(where)
    return out


async def probe(address: str, port: int, timeout: float = PROBE_TIMEOUT) -> Probe:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError) as e:
        return Probe(address, port, False, None, str(e) or "timed out", time.time())
    rtt = time.monotonic() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Probe(address, port, True, rtt, "", time.time())


class GatewayProbes:
    """The prober of one server; `report` is its part of the link view."""

    def __init__(self, datacenter: str, datacenters: Callable[[], Awaitable[list[str]]],
                 list_gateways: Callable[[str], Awaitable[list[dict[str, Any]]]], service: str = "mesh-gateway",
                 interval: float = INTERVAL) -> None:
        self.datacenter = datacenter
        self.datacenters = datacenters
        self.list_gateways = list_gateways  # (datacenter) -> the health entries of `service` there, passing
        self.service = service
        self.interval = interval
        self.results: dict[str, list[Probe]] = {}
        self.errors: dict[str, str] = {}

    def report(self) -> dict[str, Any]:
        now = time.time()
        return {dc: {"Reachable": any(p.ok for p in probes), "Gateways": [p.to_json(now) for p in probes],
                     "Error": self.errors.get(dc, "")}
                for dc, probes in sorted({**{d: [] for d in self.errors}, **self.results}.items())}

    async def round(self) -> None:
        dcs = await self.datacenters()
        for dc in [d for d in list(self.results) + list(self.errors) if d not in dcs]:  # forgotten datacenters
            self.results.pop(dc, None)
            self.errors.pop(dc, None)

        async def one(dc: str) -> None:
            try:
                async with asyncio.timeout(LIST_TIMEOUT):
                    entries = await self.list_gateways(dc)
            except Exception as e:  # noqa: BLE001 — any failure to list is this datacenter's error to show
                self.errors[dc] = f"cannot list its mesh gateways: {e or type(e).__name__}"
                self.results.pop(dc, None)
                return
            self.errors.pop(dc, None)
            addresses = gateway_addresses(entries, local=dc == self.datacenter)
            self.results[dc] = list(await asyncio.gather(*(probe(a, p) for a, p in addresses)))

        await asyncio.gather(*(one(dc) for dc in dcs))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # a bug probing must not end the prober (nor the server)
                log.exception("mesh gateway probes failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
