"""Network coordinates: the Vivaldi algorithm as Serf runs it (8 dimensions, a height, an adjustment term).

Pure: round-trip times and the randomness for a tie-break come in as arguments; no clock, no sockets.
A `Client` holds this node's coordinate and folds in one RTT sample to another node at a time (`update`):
a median filter per peer, the Vivaldi spring step weighted by both sides' error, the adjustment window
that absorbs what the Euclidean space cannot, and a weak gravity toward the origin that stops the whole
system drifting. `distance` estimates the RTT between two coordinates. Coordinates travel in Consul's JSON
shape: {"Vec": [8 floats], "Error", "Adjustment", "Height"}.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

DIMENSIONS = 8
ERROR_MAX = 1.5
CE = 0.25  # how fast the error estimate moves
CC = 0.25  # how far one sample moves the coordinate
ADJUSTMENT_WINDOW = 20
HEIGHT_MIN = 10e-6
LATENCY_FILTER = 3
GRAVITY_RHO = 150.0
ZERO = 1.0e-6
MAX_RTT = 10.0  # seconds: a sample above this is an error, not a measurement
WIRE_VERSION = 1


class Random(Protocol):
    def gauss(self, mu: float, sigma: float) -> float: ...


class CoordinateError(ValueError):
    """A coordinate or sample that cannot be used (wrong dimensions, not finite, out of range)."""


@dataclass(frozen=True, slots=True)
class Coordinate:
    vec: tuple[float, ...] = (0.0,) * DIMENSIONS
    error: float = ERROR_MAX
    adjustment: float = 0.0
    height: float = HEIGHT_MIN

    def to_json(self) -> dict[str, Any]:
        return {"Vec": list(self.vec), "Error": self.error, "Adjustment": self.adjustment, "Height": self.height}

    @classmethod
    def from_json(cls, raw: Any) -> Coordinate:
        """Consul's JSON shape back to a coordinate; CoordinateError names what is wrong."""
        if not isinstance(raw, dict):
            raise CoordinateError("Coord must be an object with Vec, Error, Adjustment and Height")
        vec = raw.get("Vec")
        if not isinstance(vec, list) or len(vec) != DIMENSIONS:
            raise CoordinateError(f"Coord.Vec must be a list of {DIMENSIONS} numbers")
        values = [*vec, raw.get("Error", ERROR_MAX), raw.get("Adjustment", 0.0), raw.get("Height", HEIGHT_MIN)]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise CoordinateError("Coord values must be finite numbers")
        return cls(tuple(float(v) for v in vec), float(values[-3]), float(values[-2]), float(values[-1]))

    def to_wire(self) -> list[Any]:
        """The compact form a gossip ack carries: [version, vec, error, adjustment, height]."""
        return [WIRE_VERSION, list(self.vec), self.error, self.adjustment, self.height]

    @classmethod
    def from_wire(cls, raw: Any) -> Coordinate:
        """`to_wire`'s list back; CoordinateError for anything else (another version, bad numbers)."""
        if type(raw) is not list or len(raw) != 5 or raw[0] != WIRE_VERSION:
            raise CoordinateError("not a version-1 coordinate")
        return cls.from_json({"Vec": raw[1], "Error": raw[2], "Adjustment": raw[3], "Height": raw[4]})

    def is_origin(self) -> bool:
        """Never moved by a measurement (every agent starts here)."""
        return not any(self.vec) and self.error == ERROR_MAX


def _raw_distance(a: Coordinate, b: Coordinate) -> float:
    return math.dist(a.vec, b.vec) + a.height + b.height


def distance(a: Coordinate, b: Coordinate) -> float:
    """Estimated round-trip time in seconds between two coordinates (Serf's DistanceTo)."""
    raw = _raw_distance(a, b)
    adjusted = raw + a.adjustment + b.adjustment
    return adjusted if adjusted > 0.0 else raw


def _apply_force(c: Coordinate, force: float, other: Coordinate, rng: Random) -> Coordinate:
    diff = [x - y for x, y in zip(c.vec, other.vec, strict=True)]
    mag = math.hypot(*diff)
    if mag > ZERO:
        unit = [d / mag for d in diff]
    else:  # the same point: push apart in a random direction
        unit = [rng.gauss(0.0, 1.0) for _ in diff]
        norm = math.hypot(*unit) or 1.0
        unit = [u / norm for u in unit]
    vec = tuple(v + u * force for v, u in zip(c.vec, unit, strict=True))
    height = c.height
    if mag > ZERO:
        height = max((c.height + other.height) * force / mag + c.height, HEIGHT_MIN)
    return Coordinate(vec, c.error, c.adjustment, height)


@dataclass
class Client:
    """This node's coordinate and what updating it needs (Serf's coordinate.Client)."""

    coord: Coordinate = field(default_factory=Coordinate)
    _samples: dict[str, deque[float]] = field(default_factory=dict)
    _adjustments: list[float] = field(default_factory=lambda: [0.0] * ADJUSTMENT_WINDOW)
    _next: int = 0

    def update(self, node: str, other: Coordinate, rtt: float, rng: Random) -> Coordinate:
        """Fold in one RTT sample (seconds) to `node` at coordinate `other`; returns the new coordinate."""
        if not math.isfinite(rtt) or rtt < 0 or rtt > MAX_RTT:
            raise CoordinateError(f"RTT sample {rtt!r}s is out of range (0 to {MAX_RTT}s)")
        window = self._samples.setdefault(node, deque(maxlen=LATENCY_FILTER))
        window.append(rtt)
        rtt = sorted(window)[len(window) // 2]
        self._vivaldi(other, rtt, rng)
        self._adjust(other, rtt)
        self._gravity(rng)
        return self.coord

    def forget(self, node: str) -> None:
        self._samples.pop(node, None)

    def _vivaldi(self, other: Coordinate, rtt: float, rng: Random) -> None:
        c = self.coord
        dist = distance(c, other)
        rtt = max(rtt, ZERO)
        wrongness = abs(dist - rtt) / rtt
        weight = c.error / max(c.error + other.error, ZERO)
        error = min(CE * weight * wrongness + c.error * (1.0 - CE * weight), ERROR_MAX)
        moved = _apply_force(c, CC * weight * (rtt - dist), other, rng)
        self.coord = Coordinate(moved.vec, error, moved.adjustment, moved.height)

    def _adjust(self, other: Coordinate, rtt: float) -> None:
        self._adjustments[self._next] = rtt - _raw_distance(self.coord, other)
        self._next = (self._next + 1) % ADJUSTMENT_WINDOW
        c = self.coord
        self.coord = Coordinate(c.vec, c.error, sum(self._adjustments) / (2.0 * ADJUSTMENT_WINDOW), c.height)

    def _gravity(self, rng: Random) -> None:
        origin = Coordinate()
        force = -((distance(origin, self.coord) / GRAVITY_RHO) ** 2)
        self.coord = _apply_force(self.coord, force, origin, rng)


def sort_by_distance(rows: list[Any], node_of: Any, coords: dict[str, Coordinate], near: str) -> list[Any]:
    """`rows` ordered by estimated RTT from node `near` (Consul's ?near=): rows whose node has no coordinate
    keep their order after the others; unchanged when `near` has none."""
    origin = coords.get(near.lower())
    if origin is None:
        return rows
    known = [r for r in rows if node_of(r).lower() in coords]
    unknown = [r for r in rows if node_of(r).lower() not in coords]
    known.sort(key=lambda r: distance(origin, coords[node_of(r).lower()]))
    return known + unknown
