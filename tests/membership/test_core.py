"""The membership core's rules, driven by hand: probing, suspicion, refutation, Lifeguard, dissemination,
push-pull, reaping, and bad input (no sockets, no clock: a few cores wired together in the test)."""

from __future__ import annotations

import heapq
import random
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proconsul.membership import codec as c
from proconsul.membership import core as k
from proconsul.membership.config import LAN, WAN, Timings
from proconsul.membership.core import Membership
from proconsul.membership.errors import ConfigError, Malformed, Refused
from proconsul.membership.suspicion import Suspicion, timeout_after
from proconsul.membership.view import ALIVE, DEAD, LEFT, SUSPECT

LABEL = "lan:dc1"


def core(i: int, timings: Timings = LAN, **kw: Any) -> Membership:
    return Membership(f"m{i}", "127.0.0.1", 9000 + i, {"role": "node", "i": str(i)}, rng=random.Random(i),
                      timings=timings, label=LABEL, **kw)


class Net:
    """Cores wired together by hand: datagrams delivered at once, timers and streams run in time order."""

    def __init__(self, n: int, timings: Timings = LAN) -> None:
        self.cores = [core(i, timings) for i in range(n)]
        self.by_addr = {(m.addr, m.port): m for m in self.cores}
        self.now = 0.0
        self.down: set[str] = set()  # members that neither send nor receive (crashed)
        self.heap: list[tuple[float, int, Membership, int, Any]] = []
        self.seq = 0
        self.log: list[tuple[str, str, list[Any]]] = []  # (from, to, messages) of every datagram
        self.events: list[tuple[str, str, str, Any]] = []  # (observer, kind, member, incarnation)
        for m in self.cores:  # everyone knows everyone, as after joins
            for other in self.cores:
                if other is not m:
                    m.view.put(other.view.get(other.name))

    def core(self, name: str) -> Membership:
        return next(m for m in self.cores if m.name == name)

    def start(self) -> None:
        for m in self.cores:
            m.start(self.now)
        self.flush()

    def flush(self) -> None:
        busy = True
        while busy:
            busy = False
            for m in self.cores:
                if m.name in self.down:
                    m.out.clear()
                    m.streams.clear()
                    m.timers.clear()
                    continue
                for when, kind, token in m.timers:
                    self.seq += 1
                    heapq.heappush(self.heap, (when, self.seq, m, kind, token))
                m.timers.clear()
                self.events += [(m.name, kind, name, inc) for kind, name, inc in m.events]
                m.events.clear()
                out, m.out = m.out, []
                streams, m.streams = m.streams, []
                for dest, data in out:
                    busy = True
                    target = self.by_addr.get(dest)
                    self.log.append((m.name, target.name if target else str(dest), LABELLED.decode(data)))
                    if target is not None and target.name not in self.down:
                        target.on_packet(self.now, data)
                for kind, dest, body, token, _deadline in streams:
                    busy = True
                    self.stream(m, dest, kind, token, body)

    def stream(self, m: Membership, dest: tuple[str, int], kind: int, token: Any, body: bytes) -> None:
        target = self.by_addr.get(dest)
        if target is None or target.name in self.down:
            m.stream_failed(self.now, kind, token)
            return
        while body is not None:
            reply = target.on_stream(self.now, body)
            if reply is None:
                m.stream_failed(self.now, kind, token)
                return
            body = m.stream_reply(self.now, kind, token, reply)

    def run(self, until: float) -> None:
        self.flush()
        while self.heap and self.heap[0][0] <= until:
            when, _, m, kind, token = heapq.heappop(self.heap)
            if m.name in self.down:
                continue
            self.now = when
            m.on_timer(when, kind, token)
            self.flush()
        self.now = until

    def sent(self, kind: int) -> list[tuple[str, str, list[Any]]]:
        return [(a, b, msg) for a, b, msgs in self.log for msg in msgs if msg[0] == kind]

    def seen(self, kind: str, member: str) -> list[str]:
        return [obs for obs, k_, name, _ in self.events if k_ == kind and name == member]


LABELLED = c.Codec(LABEL)


def packet(*msgs: bytes) -> bytes:
    return LABELLED.packet(list(msgs))


# ---------------------------------------------------------------------------------------- timings
def test_memberlist_scaling_rules_at_memberlists_sizes() -> None:
    assert [LAN.retransmit_limit(n) for n in (1, 9, 10, 99, 1000, 10_000)] == [4, 4, 8, 8, 16, 20]
    assert LAN.suspicion_min(1) == 4.0 and LAN.suspicion_min(100) == 8.0 and LAN.suspicion_min(10_000) == 16.0
    assert LAN.suspicion_max(10_000) == 96.0
    assert [LAN.push_pull_period(n) for n in (3, 32, 33, 64, 1000, 10_000)] == [30, 30, 60, 60, 180, 300]
    assert (WAN.probe_interval, WAN.probe_timeout, WAN.gossip_interval, WAN.gossip_nodes, WAN.suspicion_mult,
            WAN.retransmit_mult) == (5.0, 3.0, 0.5, 4, 6, 4)


def test_consul_gossip_blocks_apply_and_bad_values_are_refused() -> None:
    t = LAN.with_consul({"probe_interval": 2.0, "gossip_nodes": 5})
    assert (t.probe_interval, t.gossip_nodes, t.probe_timeout) == (2.0, 5, 0.5)
    for block, msg in (({"probe_timeout": 1.0}, "must be shorter than probe_interval"),
                       ({"gossip_nodes": 0}, "gossip_nodes must be at least 1"),
                       ({"gossip_nodes": 1.5}, "whole number"), ({"probe_interval": "1s"}, "duration"),
                       ({"tcp_timeout": 1}, "unknown key 'tcp_timeout'"), ({"gossip_interval": 0}, "positive")):
        with pytest.raises(ConfigError, match=msg):
            LAN.with_consul(block)


