"""Lifeguard's dynamic suspicion: a suspicion timeout that starts long and shrinks as others confirm it.

A member suspected by one peer waits `hi` (suspicion_max_timeout_mult times the base timeout) before it
is declared dead; each independent confirmation (a suspect message from another member) pulls the
deadline in, reaching `lo` after `k` confirmations, on memberlist's logarithmic curve. With `k` of 0 (too
few members to confirm, or Lifeguard off) the timeout is `lo` from the start.
"""

from __future__ import annotations

import math


def timeout_after(confirmations: int, k: int, lo: float, hi: float) -> float:
    """The total suspicion timeout once `confirmations` of the `k` expected have come in."""
    if k < 1:
        return lo
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    raw = math.floor(1000.0 * (hi - frac * (hi - lo))) / 1000.0
    return max(lo, raw)


class Suspicion:
    """One member's suspicion as this view holds it; the core fires it at `deadline`."""

    __slots__ = ("name", "k", "lo", "hi", "start", "deadline", "_from")

    def __init__(self, name: str, frm: str, k: int, lo: float, hi: float, start: float) -> None:
        self.name = name
        self.k = k
        self.lo = lo
        self.hi = hi
        self.start = start
        self._from = {frm}  # the accuser and every confirmer: each counts once
        self.deadline = start + timeout_after(0, k, lo, hi)

    @property
    def confirmations(self) -> int:
        return len(self._from) - 1

    def confirm(self, frm: str) -> bool:
        """An independent suspicion from `frm`: True if it counted (the deadline may have moved in)."""
        if self.confirmations >= self.k or frm in self._from:
            return False
        self._from.add(frm)
        self.deadline = self.start + timeout_after(self.confirmations, self.k, self.lo, self.hi)
        return True
