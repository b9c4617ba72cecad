"""Getting every agent's LAN coordinate into the replicated `coordinates` table, as Consul does.

- `CoordinateSender` (every agent): every `coordinates.sync_interval` (rate-scaled with the pool's size,
  at least `sync_coordinate_interval_min`, plus a random stagger) it sends this agent's coordinate as a
  `coordinate.update` RPC to a server (its own server role on a server).
- `CoordinateFlusher` (servers): `coordinate.update` — from agents and from `PUT /v1/coordinate/update`
  alike — is forwarded to the leader, which keeps the newest update per node (`coordinates.UpdateBatcher`)
  and every `coordinate_update_period` writes them through Raft: one `Batch` of `TableSet`s (the same FSM
  path as a single update, which drops nodes the catalog does not have) per `update_batch_size` rows, at
  most `update_max_batches` a period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.agent.cluster.coordinates import ProbeCoordinates, UpdateBatcher, sync_interval
from proconsul.agent.cluster.vivaldi import Coordinate, CoordinateError
from proconsul.catalog import commands as c
from proconsul.catalog.errors import InvalidRequest
from proconsul.catalog.store import COORDINATES

log = logging.getLogger("proconsul.coordinates")


def update_row(args: dict[str, Any]) -> dict[str, Any]:
    """A `coordinate.update` call's arguments as a table row; InvalidRequest names what is wrong."""
    node, segment = args.get("Node"), args.get("Segment") or ""
    if not isinstance(node, str) or not node:
        raise InvalidRequest("Node must name the node whose coordinate this is")
    if not isinstance(segment, str):
        raise InvalidRequest("Segment must be a string")
    try:
        coord = Coordinate.from_json(args.get("Coord"))
    except CoordinateError as e:
        raise InvalidRequest(f"Invalid coordinate: {e}") from None
    return {"Node": node, "Segment": segment, "Coord": coord.to_json()}


class CoordinateSender:
    """An agent's loop that sends its LAN coordinate to the servers."""

    def __init__(self, node: str, coordinates: ProbeCoordinates, members: Callable[[], int],
                 send: Callable[[dict[str, Any]], Awaitable[Any]], *, rate_target: float, interval_min: float,
                 rng: random.Random) -> None:
        self.node = node
        self.coordinates = coordinates
        self.members = members
        self.send = send
        self.rate_target = rate_target
        self.interval_min = interval_min
        self.rng = rng
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = sync_interval(self.rate_target, self.interval_min, self.members(), self.rng.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            await self.send_once()

    async def send_once(self) -> bool:
        try:
            await self.send({"Node": self.node, "Segment": "", "Coord": self.coordinates.coord.to_json()})
        except Exception as e:  # no server yet, an election, a dropped connection: the next round retries
            log.info("coordinate update error: %s", e)
            return False
        self.sent += 1
        return True


class CoordinateFlusher:
    """The servers' half: updates queue on the leader and reach Raft in batches every period."""

    def __init__(self, apply: Callable[[c.Command], Awaitable[Any]], is_leader: Callable[[], bool], *,
                 period: float, batch_size: int, max_batches: int) -> None:
        self.apply = apply
        self.is_leader = is_leader
        self.period = period
        self.batcher = UpdateBatcher(batch_size, max_batches)
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.batcher.add(row)

    async def flush(self) -> int:
        """Write what is pending (leader only; a follower's queue is dropped: the senders will send again)."""
        batches, dropped = self.batcher.take()
        if dropped:
            log.warning("discarded %d coordinate updates (more than %d a period)", dropped,
                        self.batcher.batch_size * self.batcher.max_batches)
        if not self.is_leader():
            return 0
        n = 0
        for batch in batches:
            await self.apply(c.Batch(commands=[c.TableSet(table=COORDINATES, key=key, row=row) for key, row in batch]))
            n += len(batch)
        self.written += n
        return n

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.period)
            try:
                await self.flush()
            except Exception as e:  # leadership lost mid-write: the agents send again next round
                log.info("coordinate batch not written: %s", e)
