"""The LAN membership core: merge rules, failure detection, leave, force-leave (no sockets, no clock)."""

from __future__ import annotations

import pytest

from proconsul.agent.cluster.membership import ALIVE, FAILED, LEFT, Member, MemberList, MembershipError


def member(name: str, hb: int = 0, inc: int = 0, status: str = ALIVE, role: str = "node") -> Member:
    return Member(name, "127.0.0.1", 8301, {"role": role, "dc": "dc1", "id": name, "port": "8300"}, status, inc, hb)


def test_merge_takes_newer_versions_and_reports_news() -> None:
    a = MemberList(member("a"), fail_after=5.0)
    assert a.merge([member("b", 1)], now=0.0) == ["b"]
    assert a.merge([member("b", 1)], now=1.0) == []  # nothing newer
    assert a.status("b") == ALIVE
    a.merge([member("b", 0)], now=1.0)
    assert dict((m.name, m.heartbeat) for m, _ in a.members())["b"] == 1  # older news ignored


def test_a_stalled_heartbeat_fails_the_member_and_a_fresh_one_revives_it() -> None:
    a = MemberList(member("a"), fail_after=5.0)
    a.merge([member("b", 1)], now=0.0)
    assert a.tick(4.0) == [] and a.status("b") == ALIVE
    assert a.tick(5.5) == ["b"] and a.status("b") == FAILED
    assert a.tick(6.0) == []  # reported once
    assert a.alive() == [a.me]
    assert a.merge([member("b", 2)], now=7.0) == ["b"] and a.status("b") == ALIVE


def test_our_own_heartbeat_advances_and_a_remembered_newer_self_is_overtaken() -> None:
    a = MemberList(member("a"), fail_after=5.0)
    a.tick(1.0)
    a.tick(2.0)
    assert a.me.heartbeat == 2
    a.merge([member("a", hb=50, inc=0)], now=3.0)  # someone remembers an older run of us with more beats
    assert a.me.version > (0, 50)


def test_leave_is_news_that_wins_and_force_leave_only_for_failed_members() -> None:
    a = MemberList(member("a"), fail_after=5.0)
    b = MemberList(member("b"), fail_after=5.0)
    a.merge([b.me], now=0.0)
    gone = b.leave()
    assert gone.status == LEFT
    assert a.merge([gone], now=1.0) == ["b"] and a.status("b") == LEFT
    a.merge([member("c", 1)], now=1.0)
    assert not a.force_leave("c", now=2.0)  # alive: refused
    a.tick(10.0)
    assert a.status("c") == FAILED and a.force_leave("c", now=10.0) and a.status("c") == LEFT
    assert not a.force_leave("a", now=10.0)  # never ourselves


def test_wire_round_trip_and_malformed_entries() -> None:
    m = member("s1", 3, 2, role="consul")
    assert Member.from_wire(m.to_wire()) == m and m.is_server and m.rpc_address == "127.0.0.1:8300"
    for bad in (None, [], ["x"] * 7, ["n", "a", "p", {}, "alive", 0, 0], ["n", "a", 1, {"k": 1}, "alive", 0, 0],
                ["", "a", 1, {}, "alive", 0, 0], ["n", "a", 1, {}, "zombie", 0, 0]):
        with pytest.raises(MembershipError):
            Member.from_wire(bad)
