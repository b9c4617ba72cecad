"""The WAN pool's views (what the router and the API read) and the router, driven through the real SWIM core
with messages and probe events fed by hand — no sockets, no clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from proconsul.agent.cluster.coordinates import encode
from proconsul.agent.cluster.errors import DatacenterUnreachable, NoPathToDatacenter
from proconsul.agent.cluster.rpc import RPCNotSent, RPCUnavailable
from proconsul.agent.cluster.vivaldi import Coordinate
from proconsul.agent.cluster.wan.pool import ALIVE, FAILED, LEFT, UNREACHABLE_AFTER, WANPool, WANServer
from proconsul.agent.cluster.wan.router import Router
from proconsul.membership import codec as c
from proconsul.membership import core as k


def srv(node: str, dc: str, port: int = 8302) -> WANServer:
    return WANServer(node, dc, "127.0.0.1", port, port + 1000, f"id-{node}", "test")


def pool() -> WANPool:
    return WANPool(srv("a", "dc1"), "127.0.0.1", rng=random.Random(1))


def feed(p: WANPool, msgs: list[bytes]) -> None:
    """Messages as if a peer's datagram brought them; the events go through the pool's own handler."""
    p.core.on_packet(0.0, p.core.codec.packet(msgs))
    events(p, [])


def events(p: WANPool, evs: list[tuple[str, str, object]]) -> None:
    p._events(p.core.events + evs)
    p.core.events, p.core.out, p.core.timers = [], [], []


def alive(s: WANServer, inc: int = 1) -> bytes:
    return c.alive(inc, s.name, s.addr, s.port, s.tags())


def status(p: WANPool) -> dict[str, str]:
    return {m.name: m.status for m in p.members()}


def test_members_are_named_node_dot_dc_and_described_by_their_tags() -> None:
    p = pool()
    b = srv("b", "dc2", 2)
    feed(p, [alive(b), alive(srv("c", "dc3", 3)),
             c.alive(1, "x.dc9", "127.0.0.1", 9, {"dc": "dc8", "port": "1"})])  # name and tags disagree: not shown
    assert [m.name for m in p.members()] == ["a.dc1", "b.dc2", "c.dc3"]
    assert p.datacenters() == ["dc1", "dc2", "dc3"]
    view = next(m for m in p.members() if m.name == "b.dc2")
    assert view.server == b and view.server.rpc_address == "127.0.0.1:1002" and view.rtt is None


def test_a_member_that_does_not_answer_us_directly_is_failed_here_until_it_does() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2))])
    events(p, [(k.UNREACHED, "b.dc2", True)] * (UNREACHABLE_AFTER - 1))
    assert status(p)["b.dc2"] == ALIVE  # one miss is a lost packet
    events(p, [(k.UNREACHED, "b.dc2", True)])
    assert status(p)["b.dc2"] == FAILED  # others vouch for it, but we cannot reach it ourselves
    events(p, [(k.RTT, "b.dc2", (0.004, b"")), (k.RTT, "b.dc2", (0.002, b"")), (k.RTT, "b.dc2", (0.003, b""))])
    view = next(m for m in p.members() if m.name == "b.dc2")
    assert view.status == ALIVE and view.rtt == pytest.approx(0.003)  # the median of our direct round trips


def test_the_pools_verdict_dead_is_failed_and_a_leave_is_left() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc3", 3))])
    feed(p, [c.dead(1, "b.dc2", "a.dc1")])
    feed(p, [c.dead(1, "c.dc3", "c.dc3")])
    assert status(p) == {"a.dc1": ALIVE, "b.dc2": FAILED, "c.dc3": LEFT}
    assert p.datacenters() == ["dc1", "dc2"] and p.servers("dc3") == []
    feed(p, [alive(srv("c", "dc3", 3), inc=2)])  # it restarted
    assert status(p)["c.dc3"] == ALIVE


def test_force_leave_takes_failed_members_and_prune_hides_them() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc2", 3))])
    assert p.force_leave("b.dc2") is False  # alive: refused
    assert p.force_leave("nobody.dc9") is False
    events(p, [(k.UNREACHED, "b.dc2", False)] * UNREACHABLE_AFTER)
    assert p.force_leave("b.dc2") is True
    assert status(p)["b.dc2"] == LEFT
    assert p.core.queue.pending("b.dc2")  # the leave is gossiped on its behalf
    assert p.force_leave("c.dc2", prune=True) is True
    assert "c.dc2" not in status(p)
    feed(p, [alive(srv("c", "dc2", 3))])  # stale news of it cannot bring it back
    assert "c.dc2" not in status(p) and p.datacenters() == ["dc1"]


def test_forget_a_datacenter_and_a_running_server_refutes_a_leave_of_itself() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc2", 3))])
    assert sorted(p.forget_datacenter("dc2")) == ["b.dc2", "c.dc2"]
    assert p.datacenters() == ["dc1"]
    before = p.core.me.inc
    feed(p, [c.dead(before, "a.dc1", "a.dc1")])  # someone force-left us while we run
    assert p.core.me.inc > before and status(p)["a.dc1"] == ALIVE


def test_coordinates_come_from_the_probes_acks() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2))])
    theirs = Coordinate(vec=(0.01,) + (0.0,) * 7, error=0.5)
    for _ in range(3):
        events(p, [(k.RTT, "b.dc2", (0.010, encode(theirs)))])
    coords = dict((s.name, co) for s, co in p.member_coordinates())
    assert coords["b.dc2"] == theirs and coords["a.dc1"].error < 1.5  # ours moved
    assert p.core.ack_payload == encode(coords["a.dc1"])  # and our acks carry it now


def _router(p: WANPool, answers: dict[str, object]) -> tuple[Router, list[str]]:
    calls: list[str] = []

    async def call(address: str, method: str, args: dict, timeout: float | None) -> object:
        calls.append(address)
        result = answers[address]
        if isinstance(result, Exception):
            raise result
        return result

    return Router(p, "dc1", call, random.Random(1)), calls


def test_router_orders_datacenters_by_measured_rtt_ours_first_unmeasured_last() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc3", 3)), alive(srv("d", "dc4", 4))])
    events(p, [(k.RTT, "b.dc2", (0.050, b"")), (k.RTT, "c.dc3", (0.010, b""))])
    r, _ = _router(p, {})
    assert r.datacenters() == ["dc1", "dc3", "dc2", "dc4"]


def test_router_fails_over_and_then_prefers_the_server_that_answered() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc2", 3))])
    b, c_ = "127.0.0.1:1002", "127.0.0.1:1003"
    r, calls = _router(p, {b: RPCNotSent("refused"), c_: "ok"})
    for _ in range(3):
        assert asyncio.run(r.call("dc2", "m", {})) == "ok"
    assert calls.count(c_) == 3 and calls.count(b) <= 1  # tried once at most, then c is preferred


def test_router_errors_are_consuls_and_immediate() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2))])
    r, calls = _router(p, {"127.0.0.1:1002": RPCNotSent("refused")})
    with pytest.raises(NoPathToDatacenter, match="^No path to datacenter$"):
        asyncio.run(r.call("dc9", "m", {}))
    with pytest.raises(DatacenterUnreachable, match="^Remote DC has no server currently reachable$"):
        asyncio.run(r.call("dc2", "m", {}, idempotent=True))
    events(p, [(k.UNREACHED, "b.dc2", True)] * UNREACHABLE_AFTER)  # failed here only: still tried, last
    calls.clear()
    with pytest.raises(DatacenterUnreachable):
        asyncio.run(r.call("dc2", "m", {}, idempotent=True))
    assert calls == ["127.0.0.1:1002"]
    feed(p, [c.dead(1, "b.dc2", "c.dc3")])  # now the pool says it is failed: not even tried
    calls.clear()
    with pytest.raises(DatacenterUnreachable):
        asyncio.run(r.call("dc2", "m", {}))
    assert calls == []


def test_router_tries_servers_it_reaches_itself_first() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc2", 3))])
    events(p, [(k.UNREACHED, "b.dc2", True)] * UNREACHABLE_AFTER)
    r, calls = _router(p, {"127.0.0.1:1002": "b", "127.0.0.1:1003": "c"})
    assert [m.name for m in r.servers("dc2")] == ["c.dc2"]
    assert asyncio.run(r.call("dc2", "m", {})) == "c"


def test_router_does_not_resend_a_write_whose_outcome_is_unknown() -> None:
    p = pool()
    feed(p, [alive(srv("b", "dc2", 2)), alive(srv("c", "dc2", 3))])
    r, calls = _router(p, {"127.0.0.1:1002": RPCUnavailable("broke"), "127.0.0.1:1003": RPCUnavailable("broke")})
    with pytest.raises(RPCUnavailable):
        asyncio.run(r.call("dc2", "m", {}, idempotent=False))
    assert len(calls) == 1


async def test_flood_join_brings_in_our_own_datacenters_servers_known_from_the_lan() -> None:
    """Real sockets on 127.0.0.1: a server joins the WAN a server of its datacenter the LAN told it about."""
    b = WANPool(srv("b", "dc1", 0), "127.0.0.1", rng=random.Random(2))
    b.update_me(await b.start(), 1002)
    a = WANPool(srv("a", "dc1", 0), "127.0.0.1", rng=random.Random(1),
                local_servers=lambda: [("b.dc1", "127.0.0.1", b.port)])
    a.update_me(await a.start(), 1001)
    try:
        assert await a.flood() == 1
        assert status(a) == {"a.dc1": ALIVE, "b.dc1": ALIVE} and "a.dc1" in status(b)
        assert await a.flood() == 0  # known now: nothing to do
    finally:
        await a.stop(False)
        await b.stop(False)