def test_dynamic_suspicion_curve() -> None:
    lo, hi = 8.0, 48.0
    assert timeout_after(0, 2, lo, hi) == hi and timeout_after(2, 2, lo, hi) == lo
    assert lo < timeout_after(1, 2, lo, hi) < hi and timeout_after(0, 0, lo, hi) == lo
    s = Suspicion("x", "a", 2, lo, hi, 100.0)
    assert s.deadline == 148.0
    assert not s.confirm("a") and s.confirm("b") and not s.confirm("b") and s.deadline < 148.0
    assert s.confirm("c") and s.deadline == 108.0 and not s.confirm("d")


# ---------------------------------------------------------------------------------------- probing
def test_healthy_members_probe_each_other_and_nobody_is_suspected() -> None:
    net = Net(4)
    net.start()
    net.run(12.0)
    pings = net.sent(c.PING)
    assert len(pings) >= 40 and len(net.sent(c.ACK)) == len(pings)
    for m in net.cores:  # a shuffled round: every member probes every other one
        assert {b for a, b, _ in pings if a == m.name} == {x.name for x in net.cores} - {m.name}
        assert m.health.score == 0 and not m.suspicions
    assert not [e for e in net.events if e[1] in (k.SUSPECTED, k.FAILED)]


def test_a_crashed_member_is_probed_indirectly_suspected_and_then_declared_dead_by_all() -> None:
    net = Net(6)
    net.start()
    net.run(3.0)
    net.down.add("m5")
    net.run(60.0)
    assert net.sent(c.INDIRECT_PING) and net.sent(c.NACK)  # helpers tried and said they got nothing
    assert net.core("m0").stats.get("tcp_ping_failed", 0) + net.core("m1").stats.get("tcp_ping_failed", 0) >= 1
    assert sorted(net.seen(k.FAILED, "m5")) == ["m0", "m1", "m2", "m3", "m4"]
    assert all(m.view.get("m5").state == DEAD for m in net.cores[:5])
    first_suspicion = min(s.since for m in net.cores[:5] if (s := m.view.get("m5")))
    assert first_suspicion <= 3.0 + 6 * LAN.probe_interval
    # dead only after a suspicion timeout: at least the minimum for 6 members (4 s), at most the maximum
    died = [m.view.get("m5").since for m in net.cores[:5]]
    assert min(died) - 3.0 >= LAN.suspicion_min(6) and max(died) - 3.0 <= LAN.suspicion_max(6) + 6


def test_the_buddy_system_tells_a_suspect_first_and_it_refutes() -> None:
    net = Net(3)
    m0, m2 = net.core("m0"), net.core("m2")
    m0.start(0.0)
    m0.on_packet(0.0, packet(c.suspect(0, "m2", "m1")))  # m0 hears m1 suspects m2
    assert m0.view.get("m2").state == SUSPECT
    # Run m0 alone (nothing delivered) until it probes m2: that ping carries m0's own suspicion.
    heap = list(m0.timers)
    m0.timers.clear()
    heapq.heapify(heap)
    ping = None
    while ping is None:
        when, kind, token = heapq.heappop(heap)
        assert when < 10.0, "m0 probed m2 within a round"
        m0.on_timer(when, kind, token)
        for dest, data in m0.out:
            msgs = LABELLED.decode(data)
            if dest == (m2.addr, m2.port) and msgs[0][0] == c.PING:
                ping = (when, data, msgs)
        m0.out.clear()
        for item in m0.timers:
            heapq.heappush(heap, item)
        m0.timers.clear()
    when, data, msgs = ping
    assert [c.SUSPECT, 0, "m2", "m0"] in msgs, "m0's ping to the suspect carries the suspicion"
    m2.start(when)
    m2.on_packet(when, data)
    assert m2.me.inc == 1 and m2.stats["refuted_suspect"] == 1
    assert [LABELLED.decode(d)[0][0] for dest, d in m2.out] == [c.ACK] and m2.queue.pending("m2")
    m2.out.clear()
    [gossip] = [(w, k_, tok) for w, k_, tok in m2.timers if k_ == k.T_GOSSIP]
    m2.on_timer(*gossip)
    refutation = [c.ALIVE, 1, "m2", m2.addr, m2.port, m2.me.node.tags]
    to_m0 = [d for dest, d in m2.out if dest == (m0.addr, m0.port)]
    assert to_m0 and refutation in LABELLED.decode(to_m0[0])
    m0.on_packet(gossip[0], to_m0[0])
    assert m0.view.get("m2").state == ALIVE and m0.view.get("m2").inc == 1


def test_plain_swim_sends_no_buddy_suspicion_and_asks_for_no_nacks() -> None:
    net = Net(4, LAN.plain_swim())
    net.start()
    net.core("m0").on_packet(0.0, packet(c.suspect(0, "m2", "m1")))
    net.down.add("m3")
    net.run(10.0)
    assert not [1 for _, _, msgs in net.log if msgs[0][0] == c.PING and len(msgs) > 1 and msgs[1][0] == c.SUSPECT
                and msgs[1][3] == "m0"]
    assert all(not msg[5] for _, _, msg in net.sent(c.INDIRECT_PING)) and not net.sent(c.NACK)
    assert all(m.health.score == 0 for m in net.cores)


