"""The WAN pool's pure core and the router, without sockets or clocks."""

from __future__ import annotations

import asyncio
import random

import pytest

from proconsul.agent.cluster.errors import DatacenterUnreachable, NoPathToDatacenter
from proconsul.agent.cluster.rpc import RPCNotSent, RPCUnavailable
from proconsul.agent.cluster.wan.pool import ALIVE, FAILED, LEFT, WANError, WANPool, WANServer
from proconsul.agent.cluster.wan.router import Router


def srv(node: str, dc: str, port: int = 8302, inc: int = 1, status: str = ALIVE) -> WANServer:
    return WANServer(node, dc, "127.0.0.1", port, port + 1000, f"id-{node}", status, inc)


def pool(fail_after: float = 5.0) -> WANPool:
    return WANPool(srv("a", "dc1"), fail_after=fail_after, reap_after=100.0)


def test_merge_learns_members_and_names_them_node_dot_dc() -> None:
    p = pool()
    assert p.merge([srv("b", "dc2", 2), srv("c", "dc3", 3)], now=0.0) == ["b.dc2", "c.dc3"]
    assert [m.name for m in p.members()] == ["a.dc1", "b.dc2", "c.dc3"]
    assert p.datacenters() == ["dc1", "dc2", "dc3"]
    assert p.merge([srv("b", "dc2", 2)], now=1.0) == []  # old news changes nothing


def test_silence_fails_a_member_and_an_exchange_revives_it() -> None:
    p = pool(fail_after=5.0)
    p.merge([srv("b", "dc2")], now=0.0)
    assert p.tick(4.0) == []
    assert p.tick(5.5) == ["b.dc2"]
    assert p.status("b.dc2") == FAILED
    assert p.contact("b.dc2", 6.0, 0.002) is True
    assert p.status("b.dc2") == ALIVE
    assert p.members()[1].rtt == pytest.approx(0.002)


def test_left_beats_alive_at_the_same_incarnation_and_a_restart_beats_left() -> None:
    p = pool()
    p.merge([srv("b", "dc2", inc=1)], now=0.0)
    assert p.merge([srv("b", "dc2", inc=1, status=LEFT)], now=1.0) == ["b.dc2"]
    assert p.status("b.dc2") == LEFT
    assert p.merge([srv("b", "dc2", inc=1)], now=2.0) == []  # stale "alive" cannot undo the leave
    assert p.merge([srv("b", "dc2", inc=2)], now=3.0) == ["b.dc2"]  # it restarted
    assert p.status("b.dc2") == ALIVE


def test_a_running_member_refutes_a_force_leave_of_itself() -> None:
    p = pool()
    before = p.me.incarnation
    p.merge([srv("a", "dc1", inc=before, status=LEFT)], now=0.0)
    assert p.me.status == ALIVE and p.me.incarnation > before


def test_force_leave_only_takes_failed_members_and_prune_hides_them() -> None:
    p = pool(fail_after=1.0)
    p.merge([srv("b", "dc2"), srv("c", "dc2", 9)], now=0.0)
    assert p.force_leave("b.dc2", 0.5) is False  # alive: refused
    p.tick(2.0)
    assert p.force_leave("b.dc2", 2.0) is True
    assert p.status("b.dc2") == LEFT and "b.dc2" in [m.name for m in p.members()]
    assert p.force_leave("c.dc2", 2.0, prune=True) is True
    assert "c.dc2" not in [m.name for m in p.members()]
    assert p.merge([srv("c", "dc2", 9)], now=3.0) == []  # stale news of it cannot bring it back
    assert p.datacenters() == ["dc1"]
    p.tick(200.0)  # reaped after reap_after
    assert [m.name for m in p.members()] == ["a.dc1"]


def test_wire_round_trip_and_malformed_entries() -> None:
    s = srv("b", "dc2")
    assert WANServer.from_wire(s.to_wire()) == s
    for bad in (None, [], ["b"], [*s.to_wire()[:3], "x", *s.to_wire()[4:]], ["b", "dc.2", *s.to_wire()[2:]],
                [*s.to_wire()[:6], "dead", *s.to_wire()[7:]], [*s.to_wire()[:3], 0, *s.to_wire()[4:]]):
        with pytest.raises(WANError):
            WANServer.from_wire(bad)


def _router(p: WANPool, answers: dict[str, object]) -> tuple[Router, list[str]]:
    calls: list[str] = []

    async def call(address: str, method: str, args: dict, timeout: float | None) -> object:
        calls.append(address)
        result = answers[address]
        if isinstance(result, Exception):
            raise result
        return result

    return Router(p, "dc1", call, random.Random(1)), calls


def test_router_orders_datacenters_by_rtt_ours_first_unmeasured_last() -> None:
    p = pool()
    p.merge([srv("b", "dc2", 2), srv("c", "dc3", 3), srv("d", "dc4", 4)], now=0.0)
    p.contact("b.dc2", 1.0, 0.050)
    p.contact("c.dc3", 1.0, 0.010)
    r, _ = _router(p, {})
    assert r.datacenters() == ["dc1", "dc3", "dc2", "dc4"]


def test_router_fails_over_and_then_prefers_the_server_that_answered() -> None:
    p = pool()
    p.merge([srv("b", "dc2", 2), srv("c", "dc2", 3)], now=0.0)
    b, c = "127.0.0.1:1002", "127.0.0.1:1003"
    r, calls = _router(p, {b: RPCNotSent("refused"), c: "ok"})
    for _ in range(3):
        assert asyncio.run(r.call("dc2", "m", {})) == "ok"
    assert calls.count(c) == 3 and calls.count(b) <= 1  # tried once at most, then c is preferred


def test_router_errors_are_consuls_and_immediate() -> None:
    p = pool(fail_after=1.0)
    p.merge([srv("b", "dc2", 2)], now=0.0)
    r, calls = _router(p, {"127.0.0.1:1002": RPCNotSent("refused")})
    with pytest.raises(NoPathToDatacenter, match="^No path to datacenter$"):
        asyncio.run(r.call("dc9", "m", {}))
    with pytest.raises(DatacenterUnreachable, match="^Remote DC has no server currently reachable$"):
        asyncio.run(r.call("dc2", "m", {}, idempotent=True))
    p.tick(5.0)  # now the pool says it is failed: not even tried
    calls.clear()
    with pytest.raises(DatacenterUnreachable):
        asyncio.run(r.call("dc2", "m", {}))
    assert calls == []


def test_router_does_not_resend_a_write_whose_outcome_is_unknown() -> None:
    p = pool()
    p.merge([srv("b", "dc2", 2), srv("c", "dc2", 3)], now=0.0)
    r, calls = _router(p, {"127.0.0.1:1002": RPCUnavailable("broke"), "127.0.0.1:1003": RPCUnavailable("broke")})
    with pytest.raises(RPCUnavailable):
        asyncio.run(r.call("dc2", "m", {}, idempotent=False))
    assert len(calls) == 1
