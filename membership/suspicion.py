"""Lifeguard's dynamic suspicion: a suspicion timeout that starts long and shrinks as others confirm it.

A member suspected by one peer waits `hi` (suspicion_max_timeout_mult times the base timeout) before it
is declared dead; each independent confirmation (a suspect message from another member) pulls the
deadline in, reaching `lo` after `k` confirmations, on memberlist's logarithmic curve. With `k` of 0 (too
few members to confirm, or Lifeguard off) the timeout is `lo` from the start.

Only independent suspicions count (Lifeguard: "confirmations from independent members"): each member
once, never the accuser. A suspicion learned from a push-pull record has no known accuser (`frm` None):
the first member named afterwards is taken as the accuser, not as a confirmation — it is most likely the
accuser's own gossip arriving after the record it caused.
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

    def __init__(self, name: str, frm: str | None, k: int, lo: float, hi: float, start: float) -> None:
        self.name = name
        self.k = k
        self.lo = lo
        self.hi = hi
        self.start = start
        self._from = {frm} if frm is not None else set()  # the accuser and every confirmer: each counts once
        self.deadline = start + timeout_after(0, k, lo, hi)

    @property
    def confirmations(self) -> int:
        return max(0, len(self._from) - 1)

    @property
    def accusers(self) -> frozenset[str]:
        """The accuser and the members that confirmed (for logs and tests)."""
        return frozenset(self._from)

    def news(self, frm: str) -> bool:
        """Whether a suspicion from `frm` would be news (`confirm` would return True); reads only."""
        f = self._from
        return frm not in f and (not f or len(f) - 1 < self.k)

    def confirm(self, frm: str) -> bool:
        """A suspicion from `frm`: True if it was news (the accuser of a suspicion learned without one, or
        an independent confirmation, which may move the deadline in)."""
        if frm in self._from:
            return False
        if not self._from:  # learned from a push-pull: this is the accuser, heard late
            self._from.add(frm)
            return True
        if self.confirmations >= self.k:
            return False
        self._from.add(frm)
        self.deadline = self.start + timeout_after(self.confirmations, self.k, self.lo, self.hi)
        return True