def test_local_health_rises_on_failed_probes_and_refutes_and_stretches_the_probe() -> None:
    net = Net(3)
    m0 = net.core("m0")
    net.down.update({"m1", "m2"})  # m0 is cut off: every probe fails, nobody nacks
    net.start()
    net.run(6.0)
    assert m0.health.score >= 2
    p = m0.probe
    assert p is None or p.deadline - p.sent == pytest.approx((m0.health.score + 1) * LAN.probe_interval, abs=1.01)
    score = m0.health.score
    m0.on_packet(net.now, packet(c.suspect(m0.me.inc, "m0", "m1")))
    assert m0.health.score == min(score + 1, LAN.awareness_max_multiplier - 1)
    net.down.clear()
    net.run(60.0)
    assert m0.health.score == 0  # successful probes bring it back


def test_an_indirect_probe_relays_the_ack_or_answers_a_nack() -> None:
    net = Net(3)
    m1 = net.core("m1")
    m1.running = True
    m1.on_packet(0.0, packet(c.indirect_ping(77, "m2", "127.0.0.1", 9002, True, "m0", "127.0.0.1", 9000)))
    net.flush()
    assert [msg[1] for _, b, msg in net.sent(c.ACK) if b == "m0"] == [77]  # m2 answered; m1 relayed it
    net.down.add("m2")
    m1.on_packet(0.0, packet(c.indirect_ping(78, "m2", "127.0.0.1", 9002, True, "m0", "127.0.0.1", 9000)))
    net.run(1.0)
    assert [msg[1] for _, b, msg in net.sent(c.NACK) if b == "m0"] == [78]


# ---------------------------------------------------------------------------------------- merge rules
def test_incarnations_decide_and_a_name_taken_from_elsewhere_is_ignored() -> None:
    m = core(0)
    m.running = True
    m.on_packet(0.0, packet(c.alive(5, "b", "10.0.0.2", 8301, {"v": "1"})))
    assert m.view.get("b").inc == 5 and m.events[-1][:2] == (k.JOIN, "b")
    m.on_packet(1.0, packet(c.alive(4, "b", "10.0.0.2", 8301, {"v": "0"})))  # older: ignored
    m.on_packet(1.0, packet(c.alive(3, "b", "10.6.6.6", 8301, {})))  # lower incarnation, elsewhere: ignored
    m.on_packet(1.0, packet(c.alive(9, "b", "10.6.6.6", 8301, {})))  # higher, but b is alive elsewhere
    assert m.view.get("b").node.addr == "10.0.0.2" and m.view.get("b").inc == 5
    assert m.stats["dropped_address_conflict"] == 1
    m.on_packet(1.0, packet(c.alive(6, "b", "10.0.0.2", 8301, {"v": "2"})))
    assert m.view.get("b").node.tags == {"v": "2"} and m.events[-1][:2] == (k.UPDATE, "b")
    m.on_packet(2.0, packet(c.suspect(5, "b", "x")))  # about an older incarnation: ignored
    assert m.view.get("b").state == ALIVE
    m.on_packet(2.0, packet(c.suspect(6, "b", "x")))
    assert m.view.get("b").state == SUSPECT and "b" in m.suspicions
    m.on_packet(2.0, packet(c.alive(7, "b", "10.0.0.2", 8301, {"v": "2"})))  # refuted
    assert m.view.get("b").state == ALIVE and "b" not in m.suspicions and m.events[-1][:2] == (k.RECOVERED, "b")
    m.on_packet(3.0, packet(c.dead(7, "b", "x")))
    assert m.view.get("b").state == DEAD and m.events[-1][:2] == (k.FAILED, "b")
    m.on_packet(3.0, packet(c.alive(7, "b", "10.0.0.2", 8301, {"v": "2"})))  # same incarnation: still dead
    assert m.view.get("b").state == DEAD
    m.on_packet(4.0, packet(c.alive(8, "b", "10.0.0.9", 8302, {})))  # came back, elsewhere, newer: accepted
    assert m.view.get("b").state == ALIVE and m.view.get("b").node.addr == "10.0.0.9"
    assert m.events[-1][:2] == (k.JOIN, "b")
    m.on_packet(5.0, packet(c.dead(8, "b", "b")))  # it says it left
    assert m.view.get("b").state == LEFT and m.events[-1][:2] == (k.LEFT_EVENT, "b")


def test_a_member_refutes_rumours_about_itself_but_not_after_leaving() -> None:
    m = core(0, incarnation=3)
    m.running = True
    m.on_packet(0.0, packet(c.suspect(3, "m0", "x")))
    assert m.me.inc == 4 and m.me.state == ALIVE
    m.on_packet(0.0, packet(c.dead(10, "m0", "x")))
    assert m.me.inc == 11 and m.view.get("m0").state == ALIVE
    m.on_packet(0.0, packet(c.alive(11, "m0", "10.9.9.9", 1, {})))  # someone claims our name, same incarnation
    assert m.me.inc == 12 and m.me.node.addr == "127.0.0.1"
    m.leave(1.0)
    assert m.me.state == LEFT and m.left
    m.on_packet(2.0, packet(c.dead(12, "m0", "x"), c.suspect(12, "m0", "x"), c.alive(13, "m0", "h", 1, {})))
    assert m.me.state == LEFT and m.me.inc == 12
    assert [e[0] for e in m.events].count(k.REFUTED) == 3


def test_a_restarted_member_starts_past_its_old_incarnation() -> None:
    net = Net(3)
    net.start()
    net.run(2.0)
    old = net.core("m2")
    old.on_packet(2.0, packet(c.dead(old.me.inc, "m2", "m0")))  # pretend it died and was declared dead
    fresh = core(2)  # restarted: knows nobody, incarnation 0
    net.cores[2] = fresh
    net.by_addr[(fresh.addr, fresh.port)] = fresh
    net.core("m0").on_packet(2.0, packet(c.dead(0, "m2", "m0")))
    fresh.start(net.now)
    net.stream(fresh, ("127.0.0.1", 9000), k.S_PUSH_PULL, "join", fresh.push_pull_open(True))
    net.run(20.0)
    assert fresh.me.inc >= 1 and net.core("m0").view.get("m2").state == ALIVE


