"""Live tap: the requests passing a sidecar, streamed to whoever watches (`proconsul connect tap`).

When nobody watches, the runtime holds no `Tap` at all and the request path tests one attribute for None:
nothing is built, nothing is queued. A watcher (the admin listener's `/tap`, which the agent's
`/v1/agent/connect/tap/:service` merges across a service's proxies) adds a `Subscriber` with its filter
and its rate: each request that matches is offered to it, and kept if the subscriber's token bucket
allows (`max_rps`, a burst of as many — sampling by rate, so a busy proxy costs the same per watcher as
an idle one) and its queue (`QUEUE_MAX`) has room; the rest are counted (`SampledOut`, `Dropped`) and
the counts travel with the next event. Pure but for the event a waiting stream is woken with; time is an
input.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUEUE_MAX = 1024
DEFAULT_RPS = 100.0
MAX_RPS = 10_000.0
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
DIRECTIONS = ("", "inbound", "outbound")


class TapError(ValueError):
    """A tap parameter that cannot be used (the message names it)."""


@dataclass(frozen=True, slots=True)
class TapFilter:
    path_prefix: str = ""
    status: str = ""  # "" any, a class ("5xx"), or one code ("503")
    method: str = ""
    direction: str = ""  # "", "inbound" (callers of the service), "outbound" (its calls to upstreams)

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> TapFilter:
        """From query parameters `path_prefix`, `status`, `method`, `direction` (TapError names a bad one)."""
        status = (query.get("status") or "").lower()
        if status and status not in STATUS_CLASSES and not (status.isdigit() and 100 <= int(status) <= 599):
            raise TapError(f"status {status!r} must be a class (2xx, 4xx, 5xx, …) or a code (100-599)")
        direction = (query.get("direction") or "").lower()
        if direction not in DIRECTIONS:
            raise TapError(f"direction {direction!r} must be inbound or outbound")
        path = query.get("path_prefix") or ""
        if path and not path.startswith("/"):
            raise TapError(f"path_prefix {path!r} must start with /")
        return cls(path, status, (query.get("method") or "").upper(), direction)

    def matches(self, ev: dict[str, Any]) -> bool:
        if self.path_prefix and not ev["path"].startswith(self.path_prefix):
            return False
        if self.method and ev["method"] != self.method:
            return False
        if self.direction and ev["direction"] != self.direction:
            return False
        if self.status:
            code = ev["status"]
            if self.status.endswith("xx"):
                return code // 100 == int(self.status[0])
            return code == int(self.status)
        return True


def parse_rate(value: str | None) -> float:
    if not value:
        return DEFAULT_RPS
    try:
        rate = float(value)
    except ValueError:
        raise TapError(f"max_rps {value!r} must be a number") from None
    if not 0 < rate <= MAX_RPS:
        raise TapError(f"max_rps {value!r} must be above 0 and at most {MAX_RPS:g}")
    return rate


def event(rec: dict[str, Any], inbound: bool, service: str) -> dict[str, Any]:
    """What a watcher sees of one request, from the access-log record both sides build."""
    source = rec.get("downstream_peer_uri_san") or ""
    return {"time": rec["start_time"], "service": service, "direction": "inbound" if inbound else "outbound",
            "method": rec["method"], "path": rec["path"], "status": rec["response_code"],
            "latency_ms": rec.get("latency_ms", rec["duration"]), "flags": rec["response_flags"],
            "source": source.rsplit("/svc/", 1)[-1] if source else "",
            "upstream": rec.get("upstream_service", ""), "instance": rec.get("upstream_instance", ""),
            "route": rec.get("route_name", ""), "split": rec.get("split", "")}


class Subscriber:
    """One watcher: its filter, its token bucket and its bounded queue."""

    def __init__(self, flt: TapFilter, max_rps: float, now: float) -> None:
        self.filter = flt
        self.rate = max_rps
        self.tokens = max_rps
        self.last = now
        self.queue: deque[dict[str, Any]] = deque()
        self.sampled_out = 0
        self.dropped = 0
        self.wake = asyncio.Event()

    def offer(self, ev: dict[str, Any], now: float) -> None:
        if not self.filter.matches(ev):
            return
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            self.sampled_out += 1
            return
        if len(self.queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self.tokens -= 1.0
        self.queue.append(ev)
        self.wake.set()

    def take(self) -> list[dict[str, Any]]:
        """What arrived since the last call; the first event carries the counts of what was left out."""
        out = list(self.queue)
        self.queue.clear()
        self.wake.clear()
        if out and (self.sampled_out or self.dropped):
            out[0] = {**out[0], "sampled_out": self.sampled_out, "dropped": self.dropped}
            self.sampled_out = self.dropped = 0
        return out


class Tap:
    """The watchers of one proxy; the runtime holds one only while somebody watches."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.subscribers: list[Subscriber] = []
        self.offered = 0

    def offer(self, rec: dict[str, Any], inbound: bool, now: float) -> None:
        self.offered += 1
        ev = event(rec, inbound, self.service)
        for sub in self.subscribers:
            sub.offer(ev, now)
