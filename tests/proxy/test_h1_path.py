"""HTTP mode's per-request shortcuts keep their meaning: what the reader learns from a head (framing, Expect),
a route's reused decisions, round robin's fast pick, and the per-connection request-timeout timer."""

from __future__ import annotations

import asyncio
import random

from proconsul.connect.chain import compiler, entries
from proconsul.connect.proxy import h1
from proconsul.connect.proxy.balancer import Instance, UpstreamPool
from proconsul.connect.proxy.http import Back
from proconsul.connect.proxy.routing import RouteTable


class Heads:
    def __init__(self) -> None:
        self.heads: list[h1.Head] = []
        self.ends = 0

    def on_head(self, head: h1.Head) -> None:
        self.heads.append(head)

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None:
        self.ends += 1


def test_request_heads_give_framing_and_expect() -> None:
    sink = Heads()
    reader = h1.RequestReader(sink)
    reader.feed(b"POST /a HTTP/1.1\r\nHost: one\r\nHost: two\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
                b"POST /b HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"
                b"GET /c HTTP/1.0\r\nHost: x\r\nExpect: 100-continue-not\r\n\r\n")
    a, b, c = sink.heads
    assert (a.version, a.length, a.chunked, a.expect_continue, a.header(b"host")) == (b"1.1", 3, False, True, b"one")
    assert (b.length, b.chunked, b.expect_continue) == (-1, True, False)
    assert (c.version, c.length, c.chunked, c.expect_continue) == (b"1.0", -1, False, False)
    assert sink.ends == 3


def test_response_heads_give_framing() -> None:
    sink = Heads()
    reader = h1.ResponseReader(sink)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert [(h.status, h.length, h.chunked) for h in sink.heads] == [(200, 2, False), (200, -1, True)]
    try:
        h1.ResponseReader(Heads()).feed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    except h1.BadMessage:
        pass
    else:
        raise AssertionError("a bad Content-Length is refused")


def test_round_robin_fast_pick_matches_the_general_one() -> None:
    insts = [Instance(f"i{n}", "127.0.0.1", 1000 + n, "api") for n in range(4)]
    fast, slow = UpstreamPool("api"), UpstreamPool("api")
    for p in (fast, slow):
        p.set_instances(insts)
    now = 100.0
    for p in (fast, slow):  # one ejected: both skip it and keep the rhythm
        p._states["i2"].ejected_until = now + 30
    rng = random.Random(1)
    picks_fast = [fast.pick(now, rng).id for _ in range(9)]
    picks_slow = [slow.pick(now, rng, {"nobody"}).id for _ in range(9)]  # a non-empty exclude: the general path
    assert picks_fast == picks_slow == ["i0", "i1", "i3"] * 3


class _Waiting:
    """The exchange a Back carries, as far as its timer is concerned."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired_at: float | None = None
        self.fired = asyncio.Event()

    def timed_out(self) -> None:
        self.fired_at = asyncio.get_running_loop().time()
        self.deadline = 0.0
        self.fired.set()


async def _timer_cases() -> None:
    loop = asyncio.get_running_loop()
    back = Back(None)
    # a long timeout, then (the connection reused) a short one: the timer moves earlier and fires for it
    long = _Waiting(loop.time() + 5.0)
    back.exchange = long  # type: ignore[assignment]
    back.arm(long.deadline)
    long.deadline = 0.0  # answered
    short = _Waiting(loop.time() + 0.05)
    due = short.deadline
    back.exchange = short  # type: ignore[assignment]
    back.arm(short.deadline)
    await asyncio.wait_for(short.fired.wait(), 2)
    assert short.fired_at is not None and due - 0.002 <= short.fired_at < due + 1.0  # not the 5 s one
    # a short timeout, answered; the next request has a longer one: the early firing re-arms, no false timeout
    first = _Waiting(loop.time() + 0.05)
    back.exchange = first  # type: ignore[assignment]
    back.arm(first.deadline)
    first.deadline = 0.0
    second = _Waiting(loop.time() + 0.3)
    due = second.deadline
    back.exchange = second  # type: ignore[assignment]
    back.arm(second.deadline)
    await asyncio.wait_for(second.fired.wait(), 2)
    assert second.fired_at is not None and second.fired_at >= due - 0.002
    # an idle connection's pending timer does nothing (and is gone once it fired)
    back.exchange = None
    back.arm(loop.time() + 0.01)
    idle = loop.create_future()
    loop.call_at(back.timer_at + 0.05, idle.set_result, None)
    await idle
    assert back.timer is None


def test_the_per_connection_timer_times_out_the_exchange_in_flight() -> None:
    asyncio.run(_timer_cases())


def test_a_routes_decisions_are_made_once_per_leg() -> None:
    chain = [*({"Kind": "service-defaults", "Name": n, "Protocol": "http"} for n in ("api", "admin")),
             {"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"},
                                                                     "v2": {"Filter": "Service.Meta.v == 2"}}},
             {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 75, "ServiceSubset": "v1"},
                                                                   {"Weight": 25, "ServiceSubset": "v2"}]},
             {"Kind": "service-router", "Name": "api", "Routes": [
                 {"Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x-env", "Prefix": "prod"}]}},
                  "Destination": {"Service": "admin", "PrefixRewrite": "/internal"}}]}]
    idx = compiler.index_entries([entries.validate(dict(e)) for e in chain])
    t = RouteTable.from_chain(compiler.compile_chain(idx, "api", datacenter="dc1", trust_domain="td"))
    a, b = t.decide(b"GET", b"/x", [], 0.1), t.decide(b"POST", b"/y", [], 0.2)
    assert a is b and a.target is None and a.leg.target.id == "v1.api.default.default.dc1"
    c = t.decide(b"GET", b"/z", [], 0.9)
    assert c is not a and c.leg.target.id == "v2.api.default.default.dc1"
    # a PrefixRewrite depends on the path: a new decision each time
    r1 = t.decide(b"GET", b"/admin/a?q=1", [(b"x-env", b"prod")], 0.5)
    r2 = t.decide(b"GET", b"/admin/b", [(b"x-env", b"prod")], 0.5)
    assert (r1.target, r2.target) == (b"/internal/a?q=1", b"/internal/b")