def test_suspicion_confirmations_bring_the_deadline_in_unless_lifeguard_is_off() -> None:
    n = 10
    for timings, start_timeout in ((LAN, LAN.suspicion_max(n)), (LAN.plain_swim(), LAN.suspicion_min(n))):
        m = core(0, timings)
        m.running = True
        for i in range(1, n):
            m.on_packet(0.0, packet(c.alive(0, f"m{i}", "127.0.0.1", 9000 + i, {})))
        m.on_packet(10.0, packet(c.suspect(0, "m5", "m1")))
        s = m.suspicions["m5"]
        assert s.deadline == pytest.approx(10.0 + start_timeout)
        m.on_packet(11.0, packet(c.suspect(0, "m5", "m2"), c.suspect(0, "m5", "m3")))
        assert s.deadline == pytest.approx(10.0 + LAN.suspicion_min(n))
        m.on_timer(10.0 + LAN.suspicion_min(n) - 0.001, k.T_SUSPICION, None)  # early firing: ignored
        assert m.view.get("m5").state == SUSPECT
        m.on_timer(s.deadline, k.T_SUSPICION, None)
        assert m.view.get("m5").state == DEAD and m.events[-1][:2] == (k.FAILED, "m5")


def test_one_suspicion_timer_is_armed_for_the_earliest_deadline() -> None:
    """A timer per suspicion would stay pending long after its suspicion was refuted (up to 96 s at 10,000
    members, millions of them across a simulated pool); the core arms one, for the earliest deadline."""
    m = _pool_of(10)

    def armed() -> list[float]:
        out = sorted(t for t, kind, _ in m.timers if kind == k.T_SUSPICION)
        m.timers.clear()
        return out

    for i in range(1, 5):
        m.on_packet(float(i), packet(c.suspect(0, f"m{i}", "m9")))
    first = m.suspicions["m1"].deadline
    assert armed() == [first], "later deadlines wait behind the first"
    m.on_packet(5.0, packet(c.suspect(0, "m4", "m7"), c.suspect(0, "m4", "m8")))
    m4 = m.suspicions["m4"].deadline
    got = armed()  # each confirmation brought m4's deadline forward past the armed one: armed at each
    assert m4 < first and len(got) == 2 and min(got) == m4, got
    m.on_packet(6.0, packet(*(c.alive(1, f"m{i}", "127.0.0.1", 9000 + i, {}) for i in (1, 2, 3))))
    assert sorted(m.suspicions) == ["m4"]
    m.on_timer(m4, k.T_SUSPICION, None)
    assert m.view.get("m4").state == DEAD and not m.suspicions and armed() == [], "nothing left to arm"
    m.on_timer(first, k.T_SUSPICION, None)  # the superseded timer: changes nothing
    assert [m.view.get(f"m{i}").state for i in range(1, 5)] == [ALIVE, ALIVE, ALIVE, DEAD] and armed() == []
    m.on_packet(first + 1, packet(c.suspect(1, "m2", "m9")))  # a new suspicion after all that: armed again
    assert armed() == [m.suspicions["m2"].deadline]


def _pool_of(n: int, timings: Timings = LAN) -> Membership:
    m = core(0, timings)
    m.running = True
    for i in range(1, n):
        m.on_packet(0.0, packet(c.alive(0, f"m{i}", "127.0.0.1", 9000 + i, {})))
    m.queue = type(m.queue)()  # forget the join news: only what follows is looked at
    return m


def _push_pull_records(m: Membership, now: float, *records: list[Any]) -> None:
    m.on_stream(now, m.codec.body(c.pp_records(list(records), [])))


def _gossiped_suspects(m: Membership) -> list[list[Any]]:
    return [msg for msg in (msgpack.unpackb(b) for b in m.queue.take(1 << 20, 99)) if msg[0] == c.SUSPECT]


def test_a_suspect_record_from_a_push_pull_is_nobodys_confirmation_and_not_gossiped_as_ours() -> None:
    """The slow-observer false positives at 1,000 members (docs/membership.md): a slow observer's
    accusation, echoed back through push-pulls, must not confirm itself. A push-pull record names no
    accuser, so it neither confirms a suspicion we hold nor goes out as a suspicion from us (memberlist's
    mergeState does both: it takes the record as a suspicion from the receiver)."""
    n = 10
    m = _pool_of(n)
    m.on_packet(10.0, packet(c.suspect(0, "m5", "m1")))  # the (slow) accuser
    s = m.suspicions["m5"]
    deadline = s.deadline
    assert deadline == pytest.approx(10.0 + LAN.suspicion_max(n))
    for t in (11.0, 12.0):  # the same accusation, echoed back in push-pulls: still unconfirmed
        _push_pull_records(m, t, ["m5", "127.0.0.1", 9005, {}, 0, SUSPECT], ["m5", "127.0.0.1", 9005, {}, 0, DEAD])
    assert s.confirmations == 0 and s.deadline == deadline
    assert [x[3] for x in _gossiped_suspects(m)] == ["m1"]  # only the accuser's own message goes on
    m.on_packet(13.0, packet(c.suspect(0, "m5", "m2")))  # an independent suspicion counts
    assert s.confirmations == 1 and s.deadline < deadline

    # Learned first from a push-pull: a suspicion with no accuser, not gossiped; the first member named
    # afterwards is the accuser (its own gossip, arriving after the record it caused), the next confirms.
    m = _pool_of(n)
    _push_pull_records(m, 10.0, ["m5", "127.0.0.1", 9005, {}, 0, SUSPECT])
    s = m.suspicions["m5"]
    assert m.view.get("m5").state == SUSPECT and s.deadline == pytest.approx(10.0 + LAN.suspicion_max(n))
    assert not _gossiped_suspects(m) and m.stats["suspect_from_push_pull"] == 1
    m.on_packet(11.0, packet(c.suspect(0, "m5", "m1")))
    assert s.confirmations == 0 and s.accusers == {"m1"}
    assert [x[3] for x in _gossiped_suspects(m)] == ["m1"]  # the named accusation is relayed
    m.on_packet(12.0, packet(c.suspect(0, "m5", "m2")))
    assert s.confirmations == 1 and s.deadline < 10.0 + LAN.suspicion_max(n)

    # Our own failed probe of a member we hold as suspect is an independent suspicion: it counts.
    m = _pool_of(n)
    m.on_packet(10.0, packet(c.suspect(0, "m5", "m1")))
    m._on_suspect(11.0, 0, "m5", m.name)
    assert m.suspicions["m5"].confirmations == 1


