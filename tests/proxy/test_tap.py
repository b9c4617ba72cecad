"""The live tap's pure core: filters, the per-watcher token bucket (sampling by rate), the bounded queue,
and the runtime holding no tap at all while nobody watches."""

from __future__ import annotations

from typing import Any

import pytest

from proconsul.connect.proxy.tap import QUEUE_MAX, Subscriber, Tap, TapError, TapFilter, event, parse_rate


def rec(path: str = "/a", status: int = 200, method: str = "GET", **kw: Any) -> dict[str, Any]:
    return {"start_time": 1.0, "method": method, "path": path, "response_code": status, "response_flags": "-",
            "duration": 3, "latency_ms": 2.5, "downstream_peer_uri_san": "spiffe://td/ns/default/dc/dc1/svc/web",
            **kw}


def test_event_fields() -> None:
    ev = event(rec(upstream_service="api", route_name="api/0", split="v2"), True, "api")
    assert ev["direction"] == "inbound" and ev["source"] == "web" and ev["latency_ms"] == 2.5
    assert (ev["upstream"], ev["route"], ev["split"], ev["status"]) == ("api", "api/0", "v2", 200)


@pytest.mark.parametrize(("query", "ev", "hit"), [
    ({"status": "5xx"}, rec(status=503), True), ({"status": "5xx"}, rec(status=404), False),
    ({"status": "404"}, rec(status=404), True), ({"path_prefix": "/adm"}, rec(path="/admin/x"), True),
    ({"path_prefix": "/adm"}, rec(path="/a"), False), ({"method": "post"}, rec(method="POST"), True),
    ({"direction": "outbound"}, rec(), False), ({}, rec(), True),
])
def test_filters(query: dict[str, str], ev: dict[str, Any], hit: bool) -> None:
    assert TapFilter.parse(query).matches(event(ev, True, "api")) is hit


@pytest.mark.parametrize("query", [{"status": "9xx"}, {"status": "600"}, {"direction": "sideways"},
                                   {"path_prefix": "admin"}])
def test_bad_filters_name_the_parameter(query: dict[str, str]) -> None:
    with pytest.raises(TapError, match=next(iter(query))):
        TapFilter.parse(query)
    with pytest.raises(TapError, match="max_rps"):
        parse_rate("0")


def test_rate_sampling_and_the_counts_travel_with_the_next_event() -> None:
    sub = Subscriber(TapFilter(), max_rps=2, now=0.0)
    ev = event(rec(), True, "api")
    for i in range(10):  # ten at once: a burst of two passes
        sub.offer(ev, 0.0 + i * 1e-6)
    assert len(sub.queue) == 2 and sub.sampled_out == 8
    got = sub.take()
    assert got[0]["sampled_out"] == 8 and "sampled_out" not in got[1] and sub.sampled_out == 0
    sub.offer(ev, 1.0)  # a second later the bucket holds two again
    assert len(sub.take()) == 1


def test_queue_is_bounded() -> None:
    sub = Subscriber(TapFilter(), max_rps=1e9, now=0.0)
    ev = event(rec(), True, "api")
    for _ in range(QUEUE_MAX + 10):
        sub.offer(ev, 0.0)
    assert len(sub.queue) == QUEUE_MAX and sub.dropped == 10


def test_tap_offers_to_each_watcher_by_its_filter() -> None:
    tap = Tap("api")
    errors, everything = Subscriber(TapFilter(status="5xx"), 100, 0.0), Subscriber(TapFilter(), 100, 0.0)
    tap.subscribers += [errors, everything]
    tap.offer(rec(status=200), True, 0.1)
    tap.offer(rec(status=500), False, 0.2)
    assert [e["status"] for e in errors.take()] == [500]
    assert [e["direction"] for e in everything.take()] == ["inbound", "outbound"]
