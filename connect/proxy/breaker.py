"""Circuit breaking for one upstream (Consul's UpstreamConfig.Limits, Envoy's circuit breakers): pure
counting, no I/O.

`admit` says what to do with a new request: send it, queue it (MaxConnections reached, room among
MaxPendingRequests) or refuse it at once (503 with response flag UO). `release` frees a slot and hands
back the queued request that may go now. Nothing waits without bound: the queue has a fixed length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from proconsul.connect.proxy.config import Limits

T = TypeVar("T")
SEND, QUEUE, REFUSE = "send", "queue", "refuse"
DEFAULT_PENDING = 1024  # Envoy's max_pending_requests default


class Breaker(Generic[T]):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = 0
        self.pending: deque[T] = deque()
        self.overflows = 0  # requests refused (Envoy's upstream_rq_pending_overflow + _rq_overflow)
        self.peak = 0

    def admit(self, item: T, can_wait: bool = True) -> str:
        """SEND, QUEUE or REFUSE for a new request (`can_wait` False: an L4 connection, which never waits:
        Envoy's TCP proxy closes connections past MaxConnections)."""
        lim = self.limits
        if lim.max_concurrent_requests and self.active + len(self.pending) >= lim.max_concurrent_requests:
            self.overflows += 1
            return REFUSE
        if lim.max_connections and self.active >= lim.max_connections:
            if not can_wait:
                self.overflows += 1
                return REFUSE
            room = lim.max_pending_requests or DEFAULT_PENDING
            if len(self.pending) >= room:
                self.overflows += 1
                return REFUSE
            self.pending.append(item)
            return QUEUE
        self.active += 1
        self.peak = max(self.peak, self.active)
        return SEND

    def release(self) -> T | None:
        """A request in flight ended: the next queued one (now counted in flight), if any."""
        if self.active > 0:
            self.active -= 1
        if self.pending and (not self.limits.max_connections or self.active < self.limits.max_connections):
            self.active += 1
            self.peak = max(self.peak, self.active)
            return self.pending.popleft()
        return None

    def leave(self, item: T, admitted: bool | None, wanted: Callable[[T], bool]) -> T | None:
        """`item` is over: it no longer counts — in flight (`admitted` True), queued (False) or neither (None).
        Returns the queued item that may go now (counted in flight), passing over those `wanted` refuses
        (their caller went away)."""
        if admitted is None:
            return None
        if not admitted:
            self.forget(item)
            return None
        nxt = self.release()
        while nxt is not None and not wanted(nxt):
            nxt = self.release()
        return nxt

    def forget(self, item: T) -> bool:
        """A queued request whose caller went away."""
        try:
            self.pending.remove(item)
            return True
        except ValueError:
            return False