def test_a_dead_message_about_an_older_incarnation_is_ignored_after_the_refutation() -> None:
    """A slow observer reads the refutation after its timer fired and declares the member dead at the
    incarnation it suspected: everyone who has the refutation ignores that dead message."""
    m = _pool_of(5)
    m.on_packet(1.0, packet(c.suspect(0, "m3", "m1")))
    m.on_packet(1.5, packet(c.alive(1, "m3", "127.0.0.1", 9003, {})))  # refuted
    m.on_packet(20.0, packet(c.dead(0, "m3", "m1")))
    assert m.view.get("m3").state == ALIVE and m.view.get("m3").inc == 1
    assert not [e for e in m.events if e[0] == k.FAILED]
    m.on_packet(21.0, packet(c.dead(1, "m3", "m1")))  # about the current incarnation: believed
    assert m.view.get("m3").state == DEAD


def test_local_health_stretches_the_probe_deadline_not_the_direct_ack_timeout() -> None:
    """memberlist's probeNode: probeInterval := awareness.ScaleTimeout(ProbeInterval) is the deadline of
    the whole probe (the ack handler, the indirect acks and nacks, the TCP ping's deadline); the wait for
    the direct ack is ProbeTimeout, unscaled. Plain SWIM (no Lifeguard) scales nothing."""
    for timings, mult in ((LAN, 4), (LAN.plain_swim(), 1)):
        m = _pool_of(6, timings)
        m.health.apply(3)
        m.on_timer(0.0, k.T_PROBE, m._tick_gen)
        p = m.probe
        assert p is not None and p.deadline == pytest.approx(mult * timings.probe_interval)
        assert (timings.probe_timeout, k.T_PROBE_TIMEOUT, p.seq) in m.timers
        m.on_timer(timings.probe_timeout, k.T_PROBE_TIMEOUT, p.seq)
        assert (p.deadline, k.T_PROBE_DEADLINE, p.seq) in m.timers
        assert [s[4] for s in m.streams if s[0] == k.S_PING] == [p.deadline]
        assert m.stats.get("probes_degraded", 0) == (1 if mult > 1 else 0)


# ---------------------------------------------------------------------------------------- dissemination
def test_news_fills_datagrams_to_the_buffer_size_and_is_sent_a_limited_number_of_times() -> None:
    net = Net(5)
    net.start()
    m0 = net.core("m0")
    for i in range(60):  # sixty new members at once
        m0.on_packet(0.0, packet(c.alive(1, f"new-{i:02d}", "10.1.0.1", 9100 + i, {"role": "node", "id": "x" * 36})))
    limit = m0._transmit_limit()
    net.run(30.0)
    sizes = [len(LABELLED.packet([msgpack.packb(x) for x in msgs])) for a, _, msgs in net.log if a == "m0"]
    assert max(sizes) <= LAN.udp_buffer_size and max(sizes) > LAN.udp_buffer_size - 200
    sent_by_m0 = [msg[2] for a, _, msgs in net.log if a == "m0" for msg in msgs if msg[0] == c.ALIVE]
    assert all(sent_by_m0.count(f"new-{i:02d}") == limit for i in range(60))
    # what is still queued is later news (the unreachable newcomers are being suspected), never the joins
    assert all(msgpack.unpackb(item[3])[0] != c.ALIVE for item in m0.queue._items)


def test_newer_news_about_a_member_replaces_the_queued_older_news() -> None:
    m = core(0)
    m.running = True
    m.on_packet(0.0, packet(c.alive(1, "b", "10.0.0.2", 8301, {})))
    m.on_packet(0.0, packet(c.suspect(1, "b", "x")))
    assert len(m.queue) == 1 and msgpack.unpackb(m.queue.take(1400, 10)[0])[0] == c.SUSPECT


