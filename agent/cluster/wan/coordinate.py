"""Network coordinates (Vivaldi, as Serf computes them), pure: RTT samples in, a coordinate out.

Each server keeps a coordinate in an 8-dimensional space plus a height (the access-link delay), an
error estimate and an adjustment; every WAN exchange with a peer (its coordinate and the measured
round trip) nudges ours so that the distance between coordinates estimates the RTT. Serf's defaults
and rules: a 3-sample median filter per peer, error-weighted spring forces, a 20-sample adjustment
window, and a weak gravity towards the origin. Randomness (a direction when two coordinates
coincide) comes from the caller's RNG. Shapes and field names are Consul's (`Vec`, `Error`,
`Adjustment`, `Height`), so `/v1/coordinate/*` answers as it does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from statistics import median
from typing import Any

DIMENSIONS = 8
ERROR_MAX = 1.5
CE = 0.25
CC = 0.25
ADJUSTMENT_WINDOW = 20
HEIGHT_MIN = 10e-6
LATENCY_FILTER = 3
GRAVITY_RHO = 150.0
ZERO = 1.0e-6


@dataclass
class Coordinate:
    vec: list[float] = field(default_factory=lambda: [0.0] * DIMENSIONS)
    error: float = ERROR_MAX
    adjustment: float = 0.0
    height: float = HEIGHT_MIN

    def to_json(self) -> dict[str, Any]:
        return {"Vec": list(self.vec), "Error": self.error, "Adjustment": self.adjustment, "Height": self.height}

    @classmethod
    def from_json(cls, raw: Any) -> Coordinate | None:
        """A peer's coordinate from the wire; None when it is malformed or not finite."""
        try:
            vec = [float(x) for x in raw["Vec"]]
            c = cls(vec, float(raw["Error"]), float(raw["Adjustment"]), float(raw["Height"]))
        except (KeyError, TypeError, ValueError):
            return None
        if len(vec) != DIMENSIONS or not all(math.isfinite(x) for x in [*vec, c.error, c.adjustment, c.height]):
            return None
        return c

    def raw_distance(self, other: Coordinate) -> float:
        return math.dist(self.vec, other.vec) + self.height + other.height

    def distance(self, other: Coordinate) -> float:
        """Estimated round trip to `other`, seconds."""
        raw = self.raw_distance(other)
        adjusted = raw + self.adjustment + other.adjustment
        return adjusted if adjusted > 0 else raw


class VivaldiClient:
    """This server's coordinate, updated from (peer, peer's coordinate, RTT) observations."""

    def __init__(self, rng: random.Random) -> None:
        self.coord = Coordinate()
        self.rng = rng
        self._samples: dict[str, list[float]] = {}
        self._adjustments: list[float] = []

    def update(self, peer: str, other: Coordinate, rtt: float) -> Coordinate:
        samples = self._samples.setdefault(peer, [])
        samples.append(rtt)
        del samples[:-LATENCY_FILTER]
        rtt = median(samples)
        self._vivaldi(other, rtt)
        self._adjust(other, rtt)
        self._gravity()
        return self.coord

    def forget(self, peer: str) -> None:
        self._samples.pop(peer, None)

    def _vivaldi(self, other: Coordinate, rtt: float) -> None:
        c = self.coord
        dist = c.distance(other)
        rtt = max(rtt, ZERO)
        wrongness = abs(dist - rtt) / rtt
        total = max(c.error + other.error, ZERO)
        weight = c.error / total
        c.error = min(CE * weight * wrongness + c.error * (1.0 - CE * weight), ERROR_MAX)
        self._apply_force(CC * weight * (rtt - dist), other)

    def _adjust(self, other: Coordinate, rtt: float) -> None:
        self._adjustments.append(rtt - self.coord.raw_distance(other))
        del self._adjustments[:-ADJUSTMENT_WINDOW]
        self.coord.adjustment = sum(self._adjustments) / (2.0 * ADJUSTMENT_WINDOW)

    def _gravity(self) -> None:
        origin = Coordinate(error=0.0, height=HEIGHT_MIN)
        dist = math.dist(self.coord.vec, origin.vec) + self.coord.height + origin.height
        self._apply_force(-1.0 * (dist / GRAVITY_RHO) ** 2, origin)

    def _apply_force(self, force: float, other: Coordinate) -> None:
        c = self.coord
        diff = [a - b for a, b in zip(c.vec, other.vec, strict=True)]
        mag = math.hypot(*diff)
        if mag > ZERO:
            unit = [d / mag for d in diff]
        else:  # the same place: push in a random direction
            r = [self.rng.random() - 0.5 for _ in range(DIMENSIONS)]
            n = math.hypot(*r) or 1.0
            unit, mag = [x / n for x in r], 0.0
        c.vec = [v + u * force for v, u in zip(c.vec, unit, strict=True)]
        if mag > ZERO:
            c.height = max((c.height + other.height) * force / mag + c.height, HEIGHT_MIN)
