"""A retry budget (pure): retries may add at most `ratio` of the requests of the last `window`
seconds, plus a floor of `min_per_second`, so a failing service is never hit by a retry storm.

This is Linkerd's budget idea (Consul and Envoy retry without one by default): under a total outage a
client sends about 1.2× its normal load instead of (1 + num_retries)×.
"""

from __future__ import annotations

from collections import deque


class RetryBudget:
    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, window: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.refused = 0  # retries the budget did not allow (a metric)

    def _trim(self, now: float) -> None:
        edge = now - self.window
        while self._requests and self._requests[0] < edge:
            self._requests.popleft()
        while self._retries and self._retries[0] < edge:
            self._retries.popleft()

    def request(self, now: float) -> None:
        """Count one original request (not a retry)."""
        self._requests.append(now)
        if len(self._requests) > 100_000:  # bounded: the window's count is what matters
            self._requests.popleft()

    def try_retry(self, now: float) -> bool:
        """Whether one more retry fits the budget now; if so it is counted."""
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_second * self.window
        if len(self._retries) + 1 > allowed:
            self.refused += 1
            return False
        self._retries.append(now)
        return True