# ---------------------------------------------------------------------------------------- push-pull
def test_push_pull_joins_an_empty_member_and_later_exchanges_only_what_differs() -> None:
    net = Net(40)
    newcomer = core(99)
    net.cores.append(newcomer)
    net.by_addr[(newcomer.addr, newcomer.port)] = newcomer
    newcomer.running = True
    net.stream(newcomer, ("127.0.0.1", 9003), k.S_PUSH_PULL, "join", newcomer.push_pull_open(True))
    assert len(newcomer.view) == 41 and net.core("m3").view.get("m99").state == ALIVE
    # Views that agree: one summary each way, no entries.
    a, b = net.core("m1"), net.core("m2")
    b.on_packet(0.0, packet(c.alive(0, "m99", "127.0.0.1", 9099, newcomer.me.node.tags)))
    a.on_packet(0.0, packet(c.alive(0, "m99", "127.0.0.1", 9099, newcomer.me.node.tags)))
    reply = b.on_stream(0.0, a.push_pull_open(False))
    assert LABELLED.decode(reply) == [[c.PP_DONE]] and len(a.push_pull_open(False)) < 120
    # One member differs: only its bucket's entries travel, and both end up with the newer record.
    b.on_packet(1.0, packet(c.dead(0, "m7", "m2")))
    [digest] = LABELLED.decode(b.on_stream(1.0, a.push_pull_open(False)))
    # 41 members: two buckets (about one per 32 members); only the differing one's entries travel
    assert digest[0] == c.PP_DIGEST and digest[1] == 1 and len(digest[2]) == 1
    assert 0 < len(digest[3]) < len(b.view) and ["m7", 0, DEAD] in digest[3]
    net.stream(a, (b.addr, b.port), k.S_PUSH_PULL, None, a.push_pull_open(False))
    assert a.view.get("m7").state == SUSPECT  # a peer's "dead" is a suspicion here: m7 may refute


def test_reconnect_tries_failed_members_and_reaping_forgets_them() -> None:
    t = Timings(reconnect_timeout=8 * 3600.0, tombstone_timeout=3600.0)
    m = core(0, t)
    m.running = True
    m.on_packet(0.0, packet(c.alive(0, "f", "10.0.0.5", 8301, {}), c.alive(0, "l", "10.0.0.6", 8301, {})))
    m.on_packet(10.0, packet(c.dead(0, "f", "x"), c.dead(0, "l", "l")))
    m.on_timer(40.0, k.T_RECONNECT, None)  # one failed, one alive (us): probability 1
    assert [(s[0], s[1]) for s in m.streams] == [(k.S_PUSH_PULL, ("10.0.0.5", 8301))]
    m.on_timer(3600.0 + 11, k.T_RECONNECT, None)
    assert m.view.get("l") is None and m.view.get("f").state == DEAD
    m.on_timer(8 * 3600.0 + 11, k.T_RECONNECT, None)
    assert m.view.get("f") is None and [e[1] for e in m.events if e[0] == k.REAPED] == ["l", "f"]


# ---------------------------------------------------------------------------------------- bad input
def test_bad_datagrams_and_stream_messages_are_counted_and_change_nothing() -> None:
    net = Net(3)
    m = net.core("m0")
    m.running = True
    before = (m.view.bucket_hashes(), m.me.inc, len(m.queue))
    bad = [b"", b"\x01", b"\x07\x01garbage", bytes([1, 1, 7]) + b"lan:dc9" + b"\x91\x91\x04",
           LABELLED.prefix + b"\xc1\xc1", LABELLED.prefix + msgpack.packb([[c.QUERY, "x"]]),
           LABELLED.prefix + msgpack.packb([[c.ALIVE, 1, "zz", "h", 1, {"k": 1}]]),
           LABELLED.prefix + msgpack.packb([[c.PP_DONE]]), LABELLED.prefix + msgpack.packb([["x"], 5, None]),
           packet(c.ping(1, "someone-else", "m1", "127.0.0.1", 9001))]
    for data in bad:
        m.on_packet(1.0, data)
    assert (m.view.bucket_hashes(), m.me.inc, len(m.queue)) == before and not m.out and not m.events
    assert {k_: v for k_, v in m.stats.items()} == {
        "dropped_truncated": 2, "dropped_version": 1, "dropped_foreign": 1, "dropped_malformed": 5,
        "dropped_unsupported": 1, "dropped_unexpected": 1, "dropped_wrong_node": 1}
    # Streams: garbage closes, another datacenter's pool is told why, an unexpected type closes.
    assert m.on_stream(1.0, b"\x09\x00junk") is None and m.on_stream(1.0, LABELLED.prefix + b"\xc1") is None
    other = c.Codec("lan:dc2")
    [err] = LABELLED.decode(m.on_stream(1.0, other.body(c.pp_summary(True, 1, 0, [0]))))
    assert err[0] == c.PP_ERROR and "lan:dc2" in err[1]
    assert m.on_stream(1.0, LABELLED.body(c.pp_done())) is None
    with pytest.raises(Refused):
        m.stream_reply(1.0, k.S_PUSH_PULL, None, LABELLED.body(c.pp_error("go away")))
    with pytest.raises(Malformed):
        m.stream_reply(1.0, k.S_PUSH_PULL, None, b"\x01\x01\x07lan:dc1\x91\xc1")
    assert m.view.bucket_hashes() == before[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 25), st.lists(st.one_of(
    st.integers(-5, 2**64 + 5), st.text(max_size=6), st.booleans(), st.none(), st.binary(max_size=4),
    st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers())), st.lists(st.integers())),
    max_size=9)), min_size=1, max_size=6))
def test_no_datagram_crashes_the_core(msgs: list) -> None:
    m = core(0)
    m.running = True
    m.on_packet(0.0, packet(c.alive(0, "b", "10.0.0.2", 8301, {})))
    try:
        data = LABELLED.prefix + msgpack.packb([[t, *fields] for t, fields in msgs])
    except (OverflowError, ValueError):
        return
    m.on_packet(1.0, data)
    m.on_stream(1.0, LABELLED.prefix + b"\x91" + msgpack.packb([msgs[0][0], *msgs[0][1]]) if msgs else b"")
    assert m.me.state == ALIVE


