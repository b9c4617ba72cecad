"""Instance-level rate limits (service-defaults `RateLimits.InstanceLevel`, Envoy's local rate limit):
token buckets checked on the public listener per request; past the limit the caller gets 429 (flag RL).

Pure: time is an argument. A request takes from the bucket of the first `Routes` entry its path matches,
else from the instance-wide bucket (when one is set).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # bucket size
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _RouteLimit:
    exact: str
    prefix: str
    regex: re.Pattern[str] | None
    bucket: TokenBucket

    def matches(self, path: str) -> bool:
        if self.exact:
            return path == self.exact
        if self.prefix:
            return path.startswith(self.prefix)
        return self.regex is not None and bool(self.regex.fullmatch(path))


def _bucket(raw: dict[str, Any]) -> TokenBucket | None:
    rps = float(raw.get("RequestsPerSecond") or 0)
    if rps <= 0:
        return None
    return TokenBucket(rps, float(raw.get("RequestsMaxBurst") or max(rps, 1.0)))


@dataclass(slots=True)
class RateLimiter:
    settings: dict[str, Any]
    instance: TokenBucket | None = None
    routes: list[_RouteLimit] = field(default_factory=list)
    limited: int = 0

    @staticmethod
    def from_entry(rate_limits: dict[str, Any] | None) -> RateLimiter | None:
        level = (rate_limits or {}).get("InstanceLevel") or {}
        limiter = RateLimiter(settings=dict(level), instance=_bucket(level))
        for r in level.get("Routes") or []:
            b = _bucket(r)
            if b is not None:
                limiter.routes.append(_RouteLimit(r.get("PathExact", ""), r.get("PathPrefix", ""),
                                                  re.compile(r["PathRegex"]) if r.get("PathRegex") else None, b))
        return limiter if limiter.instance is not None or limiter.routes else None

    def allow(self, path: str, now: float) -> bool:
        for r in self.routes:
            if r.matches(path):
                ok = r.bucket.take(now)
                break
        else:
            ok = self.instance.take(now) if self.instance is not None else True
        if not ok:
            self.limited += 1
        return ok
