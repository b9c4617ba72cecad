"""Network coordinates measured from the gossip pools' probes, and the rules for sending them to the servers.

Pure: no clock, no socket; randomness comes in. Three pieces, each what Serf and Consul do:

- `ProbeCoordinates` — Serf's ping delegate. Our acks carry our coordinate (`payload`); every probe the
  target answered itself hands us its round trip and its coordinate (`on_rtt`), which moves ours by one
  Vivaldi step (agent/cluster/vivaldi.py) and is remembered as the peer's coordinate. Used by the LAN
  pool (`/v1/coordinate/nodes`, `?near=`) and the WAN pool (`/v1/coordinate/datacenters`).
- `sync_interval` — how often an agent sends its coordinate: Consul's rate-scaled interval, so the whole
  datacenter sends about `rate_target` updates a second however large it is, never more often than
  `interval_min` per agent.
- `UpdateBatcher` — the leader's pending updates (the newest per node), taken in batches of `batch_size`
  rows, at most `max_batches` a period; what does not fit is dropped and counted (Consul's Coordinate
  endpoint).
"""

from __future__ import annotations

from typing import Any

import msgpack

from proconsul.agent.cluster.vivaldi import Client, Coordinate, CoordinateError, Random

MAX_PAYLOAD = 1024  # an ack's coordinate: ~120 bytes; anything larger is not ours


def encode(coord: Coordinate) -> bytes:
    return msgpack.packb(coord.to_wire(), use_bin_type=True)


def decode(payload: bytes) -> Coordinate:
    """An ack payload back to a coordinate; CoordinateError for anything else."""
    if not payload or len(payload) > MAX_PAYLOAD:
        raise CoordinateError("no coordinate in the ack" if not payload else "ack payload too large")
    try:
        raw = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CoordinateError(f"ack payload is not msgpack: {e}") from None
    return Coordinate.from_wire(raw)


class ProbeCoordinates:
    """This member's coordinate in one pool, and the coordinates its probes' acks told it."""

    def __init__(self, rng: Random) -> None:
        self.client = Client()
        self.rng = rng
        self.peers: dict[str, Coordinate] = {}
        self.updates = 0  # samples folded in
        self.rejected = 0  # acks without a usable coordinate, or samples out of range
        self._payload = encode(self.client.coord)

    @property
    def coord(self) -> Coordinate:
        return self.client.coord

    def payload(self) -> bytes:
        """What our acks carry: our coordinate, encoded."""
        return self._payload

    def on_rtt(self, name: str, rtt: float, payload: bytes) -> bool:
        """A probe of `name` answered directly after `rtt` seconds with `payload`; returns whether our
        coordinate moved (False: no usable coordinate in the ack, or an RTT out of range)."""
        try:
            other = decode(payload)
            self.client.update(name, other, rtt, self.rng)
        except CoordinateError:
            self.rejected += 1
            return False
        self.peers[name] = other
        self.updates += 1
        self._payload = encode(self.client.coord)
        return True

    def forget(self, name: str) -> None:
        """A member left or was reaped: drop what we knew of it."""
        self.peers.pop(name, None)
        self.client.forget(name)


def sync_interval(rate_target: float, interval_min: float, members: int, stagger: float) -> float:
    """Seconds until an agent sends its coordinate again: Consul's RateScaledInterval (members / rate, at
    least interval_min) plus a random stagger of up to as long again (`stagger` in [0, 1))."""
    base = interval_min if rate_target <= 1 / 86400 else max(interval_min, members / rate_target)
    return base + base * stagger


class UpdateBatcher:
    """The leader's pending coordinate updates: the newest per node wins until the next flush."""

    def __init__(self, batch_size: int = 128, max_batches: int = 5) -> None:
        if batch_size < 1 or max_batches < 1:
            raise ValueError("batch_size and max_batches must be at least 1")
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.pending: dict[str, dict[str, Any]] = {}
        self.discarded = 0

    def add(self, row: dict[str, Any]) -> None:
        """One update in Consul's shape ({"Node", "Segment", "Coord"}), replacing an older one of that node."""
        self.pending[str(row["Node"]).lower()] = row

    def take(self) -> tuple[list[list[tuple[str, dict[str, Any]]]], int]:
        """Everything pending as batches of (key, row), and how many updates did not fit and were dropped."""
        items = list(self.pending.items())
        self.pending = {}
        limit = self.batch_size * self.max_batches
        dropped = max(0, len(items) - limit)
        self.discarded += dropped
        items = items[:limit]
        return [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)], dropped