# ---------------------------------------------------------------------------------------- user events
def test_a_user_event_reaches_every_member_once_and_an_oversized_one_is_refused() -> None:
    net = Net(8)
    net.start()
    ev = net.core("m3").fire_event(net.now, "id-1", "deploy", b"v2", node_filter="web-.*")
    assert ev["Name"] == "deploy" and ev["Origin"] == "m3" and ev["LTime"] == 1
    net.run(10.0)
    got = [(obs, name, e["Payload"], e["NodeFilter"]) for obs, kind, name, e in net.events if kind == k.USER]
    assert sorted(got) == [(f"m{i}", "m3", b"v2", "web-.*") for i in range(8)]  # once each, the origin too
    assert all(m.event_ltime == 1 for m in net.cores)
    with pytest.raises(Malformed, match="at most 1024 bytes"):
        net.core("m0").fire_event(net.now, "id-2", "big", b"x" * 1100)


def test_a_leave_heard_before_the_join_leaves_the_member_left() -> None:
    """A member that joins through one server and leaves at once: another server may hear the leave before
    the join news. Serf keeps the leave as an intent, so the join that arrives after it lands as left (it
    used to be taken as alive, then failed by probes: never deregistered)."""
    m = core(0)
    m.running = True
    m.on_packet(0.0, packet(c.dead(4, "b", "b")))  # b says it left; we never heard of b
    assert m.view.get("b") is None and m.intents == {"b": (4, 0.0)}
    m.on_packet(0.5, packet(c.alive(4, "b", "10.0.0.2", 8301, {})))  # its join news, late
    assert m.view.get("b").state == LEFT and m.events[-1][:2] == (k.LEFT_EVENT, "b")
    assert "b" not in m.intents
    m.on_packet(1.0, packet(c.dead(2, "c", "c")))  # an intent is only as good as its incarnation ...
    m.on_packet(1.0, packet(c.alive(3, "c", "10.0.0.3", 8301, {})))  # ... a newer join (restarted) is a join
    assert m.view.get("c").state == ALIVE
    m.on_packet(2.0, packet(c.dead(1, "d", "d")))
    m.on_packet(2.0 + k.INTENT_TTL, packet(c.alive(1, "d", "10.0.0.4", 8301, {})))  # too old to count
    assert m.view.get("d").state == ALIVE
    m.on_packet(3.0, packet(c.dead(1, "e", "x")))  # someone else's word that e died is no intent
    assert "e" not in m.intents
    for i in range(k.MAX_INTENTS + 10):  # bounded
        m.on_packet(4.0, packet(c.dead(1, f"n{i}", f"n{i}")))
    assert len(m.intents) <= k.MAX_INTENTS


# ---------------------------------------------------------------------------------------- probe RTTs (coordinates)
def test_direct_acks_report_their_round_trip_and_the_targets_payload() -> None:
    net = Net(3)
    for m in net.cores:
        m.want_rtt = True
        m.ack_payload = m.name.encode()
    net.start()
    net.run(6.0)
    rtts = [(obs, name, detail) for obs, kind, name, detail in net.events if kind == k.RTT]
    assert len(rtts) >= 12 and not [e for e in net.events if e[1] == k.UNREACHED]
    assert all(detail == (0.0, name.encode()) for _, name, detail in rtts)  # the target's own payload


def _probe_by_hand(m: Membership) -> tuple[int, str]:
    """Fire m's next probe; returns (seq, target) of the ping it sent."""
    when, kind, token = next(t for t in m.timers if t[1] == k.T_PROBE)
    m.timers.clear()
    m.out.clear()
    m.on_timer(when, kind, token)
    (_, data), = m.out
    m.out.clear()
    ping = LABELLED.decode(data)[0]
    return ping[1], ping[2]


def test_an_ack_after_the_probe_timeout_is_no_measurement_and_the_target_counts_as_unreached() -> None:
    m = core(0)
    for i in (1, 2, 3):
        m.view.put(core(i).me)
    m.want_rtt = True
    m.start(0.0)
    seq, target = _probe_by_hand(m)
    sent = m.probe.sent
    m.on_timer(sent + LAN.probe_timeout, k.T_PROBE_TIMEOUT, seq)  # no direct ack: helpers are asked
    assert [msg[0] for _, data in m.out for msg in LABELLED.decode(data)] == [c.INDIRECT_PING] * 2
    m.on_packet(sent + 0.7, packet(c.ack(seq)))  # a helper relays the target's ack
    assert [(e[0], e[1]) for e in m.events] == [(k.UNREACHED, target)] and m.events[0][2] is True
    m.events.clear()
    seq, target = _probe_by_hand(m)
    m.on_packet(m.probe.sent + 0.003, packet(c.ack(seq, b"coord")))  # the target itself, in time
    assert m.events == [(k.RTT, target, (pytest.approx(0.003), b"coord"))]


def test_force_leave_of_an_unreachable_member_takes_alive_ones_only_when_asked() -> None:
    m = core(0)
    other = core(1)
    m.view.put(other.me)
    assert m.force_leave(0.0, "m1") is False  # alive: the LAN rule
    assert m.force_leave(0.0, "m1", unreachable=True) is True
    assert m.view.get("m1").state == LEFT and m.events[-1][:2] == (k.LEFT_EVENT, "m1")


# ------------------------------------------------------------------- the simulator's no-op rule
_NAMES = ["m0", "a", "b"]  # m0 is the core itself


def _news(kind: int, inc: int, name: str, frm: str) -> list[Any]:
    if kind == c.ALIVE:
        addr = "127.0.0.1" if name == "m0" else "10.0.0." + str(_NAMES.index(name))
        tags = {"role": "node", "i": "0"} if name == "m0" else {}
        return msgpack.unpackb(c.alive(inc, name, addr, 9000 if name == "m0" else 8301, tags))
    return msgpack.unpackb((c.suspect if kind == c.SUSPECT else c.dead)(inc, name, frm))


