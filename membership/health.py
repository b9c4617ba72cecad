"""Lifeguard's local health multiplier: a member that misses acks or has to refute suspicions of itself
is probably the slow one, so it stretches its own probe intervals instead of accusing others.

The score runs from 0 (healthy) to max_multiplier - 1; a timeout is scaled by score + 1.
"""

from __future__ import annotations


class LocalHealth:
    __slots__ = ("score", "_max")

    def __init__(self, max_multiplier: int) -> None:
        self.score = 0
        self._max = max_multiplier - 1

    def apply(self, delta: int) -> None:
        s = self.score + delta
        self.score = 0 if s < 0 else self._max if s > self._max else s

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
