"""SWIM with Lifeguard, the pure core: datagrams, stream messages and timer firings in; effects out.

The core never touches a socket, the clock or global randomness: every entry point takes `now` (seconds,
any epoch) and the constructor takes a seeded `rng`. What it wants done it appends to plain lists that
the driver (the asyncio `pool.Pool`, or the simulator) drains after each call:

- `out`: datagrams to send, as ((addr, port), bytes) (what `pack` makes of their messages);
- `timers`: (when, kind, token) — call `on_timer(when, kind, token)` then; stale firings are ignored;
- `streams`: (kind, (addr, port), first_body, token, deadline) — TCP exchanges to run: send the body,
  hand every reply to `stream_reply`, send what it returns until it returns None; on failure call
  `stream_failed`;
- `events`: (kind, member name, incarnation) — membership changes (`EVENTS`).

The protocol is hashicorp/memberlist's (Das, Gupta & Motivala's SWIM; Dadgar, Phillips & Currey's
Lifeguard), in our own code, with Serf's pieces that Consul relies on (failed members kept and retried
until `reconnect_timeout`, left members until `tombstone_timeout`):

- **Probing.** Every probe_interval the next member of a shuffled round is pinged over UDP. No ack in
  probe_timeout: `indirect_checks` other members ping it for us (and answer a nack if they get nothing),
  and a TCP ping is tried. No ack by the end of the (health-scaled) interval: the member is suspected.
- **Suspicion.** A suspect member has a timeout to refute (bump its incarnation and say it is alive)
  before it is declared dead. With Lifeguard it starts at suspicion_max_timeout_mult times the base and
  shrinks as other members independently confirm the suspicion (`suspicion.Suspicion`).
- **Local health** (Lifeguard): failed probes without the expected nacks, and refuting, raise our own
  health score, which stretches our probe interval; successful probes lower it (`health.LocalHealth`).
- **Buddy system** (Lifeguard): a suspect member's ping carries the suspicion, so it learns first.
- **Dissemination.** News (alive, suspect, dead) rides on every datagram we send, in the room left, and
  is gossiped to gossip_nodes random members every gossip_interval while any is queued
  (`broadcast.BroadcastQueue`). Anti-entropy: a TCP push-pull with a random member every
  push_pull_interval (scaled with the pool's size) compares bucket hashes of both views and exchanges
  only the records of buckets that differ.
- **Merge rules.** Higher incarnation wins; at equal incarnation suspect beats alive and dead beats
  suspect; a member hearing itself suspected or declared dead refutes; a claim for a known name from
  another address is ignored (unless the member is dead and the claim is newer: it came back there).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, Protocol

from . import codec as c
from .broadcast import BroadcastQueue
from .codec import Codec
from .codec import unpack_one as msgpack_unpack
from .config import LAN, Timings
from .errors import Malformed, Refused
from .health import LocalHealth
from .suspicion import Suspicion
from .view import ALIVE, DEAD, LEFT, SUSPECT, Node, Rec, View, summary_bits

# Timer kinds.
T_PROBE, T_PROBE_TIMEOUT, T_PROBE_DEADLINE, T_RELAY, T_GOSSIP, T_PUSH_PULL, T_SUSPICION, T_RECONNECT = range(8)
# Stream kinds.
S_PUSH_PULL, S_PING = 0, 1
# Event kinds.
JOIN, UPDATE, SUSPECTED, RECOVERED, FAILED, LEFT_EVENT, REAPED, REFUTED, RTT, UNREACHED, USER = (
    "join", "update", "suspect", "alive", "failed", "left", "reap", "refute", "rtt", "unreached", "user-event")
EVENTS = (JOIN, UPDATE, SUSPECTED, RECOVERED, FAILED, LEFT_EVENT, REAPED, REFUTED, RTT, UNREACHED, USER)
USER_EVENT_FIELDS = ("LTime", "ID", "Name", "Payload", "NodeFilter", "ServiceFilter", "TagFilter", "Origin")
SEEN_EVENTS = 4096  # user-event IDs remembered so a rumour is delivered and relayed once

INTENT_TTL = 300.0  # Serf's recent-intent timeout: how long a leave heard before the join is remembered
MAX_INTENTS = 4096  # leave intents remembered at most (a flood of them cannot grow memory)
MAX_RELAYS = 4096  # indirect probes we run for others at once; beyond that, requests are dropped
PACKET_OVERHEAD = 3  # the array header in front of a datagram's messages (up to 65,535 of them)


class Rand(Protocol):
    """What the core needs of a random source (random.Random fits); seeded by the caller."""

    def random(self) -> float: ...


class _Probe:
    __slots__ = ("seq", "node", "sent", "deadline", "nacks", "expected_nacks", "fallback_ok", "indirect", "direct_ok")

    def __init__(self, seq: int, node: Node, sent: float, deadline: float) -> None:
        self.seq = seq
        self.node = node
        self.sent = sent
        self.deadline = deadline
        self.nacks = 0
        self.expected_nacks = 0
        self.fallback_ok = False
        self.indirect = False  # the direct wait is over: indirect probes (and the TCP ping) were sent
        self.direct_ok = False  # the target itself answered our UDP ping before the probe timeout


def _next_prime(n: int) -> int:
    n = max(n, 2)
    while True:
        if n < 4 or (n % 2 and all(n % d for d in range(3, math.isqrt(n) + 1, 2))):
            return n
        n += 1


def record_wire(r: Rec) -> list[Any]:
    n = r.node
    return [n.name, n.addr, n.port, n.tags, r.inc, r.state]


class Membership:
    """One member of one gossip pool."""

    def __init__(self, name: str, addr: str, port: int, tags: dict[str, str] | None = None, *, rng: Rand,
                 timings: Timings = LAN, label: str = "", incarnation: int = 0, view: View | None = None,
                 now: float = 0.0) -> None:
        self.name = name
        self.addr = addr
        self.port = port
        self.t = timings
        self.rng = rng
        self.codec = Codec(label)
        self.view = view if view is not None else View()
        tags = dict(tags or {})
        known = self.view.get(name)
        if known is not None and known.state == ALIVE and known.inc >= incarnation and known.node.same(addr, port, tags):
            self.me = known  # a simulated member starting from a shared view: keep the shared record
        else:
            inc = max(incarnation, known.inc + 1 if known is not None else 0)
            self.me = Rec(Node(name, addr, port, tags), inc, ALIVE, now)
            self.view.put(self.me)
        self.out: list[tuple[tuple[str, int], bytes]] = []
        self.timers: list[tuple[float, int, Any]] = []
        self.streams: list[tuple[int, tuple[str, int], bytes, Any, float]] = []
        self.events: list[tuple[str, str, Any]] = []
        self.stats: dict[str, int] = {}
        self.health = LocalHealth(timings.awareness_max_multiplier)
        self.queue = BroadcastQueue()
        self.suspicions: dict[str, Suspicion] = {}
        # The one suspicion timer armed (its time), for the earliest deadline: a timer per suspicion would
        # stay pending long after its suspicion was refuted (up to suspicion_max: 96 s at 10,000 members).
        self._suspicion_timer: float | None = None
        self.relays: dict[int, tuple[str, int, int, bool]] = {}
        self.probe: _Probe | None = None
        self.left = False
        self.running = False
        # Serf's leave intents: a member that says it left before we heard it join (its join news and its
        # leave news raced): name -> (incarnation, when). The join that arrives later lands as left.
        self.intents: dict[str, tuple[int, float]] = {}
        # Network coordinates (Serf's ping delegate): with want_rtt, every probe answered directly emits
        # (RTT, name, (seconds, the target's ack payload)), and one that got no direct answer (UDP before the
        # probe timeout, or the TCP ping) emits (UNREACHED, name, answered indirectly: bool).
        self.want_rtt = False
        self.ack_payload = b""  # what our acks carry: our encoded coordinate
        self._seq = 0
        self._events_seen: dict[str, None] = {}  # user-event IDs, oldest first
        self.event_ltime = 0  # Lamport clock of user events
        self._tick_time = now
        self._tick_gen = 0
        self._gossip_phase = now
        self._gossip_pending = False
        self._walk = [0, 0, 0, 0]  # affine permutation of the index space: i, p, a, b
        self._prime = (0, 2)
        self._limit = (-1, 0)
        self._room = timings.udp_buffer_size - len(self.codec.prefix) - PACKET_OVERHEAD
        # What becomes of a datagram's messages in `out`: the frame (codec.packet). The simulator may
        # swap in `tuple`, keeping the encoded messages apart so each is decoded once for all receivers.
        self.pack: Callable[[list[bytes]], Any] = self.codec.packet

    # ------------------------------------------------------------------ lifecycle
    def start(self, now: float) -> None:
        """Begin probing, gossiping and syncing (each loop staggered at random, as memberlist does)."""
        if self.running:
            return
        self.running = True
        t = self.t
        self._tick_time = now + self.rng.random() * t.probe_interval
        self._tick_gen += 1
        self.timers.append((self._tick_time, T_PROBE, self._tick_gen))
        self._gossip_phase = now + self.rng.random() * t.gossip_interval
        if self.queue:
            self._gossip_soon(now)
        self.timers.append((now + self.rng.random() * t.push_pull_interval, T_PUSH_PULL, None))
        self.timers.append((now + self.rng.random() * t.reconnect_interval, T_RECONNECT, None))
        self._suspicion_timer = None  # a driver that stopped us dropped our timers
        self._arm_earliest()

    def stop(self) -> None:
        """Stop reacting to timers (the driver stops calling; stale timers are ignored)."""
        self.running = False
        self.probe = None

    def leave(self, now: float) -> None:
        """Say we are leaving: a dead message about ourselves from ourselves (others mark us left). The
        driver keeps running until `leave_spread` or a timeout, then stops."""
        if self.left:
            return
        self.left = True
        me = self.me
        self.me = Rec(me.node, me.inc, LEFT, now)
        self.view.put(self.me)
        self._broadcast(now, self.name, c.dead(me.inc, self.name, self.name))

    @property
    def leave_spread(self) -> bool:
        """Our leave message has been sent as many times as news is (or there was no one to tell)."""
        return self.left and (not self.queue.pending(self.name) or self.alive_peers() == 0)

    def update_tags(self, now: float, tags: dict[str, str], port: int | None = None) -> None:
        """Our tags (or port) changed: a newer incarnation of ourselves, gossiped like any news."""
        me = self.me
        if port is not None:
            self.port = port
        if me.node.same(self.addr, self.port, tags):
            return
        self.me = Rec(Node(self.name, self.addr, self.port, dict(tags)), me.inc + 1, me.state, me.since)
        self.view.put(self.me)
        if not self.left:
            self._broadcast(now, self.name, self._alive_msg(self.me))

    def fire_event(self, now: float, id: str, name: str, payload: bytes, node_filter: str = "",
                   service_filter: str = "", tag_filter: str = "", ltime: int = 0) -> dict[str, Any]:
        """A user event from us: delivered here (a USER event) and gossiped to every member once; `ltime`
        is its Lamport time if the caller keeps the clock (else ours, ticked). Raises
        `Malformed("oversized")` when it cannot fit a datagram."""
        lt = ltime or self.event_ltime + 1
        self.event_ltime = max(self.event_ltime, lt)
        fields = [lt, id, name, payload, node_filter, service_filter, tag_filter, self.name]
        msg = c.user_event(*fields)
        if not c.valid(msgpack_unpack(msg)) or len(msg) > c.MAX_EVENT_BYTES:
            raise Malformed("oversized", f"a user event must encode to at most {c.MAX_EVENT_BYTES} bytes "
                            f"(name, payload and filters); this one is {len(msg)}")
        self._deliver_event(now, fields, msg)
        return dict(zip(USER_EVENT_FIELDS, fields, strict=True))

    def _deliver_event(self, now: float, fields: list[Any], msg: bytes) -> None:
        seen = self._events_seen
        seen[fields[1]] = None
        if len(seen) > SEEN_EVENTS:
            del seen[next(iter(seen))]
        if fields[0] > self.event_ltime:
            self.event_ltime = fields[0]
        self._broadcast(now, "\x00event:" + fields[1], msg)
        self.events.append((USER, fields[7], dict(zip(USER_EVENT_FIELDS, fields, strict=True))))

    def force_leave(self, now: float, name: str, *, unreachable: bool = False) -> bool:
        """An operator says a failed member is gone for good: it becomes left here and everywhere (the news
        is a leave on its behalf). An alive or unknown member is left alone; returns whether it changed.
        With `unreachable` (the caller cannot reach it itself: the WAN's view) an alive or suspect member is
        taken too; if it is in fact running, it hears the leave and refutes it."""
        rec = self.view.get(name)
        if rec is None or name == self.name or (rec.state != DEAD and not (unreachable and rec.state < DEAD)):
            return False
        self._on_dead(now, rec.inc, name, name)
        return True

    # ------------------------------------------------------------------ queries
    def alive_peers(self) -> int:
        c_ = self.view.counts
        return c_[ALIVE] + c_[SUSPECT] - (1 if self.me.state in (ALIVE, SUSPECT) else 0)

    def estimated_size(self) -> int:
        c_ = self.view.counts
        return c_[ALIVE] + c_[SUSPECT] + c_[DEAD]

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # ------------------------------------------------------------------ input: datagrams
    def on_packet(self, now: float, data: bytes) -> None:
        """One datagram from the network. Anything malformed is counted and dropped, nothing else."""
        try:
            msgs = self.codec.decode(data)
        except Malformed as e:
            self.count("dropped_" + e.reason)
            return
        self.on_messages(now, msgs)

    def on_messages(self, now: float, msgs: list[Any]) -> None:
        """The messages of one datagram, decoded from its frame (each still checked here). The simulator
        calls it directly with messages it decoded once and hands to many receivers: they are only read."""
        view = self.view
        for m in msgs:
            if type(m) is not list or not m:
                self.count("dropped_malformed")
                continue
            t = m[0]
            if t == c.ACK:
                if len(m) != 3 or type(m[1]) is not int or type(m[2]) is not bytes:
                    self.count("dropped_malformed")
                    continue
                self._on_ack(now, m[1], m[2])
                continue
            if t == c.SUSPECT or t == c.DEAD or t == c.ALIVE:
                # Most news arrives many times over: drop what we already know before checking the rest.
                if len(m) < 4 or type(m[1]) is not int or type(m[2]) is not str:
                    self.count("dropped_malformed")
                    continue
                rec = view.get(m[2])
                if rec is not None and (m[1] < rec.inc or (t == c.ALIVE and m[1] == rec.inc and m[2] != self.name)):
                    continue
            if not c.valid(m):
                self.count("dropped_unsupported" if m[0] in c.RESERVED_TYPES else "dropped_malformed")
                continue
            if t == c.PING:
                if m[2] and m[2] != self.name:
                    self.count("dropped_wrong_node")
                    continue
                self._send(m[4], m[5], [c.ack(m[1], self.ack_payload)])
            elif t == c.SUSPECT:
                self._on_suspect(now, m[1], m[2], m[3])
            elif t == c.ALIVE:
                self._on_alive(now, m[1], m[2], m[3], m[4], m[5])
            elif t == c.DEAD:
                self._on_dead(now, m[1], m[2], m[3])
            elif t == c.INDIRECT_PING:
                self._on_indirect_ping(now, m)
            elif t == c.USER_EVENT:
                if m[2] not in self._events_seen:
                    self._deliver_event(now, m[1:], c.user_event(*m[1:]))
            elif t == c.NACK:
                p = self.probe
                if p is not None and p.seq == m[1]:
                    p.nacks += 1
            else:
                self.count("dropped_unexpected")

    def stale(self, now: float, m: list[Any], until: float) -> bool:
        """Whether the decoded news message `m` (suspect, alive or dead), handed to `on_messages` here at
        any time from `now` to `until` and whatever else happens here meanwhile, is certain to change
        nothing: not the view, suspicions, gossip queue, timers, events, counters, health or random draws,
        then or later. The simulator skips such deliveries (`Sim(skip_noop=True)`); the argument is in
        docs/membership.md, "Simulator: skipping news that changes nothing". Reads only."""
        t = m[0]
        if (t != c.SUSPECT and t != c.ALIVE and t != c.DEAD) or len(m) < 4 or type(m[1]) is not int \
                or type(m[2]) is not str:
            return False
        name = m[2]
        rec = self.view.get(name)
        if rec is None:  # unknown: a join (alive), a leave intent (dead), or ignored until it is known
            return False
        inc = m[1]
        if inc > rec.inc:
            return False
        if inc == rec.inc:
            if t == c.ALIVE:
                if name == self.name and not self.left and not rec.node.same(m[3], m[4], m[5]):
                    return False
            elif t == c.SUSPECT:
                s = self.suspicions.get(name)
                if (rec.state == ALIVE) if s is None else s.news(m[3]):
                    return False
            elif rec.state < DEAD or name in self.suspicions or (rec.state == DEAD and m[3] == name):
                return False
            if (t != c.ALIVE or name == self.name) and not c.valid(m):
                return False  # on_messages would count it as malformed
        # Only reaping forgets a record (then alive news is a join again): not before `until` for this
        # record, nor for one that dies from now on (its `since` is then at least `now`).
        reap = min(self.t.reconnect_timeout, self.t.tombstone_timeout)
        return until < now + reap and (rec.state < DEAD or rec.since + reap > until)

    # ------------------------------------------------------------------ input: timers
    def on_timer(self, now: float, kind: int, token: Any) -> None:
        if not self.running:
            return
        if kind == T_PROBE:
            if token == self._tick_gen and self.probe is None:
                self._probe_next(now)
        elif kind == T_PROBE_TIMEOUT:
            self._on_probe_timeout(now, token)
        elif kind == T_PROBE_DEADLINE:
            p = self.probe
            if p is not None and p.seq == token:
                if p.fallback_ok:
                    self.count("probe_tcp_fallback_ok")
                self._probe_done(now, p.fallback_ok)
        elif kind == T_RELAY:
            r = self.relays.pop(token, None)
            if r is not None and r[3]:
                self._send(r[0], r[1], [c.nack(r[2])])
        elif kind == T_GOSSIP:
            self._gossip(now)
        elif kind == T_SUSPICION:
            armed = self._suspicion_timer
            if armed is None or now >= armed:  # else one superseded by an earlier deadline
                self._suspicion_timer = None
                self._suspicions_due(now)
        elif kind == T_PUSH_PULL:
            self.timers.append((now + self.t.push_pull_period(self.estimated_size()), T_PUSH_PULL, None))
            peer = self._k_random(1, now, self._alive_peer)
            if peer:
                self._open_push_pull(now, peer[0])
        elif kind == T_RECONNECT:
            self.timers.append((now + self.t.reconnect_interval, T_RECONNECT, None))
            self._reap(now)
            self._reconnect(now)

    # ------------------------------------------------------------------ probing
    def _probe_next(self, now: float) -> None:
        rec = self._next_target()
        if rec is None:
            self._schedule_probe(now)
            return
        self._seq += 1
        seq = self._seq
        t = self.t
        node = rec.node
        # Lifeguard (memberlist's probeNode): local health stretches the whole probe — its deadline for
        # indirect acks and nacks and for the TCP ping — but not the wait for the direct ack (probe_timeout).
        interval = self.health.scale(t.probe_interval) if t.lifeguard else t.probe_interval
        if interval > t.probe_interval:
            self.count("probes_degraded")
        self.probe = _Probe(seq, node, now, now + interval)
        msgs = [c.ping(seq, node.name, self.name, self.addr, self.port)]
        if rec.state == SUSPECT and t.lifeguard:  # buddy system: tell it first
            msgs.append(c.suspect(rec.inc, node.name, self.name))
        self._send(node.addr, node.port, msgs)
        self.timers.append((now + t.probe_timeout, T_PROBE_TIMEOUT, seq))

    def _next_target(self) -> Rec | None:
        """The next member of this round (an affine permutation of the view's index space, reshuffled
        each round: every member is probed once per round, in a different order for every prober)."""
        view = self.view
        w = self._walk
        me = self.name
        for _ in range(2):
            i, p, a, b = w
            size = view.size
            while i < p:
                idx = (a * i + b) % p
                i += 1
                if idx >= size:
                    continue
                name = view.name_at(idx)
                if name == me:
                    continue
                r = view.get(name)
                if r is None or r.state >= DEAD:
                    continue
                w[0] = i
                return r
            size = view.size
            if size < 2:
                w[:] = [0, 0, 0, 0]
                return None
            if self._prime[0] != size:
                self._prime = (size, _next_prime(size))
            p = self._prime[1]
            w[:] = [0, p, 1 + int(self.rng.random() * (p - 1)), int(self.rng.random() * p)]
        return None

    def _schedule_probe(self, now: float) -> None:
        """The next probe on the next tick of the base interval; at once if this probe overran it (a
        ticker that drops the ticks it missed but keeps one, as Go's does)."""
        iv = self.t.probe_interval
        nxt = self._tick_time + iv
        if nxt <= now:
            # Restart the ticker's phase here (comparing a float sum with `now` could otherwise leave the
            # next tick at or before `now` and probe again and again at the same instant).
            self._tick_time = nxt = now
        else:
            self._tick_time = nxt
        self._tick_gen += 1
        self.timers.append((nxt, T_PROBE, self._tick_gen))

    def _on_ack(self, now: float, seq: int, payload: bytes) -> None:
        p = self.probe
        if p is not None and p.seq == seq:
            if not p.indirect:  # the target's own answer: its round trip is a measurement (a relayed one is not)
                p.direct_ok = True
                if self.want_rtt:
                    self.events.append((RTT, p.node.name, (now - p.sent, payload)))
            self._probe_done(now, True)
            return
        r = self.relays.pop(seq, None)
        if r is not None:
            self._send(r[0], r[1], [c.ack(r[2])])

    def _on_probe_timeout(self, now: float, seq: int) -> None:
        p = self.probe
        if p is None or p.seq != seq:
            return
        t = self.t
        target = p.node
        p.indirect = True
        peers = self._k_random(t.indirect_checks, now,
                               lambda r: r.state == ALIVE and r.node.name != target.name and r.node.name != self.name)
        msg = c.indirect_ping(seq, target.name, target.addr, target.port, t.lifeguard, self.name, self.addr,
                              self.port)
        for node in peers:
            self._send(node.addr, node.port, [msg])
        p.expected_nacks = len(peers) if t.lifeguard else 0
        if t.tcp_pings:
            body = self.codec.body(c.ping(seq, target.name, self.name, self.addr, self.port))
            self.streams.append((S_PING, (target.addr, target.port), body, seq, p.deadline))
        self.timers.append((p.deadline, T_PROBE_DEADLINE, seq))

    def _probe_done(self, now: float, ok: bool) -> None:
        p = self.probe
        assert p is not None
        self.probe = None
        if self.want_rtt and not (p.direct_ok or p.fallback_ok):
            self.events.append((UNREACHED, p.node.name, ok))
        if self.t.lifeguard:
            if ok:
                self.health.apply(-1)
            elif p.expected_nacks > 0:
                self.health.apply(max(0, p.expected_nacks - p.nacks))
            else:
                self.health.apply(1)
        if not ok:
            self.count("probes_failed")
            r = self.view.get(p.node.name)
            if r is not None and r.state <= SUSPECT:
                self._on_suspect(now, r.inc, r.node.name, self.name)
        self._schedule_probe(now)

    def _on_indirect_ping(self, now: float, m: list[Any]) -> None:
        if len(self.relays) >= MAX_RELAYS:
            self.count("dropped_relay_full")
            return
        self._seq += 1
        mine = self._seq
        self.relays[mine] = (m[7], m[8], m[1], m[5])
        self._send(m[3], m[4], [c.ping(mine, m[2], self.name, self.addr, self.port)])
        self.timers.append((now + self.t.probe_timeout, T_RELAY, mine))

    # ------------------------------------------------------------------ merge rules
    def _on_alive(self, now: float, inc: int, name: str, addr: str, port: int, tags: dict[str, str]) -> None:
        if name == self.name:
            me = self.me
            if inc < me.inc or (inc == me.inc and me.node.same(addr, port, tags)) or self.left:
                return
            self.count("refuted_alive")
            self._refute(now, inc)
            return
        view = self.view
        rec = view.get(name)
        if rec is None:
            intent = self.intents.pop(name, None)
            if intent is not None and inc <= intent[0] and now - intent[1] < INTENT_TTL:
                view.put(Rec(Node(name, addr, port, tags), intent[0], LEFT, now))
                self._broadcast(now, name, c.dead(intent[0], name, name))
                self.events.append((LEFT_EVENT, name, intent[0]))
                return
            view.put(Rec(Node(name, addr, port, tags), inc, ALIVE, now))
            self._broadcast(now, name, c.alive(inc, name, addr, port, tags))
            self.events.append((JOIN, name, inc))
            return
        node = rec.node
        if node.addr != addr or node.port != port:
            if rec.state < DEAD or inc <= rec.inc:
                self.count("dropped_address_conflict")
                return
        if inc <= rec.inc:
            return
        self.suspicions.pop(name, None)
        changed = not node.same(addr, port, tags)
        if changed:
            node = Node(name, addr, port, tags)
        view.put(Rec(node, inc, ALIVE, rec.since if rec.state == ALIVE else now))
        self._broadcast(now, name, c.alive(inc, name, addr, port, tags))
        if rec.state >= DEAD:
            self.events.append((JOIN, name, inc))
        elif changed:
            self.events.append((UPDATE, name, inc))
        elif rec.state == SUSPECT:
            self.events.append((RECOVERED, name, inc))

    def _on_suspect(self, now: float, inc: int, name: str, frm: str | None) -> None:
        """A suspicion of `name` from `frm` (a suspect message, or our own failed probe), or from nobody
        known (None: a push-pull record said suspect or dead). Only a named member's suspicion is gossiped
        on and can confirm one we hold: a record heard in a push-pull is someone's accusation echoed, and
        taking it as ours (memberlist's mergeState does) let a slow observer's own accusation, spread and
        echoed back, confirm itself and pull its timeout down (docs/membership.md, "False positives")."""
        view = self.view
        rec = view.get(name)
        if rec is None or inc < rec.inc:
            return
        s = self.suspicions.get(name)
        if s is not None:
            if frm is not None and s.confirm(frm):
                self._broadcast(now, name, c.suspect(inc, name, frm))
                self._arm_suspicion(max(now, s.deadline))
            return
        if rec.state != ALIVE:
            return
        if name == self.name:
            self.count("refuted_suspect")
            self._refute(now, inc)
            return
        if frm is None:
            self.count("suspect_from_push_pull")
        else:
            self._broadcast(now, name, c.suspect(inc, name, frm))
        view.put(Rec(rec.node, inc, SUSPECT, now))
        t = self.t
        n = self.estimated_size()
        lo = t.suspicion_min(n)
        if t.lifeguard:
            k = t.suspicion_mult - 2
            if n - 2 < k:
                k = 0
            s = Suspicion(name, frm, k, lo, t.suspicion_max(n), now)
        else:
            s = Suspicion(name, frm, 0, lo, lo, now)
        self.suspicions[name] = s
        self._arm_suspicion(s.deadline)
        self.events.append((SUSPECTED, name, inc))

    def _arm_suspicion(self, when: float) -> None:
        """A suspicion timer at `when` unless one is armed no later."""
        armed = self._suspicion_timer
        if armed is None or when < armed:
            self._suspicion_timer = when
            self.timers.append((when, T_SUSPICION, None))

    def _suspicions_due(self, now: float) -> None:
        """The armed suspicion timer fired: every suspicion whose deadline has come, in deadline order, then
        the timer for the next deadline."""
        due = sorted((s.deadline, s.start, s.name) for s in self.suspicions.values() if s.deadline <= now)
        for _, _, name in due:
            s = self.suspicions.get(name)
            if s is not None and s.deadline <= now:
                self._on_suspicion_timeout(now, s)
                if self.suspicions.get(name) is s:  # not settled (cannot happen): never re-armed in the past
                    del self.suspicions[name]
        self._arm_earliest()

    def _arm_earliest(self) -> None:
        """The suspicion timer for the earliest deadline of those held, if any."""
        if self.suspicions:
            self._arm_suspicion(min(s.deadline for s in self.suspicions.values()))

    def _on_suspicion_timeout(self, now: float, s: Suspicion) -> None:
        rec = self.view.get(s.name)
        if rec is None or rec.state != SUSPECT:
            del self.suspicions[s.name]
            return
        self.count("suspicion_timeouts")
        self._on_dead(now, rec.inc, s.name, self.name)

    def _on_dead(self, now: float, inc: int, name: str, frm: str) -> None:
        view = self.view
        rec = view.get(name)
        left = frm == name
        if rec is None:
            if left and name != self.name:
                self._remember_intent(now, name, inc)
            return
        if inc < rec.inc:
            return
        self.suspicions.pop(name, None)
        if rec.state >= DEAD:
            if left and rec.state == DEAD:  # it was failed here; it says it left (Serf's leave intent)
                view.put(Rec(rec.node, inc, LEFT, now))
                self._broadcast(now, name, c.dead(inc, name, frm))
                self.events.append((LEFT_EVENT, name, inc))
            return
        if name == self.name:
            self.count("refuted_dead")
            self._refute(now, inc)
            return
        self._broadcast(now, name, c.dead(inc, name, frm))
        view.put(Rec(rec.node, inc, LEFT if left else DEAD, now))
        self.events.append((LEFT_EVENT if left else FAILED, name, inc))

    def _remember_intent(self, now: float, name: str, inc: int) -> None:
        intents = self.intents
        if len(intents) >= MAX_INTENTS:  # forget the stale ones first; under a flood, the oldest
            for n in [n for n, (_, t) in intents.items() if now - t >= INTENT_TTL]:
                del intents[n]
            while len(intents) >= MAX_INTENTS:
                del intents[next(iter(intents))]
        old = intents.get(name)
        if old is None or inc >= old[0]:
            intents[name] = (inc, now)

    def _refute(self, now: float, accused: int) -> None:
        me = self.me
        inc = me.inc + 1
        if accused >= inc:
            inc = accused + 1
        self.me = Rec(me.node, inc, ALIVE, me.since)
        self.view.put(self.me)
        if self.t.lifeguard:
            self.health.apply(1)
        self._broadcast(now, self.name, self._alive_msg(self.me))
        self.events.append((REFUTED, self.name, inc))

    @staticmethod
    def _alive_msg(r: Rec) -> bytes:
        n = r.node
        return c.alive(r.inc, n.name, n.addr, n.port, n.tags)

    # ------------------------------------------------------------------ dissemination
    def _broadcast(self, now: float, name: str, msg: bytes) -> None:
        self.queue.push(name, msg)
        if not self._gossip_pending and self.running:
            self._gossip_soon(now)

    def _gossip_soon(self, now: float) -> None:
        gi = self.t.gossip_interval
        when = self._gossip_phase + math.ceil((now - self._gossip_phase) / gi) * gi
        if when < now:
            when += gi
        self._gossip_pending = True
        self.timers.append((when, T_GOSSIP, None))

    def _transmit_limit(self) -> int:
        n = self.estimated_size()
        if self._limit[0] != n:
            self._limit = (n, self.t.retransmit_limit(n))
        return self._limit[1]

    def _send(self, addr: str, port: int, msgs: list[bytes]) -> None:
        if self.queue:
            room = self._room - sum(len(m) for m in msgs)
            if room > 0:
                msgs = msgs + self.queue.take(room, self._transmit_limit())
        self.out.append(((addr, port), self.pack(msgs)))

    def _gossip(self, now: float) -> None:
        self._gossip_pending = False
        if not self.queue:
            return
        limit = self._transmit_limit()
        for node in self._gossip_targets(now):
            msgs = self.queue.take(self._room, limit)
            if not msgs:
                break
            self.out.append(((node.addr, node.port), self.pack(msgs)))
        if self.queue:
            self._gossip_pending = True
            self.timers.append((now + self.t.gossip_interval, T_GOSSIP, None))

    def _gossip_targets(self, now: float) -> list[Node]:
        """gossip_nodes random members that are alive or suspect, or died less than
        gossip_to_the_dead_time ago (so they hear news that may let them refute)."""
        view = self.view
        size = view.size
        k = self.t.gossip_nodes
        out: list[Node] = []
        get = view.get
        name_at = view.name_at
        rnd = self.rng.random
        oldest = now - self.t.gossip_to_the_dead_time
        me = self.name
        for _ in range(3 * size):
            r = get(name_at(int(rnd() * size)))
            if r is None:
                continue
            st = r.state
            node = r.node
            if (st > SUSPECT and (st != DEAD or r.since < oldest)) or node.name == me or node in out:
                continue
            out.append(node)
            if len(out) >= k:
                break
        return out

    def _alive_peer(self, r: Rec) -> bool:
        return r.state == ALIVE and r.node.name != self.name

    def _k_random(self, k: int, now: float, accept: Any) -> list[Node]:
        """Up to k distinct members that `accept` takes, picked at random (memberlist's kRandomNodes)."""
        view = self.view
        size = view.size
        out: list[Node] = []
        if not size or k <= 0:
            return out
        rnd = self.rng.random
        for _ in range(3 * size):
            r = view.get(view.name_at(int(rnd() * size)))
            if r is None or not accept(r) or r.node in out:
                continue
            out.append(r.node)
            if len(out) >= k:
                break
        return out

    # ------------------------------------------------------------------ Serf: reconnect and reap
    def _reconnect(self, now: float) -> None:
        """Serf's reconnect: with probability failed/alive, a push-pull with one random failed member (so
        the two sides of a healed partition find each other again)."""
        counts = self.view.counts
        failed = counts[DEAD]
        if not failed:
            return
        alive = max(1, counts[ALIVE] + counts[SUSPECT])
        if self.rng.random() > failed / alive:
            return
        dead = [r for _, name in self.view.graveyard if (r := self.view.get(name)) is not None and r.state == DEAD]
        if dead:
            self._open_push_pull(now, dead[int(self.rng.random() * len(dead))].node)

    def _reap(self, now: float) -> None:
        g = self.view.graveyard
        t = self.t
        first = min(t.reconnect_timeout, t.tombstone_timeout)
        later: list[tuple[float, str]] = []
        while g and g[0][0] <= now - first:
            since, name = heapq.heappop(g)
            r = self.view.get(name)
            if r is None or r.state < DEAD or r.since != since:
                continue
            if now - since < (t.reconnect_timeout if r.state == DEAD else t.tombstone_timeout):
                later.append((since, name))
                continue
            self.view.forget(name)
            self.suspicions.pop(name, None)
            self.events.append((REAPED, name, r.inc))
        for item in later:
            heapq.heappush(g, item)

    # ------------------------------------------------------------------ push-pull (anti-entropy)
    def _open_push_pull(self, now: float, node: Node) -> None:
        self.streams.append((S_PUSH_PULL, (node.addr, node.port), self.push_pull_open(False), None,
                             now + self.t.tcp_timeout))

    def push_pull_open(self, join: bool) -> bytes:
        """The first message of a push-pull we start: our view's size and bucket hashes."""
        n = len(self.view)
        bits = summary_bits(n)
        return self.codec.body(c.pp_summary(join, n, bits, self.view.bucket_hashes(bits)))

    def on_stream(self, now: float, body: bytes) -> bytes | None:
        """A message another member sent us over TCP; returns our answer (or None: close)."""
        try:
            msgs = self.codec.decode(body)
        except Malformed as e:
            self.count("dropped_" + e.reason)
            if e.reason == "foreign":
                return self.codec.body(c.pp_error(f"this is pool {self.codec.label.decode()!r}; you sent {e}"))
            if e.reason == "encrypted":
                return self.codec.body(c.pp_error("this agent's gossip is not encrypted (no `encrypt` key) and "
                                                  "your message was sealed with one"))
            return None
        if len(msgs) != 1 or not c.valid(msgs[0]):
            self.count("dropped_malformed")
            return None
        m = msgs[0]
        t = m[0]
        if t == c.PING:
            if m[2] and m[2] != self.name:
                self.count("dropped_wrong_node")
                return None
            return self.codec.body(c.ack(m[1], self.ack_payload))
        if t == c.PP_SUMMARY:
            bits = m[3]
            theirs = c.hashes_from_blob(m[4])
            mine = self.view.bucket_hashes(bits)
            diff = [b for b in range(1 << bits) if mine[b] != theirs[b]]
            self.count("push_pull_served")
            if not diff:
                return self.codec.body(c.pp_done())
            entries = [[r.node.name, r.inc, r.state] for r in self.view.in_buckets(bits, diff)]
            return self.codec.body(c.pp_digest(bits, diff, entries))
        if t == c.PP_RECORDS:
            reply = [record_wire(r) for name in m[2] if (r := self.view.get(name)) is not None]
            self._merge(now, m[1])
            return self.codec.body(c.pp_records(reply, []))
        self.count("dropped_unexpected")
        return None

    def stream_reply(self, now: float, kind: int, token: Any, body: bytes) -> bytes | None:
        """The answer to a stream message we sent; returns our next message (None: done). Raises
        `Malformed` for garbage and `Refused` when the peer answered with an error."""
        try:
            msgs = self.codec.decode(body)
        except Malformed as e:
            if e.reason == "foreign":  # its error answer, in its own pool's frame
                raise Refused(f"the peer is in another pool ({e}); this is pool {self.codec.label.decode()!r}") from None
            raise
        if len(msgs) != 1 or not c.valid(msgs[0]):
            raise Malformed("malformed", "stream reply")
        m = msgs[0]
        t = m[0]
        if kind == S_PING:
            p = self.probe
            if t == c.ACK and p is not None and p.seq == token == m[1]:
                p.fallback_ok = True
            return None
        if t == c.PP_DONE:
            return None
        if t == c.PP_ERROR:
            raise Refused(m[1])
        if t == c.PP_DIGEST:
            return self.codec.body(self._answer_digest(m[1], m[2], m[3]))
        if t == c.PP_RECORDS:
            self._merge(now, m[1])
            return None
        raise Malformed("unexpected", f"message type {t} in a stream reply")

    def stream_failed(self, now: float, kind: int, token: Any) -> None:
        self.count("tcp_ping_failed" if kind == S_PING else "push_pull_failed")

    def _answer_digest(self, bits: int, buckets: list[int], entries: list[list[Any]]) -> bytes:
        view = self.view
        theirs = {e[0]: e for e in entries}
        send = []
        for r in view.in_buckets(bits, buckets):
            e = theirs.get(r.node.name)
            if e is None or r.inc > e[1] or (r.inc == e[1] and r.state != e[2]):
                send.append(record_wire(r))
        want = []
        for name, inc, state in entries:
            r = view.get(name)
            if (r is None and state < DEAD) or (r is not None and (inc > r.inc or (inc == r.inc and state != r.state))):
                want.append(name)
        return c.pp_records(send, want)

    def _merge(self, now: float, records: list[list[Any]]) -> None:
        """Records from a push-pull, under the same rules as gossip (a peer's 'dead' is only a suspicion
        here: we give the member its chance to refute). A suspect or dead record names no accuser: it
        starts a suspicion here that nobody is counted for, and confirms none (see `_on_suspect`)."""
        for name, addr, port, tags, inc, state in records:
            if state == ALIVE:
                self._on_alive(now, inc, name, addr, port, tags)
            elif state == LEFT:
                self._on_dead(now, inc, name, name)
            else:
                self._on_suspect(now, inc, name, None)