_FROM = ["x", "y", "a"]
_ALL_NEWS = [_news(kind, inc, name, frm) for kind in (c.SUSPECT, c.ALIVE, c.DEAD) for inc in range(3)
             for name in _NAMES for frm in _FROM]
_news_st = st.sampled_from(_ALL_NEWS)
_step_st = st.one_of(_news_st, st.sampled_from(["reap", "timers", "leave"]))


def _state(m: Membership) -> Any:
    return (sorted((r.node.name, r.inc, r.state, r.since, r.node.addr, r.node.port, sorted(r.node.tags.items()))
                   for r in m.view), sorted((n, sorted(s.accusers), s.deadline) for n, s in m.suspicions.items()),
            sorted(m.queue._items), m.out, m.timers, m.streams, m.events, sorted(m.stats.items()), m.health.score,
            m.rng.getstate(), m.left, sorted(m.intents.items()), m.me)


@settings(max_examples=120, deadline=None)
@given(st.lists(_news_st, max_size=6), st.lists(_step_st, max_size=6), st.booleans())
# a suspicion's accuser again, but about a newer incarnation: a no-op now, and a new suspicion once
# that incarnation is alive here (why `stale` wants the incarnation it holds, not a newer one)
@example([_news(c.SUSPECT, 0, "a", "x")], [_news(c.ALIVE, 1, "a", "")], False)
# left long enough ago to be reaped before `until` (alive news is a join again)
@example([_news(c.DEAD, 0, "a", "a")], ["reap"], True)
def test_news_the_core_calls_stale_changes_nothing_then_or_after_anything_else(
        before: list[Any], between: list[Any], short_reap: bool) -> None:
    """`Membership.stale` (what Sim(skip_noop=True) skips, docs/membership.md): whatever state news
    built, every message it calls stale (of all news about three members, one the core itself) changes
    nothing when it is handled — after any other news, reaping, suspicion timeouts and a leave in
    between, up to `until` (with reap timeouts short enough to matter, and Consul's)."""
    import copy

    t = Timings(reconnect_timeout=20.0, tombstone_timeout=10.0) if short_reap else LAN
    core0 = core(0, t)
    core0.running = True
    for i, name in enumerate(["m1", "m2", "m3", "m4", "a", "b"]):  # enough members to wait for confirmations
        core0.on_messages(0.0, [_news(c.ALIVE, 0, name, "")] if name in _NAMES else
                          [msgpack.unpackb(c.alive(0, name, "10.1.0.1", 8301 + i, {}))])
    now = 0.0
    for msg in before:
        now += 1.0
        core0.on_messages(now, [msg])
    until = now + 15.0
    for m in _ALL_NEWS:
        if not core0.stale(now, m, until):
            continue
        r = copy.deepcopy(core0)
        for k_, step in enumerate(between):
            at = now + (until - now) * (k_ + 1) / len(between)
            if step == "reap":
                r._reap(at)
            elif step == "timers":
                for when, kind, tok in sorted(r.timers, key=lambda x: x[0]):
                    if when <= at and kind == k.T_SUSPICION:
                        r.on_timer(when, kind, tok)
            elif step == "leave":
                r.leave(at)
            else:
                r.on_messages(at, [step])
        before_m = _state(r)
        r.on_messages(until, [m])
        assert _state(r) == before_m, m


def test_stale_news_by_case() -> None:
    m = core(0)
    m.running = True
    for i in range(1, 6):  # enough members for Lifeguard to wait for confirmations
        m.on_messages(0.0, [msgpack.unpackb(c.alive(0, f"m{i}", "10.1.0.1", 8301 + i, {}))])
    m.on_messages(1.0, [_news(c.ALIVE, 2, "a", "")])
    assert m.stale(1.0, _news(c.ALIVE, 2, "a", ""), 2.0) and m.stale(1.0, _news(c.SUSPECT, 1, "a", "x"), 2.0)
    assert not m.stale(1.0, _news(c.ALIVE, 3, "a", ""), 2.0)
    assert not m.stale(1.0, _news(c.SUSPECT, 2, "a", "x"), 2.0)  # starts a suspicion
    assert not m.stale(1.0, _news(c.ALIVE, 0, "b", ""), 2.0)  # unknown: a join
    assert not m.stale(1.0, _news(c.SUSPECT, 0, "b", "x"), 2.0)  # unknown: ignored now, not for good
    m.on_messages(1.0, [_news(c.SUSPECT, 2, "a", "x")])
    assert m.stale(1.0, _news(c.SUSPECT, 2, "a", "x"), 2.0)  # the accuser again
    assert not m.stale(1.0, _news(c.SUSPECT, 2, "a", "y"), 2.0)  # a new accuser confirms
    assert not m.stale(1.0, _news(c.DEAD, 2, "a", "y"), 2.0)
    assert not m.stale(1.0, _news(c.SUSPECT, 0, "m0", "x"), 2.0)  # about itself: it refutes
    assert m.stale(1.0, _news(c.ALIVE, 0, "m0", ""), 2.0)  # its own alive news, back
    m.on_messages(1.0, [_news(c.DEAD, 2, "a", "y")])
    assert m.stale(1.0, _news(c.DEAD, 2, "a", "z"), 2.0) and m.stale(1.0, _news(c.SUSPECT, 2, "a", "z"), 2.0)
    assert not m.stale(1.0, _news(c.DEAD, 2, "a", "a"), 2.0)  # failed, then it says it left
    assert not m.stale(1.0, _news(c.ALIVE, 2, "a", ""), 1.0 + m.t.tombstone_timeout)  # could be reaped by then
    assert not m.stale(1.0, [c.PING, 1, "m0", "a", "10.0.0.1", 8301], 2.0)
