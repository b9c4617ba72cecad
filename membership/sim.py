"""A deterministic simulator for the membership core (FoundationDB / TigerBeetle style).

Thousands of `Membership` cores run in one process on a simulated clock and network, all randomness
drawn from generators seeded from one seed, so a run is a pure function of its seed (`trace_digest`
proves it). The network has per-link latency (each member a share of it, plus jitter) and loss, and
partitions; TCP exchanges (push-pull, the fallback ping) are reliable but fail across a partition or to a
crashed member. Faults: crash-stop, partitions and healing, graceful leave, joins, and **slow members** (`SlowPattern`):
a member that stalls for seconds now and then (a GC pause: whatever comes due while it is paused —
datagrams, stream messages, its own timers — is handled when the pause ends, in random order), or
one that lags (Lifeguard's slow message processing: its datagrams, the acks of its own probes
included, are handled seconds late in arrival order while its timers keep time).

Invariants are checked as it runs: a member never declares itself dead and always sees itself alive
(unless it left); an incarnation never goes back (`View.put`). `check_crashed_dead` and
`check_no_false_dead` check the eventual ones: a crashed member is dead everywhere; once a partition
has healed, no running member is dead anywhere.

Speed: with `encode=False` a datagram travels as the tuple of its encoded messages (`core.pack`) and
each message is decoded once, the decoded form handed to every member that receives it
(`Membership.on_messages`) — the run is the same event for event as with every datagram framed and
decoded (a test proves it), without a msgpack decode per delivery. Streams (push-pull, the TCP ping)
are always encoded, and the tests run the encoded path.

Memory: every view sits on one shared `Baseline` and holds only its differences; `fold` runs every
`fold_every` simulated seconds. That is what lets 10,000 members each keep a view of 10,000.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import filterfalse
from typing import Any

from . import codec as c
from .codec import Codec, unpack_one
from .config import LAN, Timings
from .core import FAILED, JOIN, REFUTED, S_PUSH_PULL, SUSPECTED, Membership
from .errors import InvariantViolation, Malformed, Refused
from .view import ALIVE, DEAD, LEFT, Baseline, Node, Rec, View, fold

UDP_OVERHEAD = 28  # IPv4 + UDP headers, per datagram
TCP_OVERHEAD = 40  # IPv4 + TCP headers, per segment
TCP_MSS = 1448
TCP_CONNECTION = 7  # SYN, SYN-ACK, ACK, and FIN/ACK both ways: segments without data

_NEWS = c.SUSPECT  # message types from here on are news (see codec.py); below, probe traffic
_UDP, _TIMER, _REQ, _REP, _FAIL, _PAUSE, _CALL = range(7)
_log = math.log
# skip_noop: how long a member remembers the news it was found certain to ignore (then it is looked at
# again), and how late after its epoch a datagram may be handled for that memory to count
STALE_EPOCH = 10.0
STALE_SLACK = 600.0


@dataclass
class Network:
    loss: float = 0.0  # probability a datagram is lost
    latency: tuple[float, float] = (0.0001, 0.0005)  # each member's share of a link's one-way latency
    jitter: float = 0.0001  # mean of an exponential delay added to every datagram


@dataclass
class SlowPattern:
    """A member that runs normally for uniform(*every) seconds, then has a slow episode, over and over.

    kind "stall": the member stops for `seconds` (a GC pause, CPU starvation): what comes due meanwhile
    is handled when it resumes, in random order. kind "lag": for `length` seconds, every message it
    receives — pings, acks and nacks of its own probes, news, refutations — is handled `seconds` late,
    in arrival order, while its own timers keep time (Lifeguard's "slow message processing": such a
    member misses its probes' deadlines and suspects healthy members, and reads their refutations
    late); when the episode ends it works through the datagrams already queued before newer ones."""

    seconds: float = 2.0
    every: tuple[float, float] = (5.0, 15.0)
    kind: str = "stall"
    length: float = 10.0


class SimMember:
    __slots__ = ("index", "name", "addr", "core", "crashed", "paused_until", "slow", "left", "pauses", "lag",
                 "backlog", "skipped_until", "stale", "stale_until")

    def __init__(self, index: int, name: str, addr: tuple[str, int], core: Membership) -> None:
        self.index = index
        self.name = name
        self.addr = addr
        self.core: Membership | None = core
        self.crashed = False
        self.paused_until = 0.0
        self.slow: SlowPattern | None = None
        self.left = False
        self.pauses = 0
        self.lag = 0.0  # extra delay of every datagram it receives (a "lag" episode)
        self.backlog = 0.0  # when it will have handled the last datagram of its lagged inbound queue
        self.skipped_until = 0.0  # the latest arrival time of a datagram to it that skip_noop dropped
        # skip_noop: encoded news messages found certain to be ignored here if handled by stale_until +
        # STALE_SLACK; forgotten at stale_until (the end of a STALE_EPOCH)
        self.stale: set[bytes] = set()
        self.stale_until = 0.0


class ChainDigest:
    """The events trace's digest, in a form a checkpoint can hold (a blake2b object's state cannot be
    read): lines are kept and folded into a chained blake2b every `CHUNK` lines, so the digest is the
    same however often the run was saved and resumed."""

    __slots__ = ("digest", "lines")
    CHUNK = 4096

    def __init__(self) -> None:
        self.digest = b""
        self.lines: list[bytes] = []

    def update(self, line: bytes) -> None:
        self.lines.append(line)
        if len(self.lines) >= self.CHUNK:
            self.digest = self._fold()
            self.lines = []

    def _fold(self) -> bytes:
        return hashlib.blake2b(self.digest + b"\x00".join(self.lines), digest_size=16).digest()

    def hexdigest(self) -> str:
        return self._fold().hex()


class Action:
    """A scenario step by name (a Sim method and its arguments, `Sim.call`): unlike a lambda it can be
    checkpointed (membership/checkpoint.py)."""

    __slots__ = ("sim", "method", "args")

    def __init__(self, sim: Sim, method: str, args: tuple[Any, ...]) -> None:
        self.sim = sim
        self.method = method
        self.args = args

    def __call__(self) -> None:
        getattr(self.sim, self.method)(*self.args)

    def __repr__(self) -> str:
        return f"Action({self.method}{self.args!r})"


def consul_tags(rng: random.Random, server: bool = False) -> dict[str, str]:
    """Tags of the size a Consul client agent gossips (so byte counts are realistic)."""
    node_id = "-".join(f"{rng.getrandbits(b * 4):0{b}x}" for b in (8, 4, 4, 4, 12))
    tags = {"role": "consul" if server else "node", "dc": "dc1", "id": node_id, "vsn": "2", "vsn_min": "2",
            "vsn_max": "3", "build": "0.1.0", "port": "8300", "segment": ""}
    if server:
        tags["expect"] = "3"
    return tags


@dataclass
class Stats:
    """What happened, for the benchmark and the tests."""

    false_pairs: int = 0  # (observer, healthy member) "failed" verdicts
    false_incidents: set[tuple[str, int]] = field(default_factory=set)  # (member, incarnation) falsely failed
    false_slow: int = 0  # of false_incidents, members that were slow
    # of the healthy members' false_incidents, those a member that is not slow declared too (the rest
    # were verdicts only in slow observers' own views, which the others' views did not follow)
    false_seen_by_healthy: set[tuple[str, int]] = field(default_factory=set)
    suspicions: int = 0
    refutes: int = 0
    events: int = 0
    # datagrams put on the network to a running member (lost ones not counted), and of them those that
    # skip_noop did not deliver at all; news messages it took out of datagrams (delivered or not)
    datagrams: int = 0
    skipped_datagrams: int = 0
    skipped_messages: int = 0


class Sim:
    """n members that already know each other (a settled pool), on a simulated network."""

    def __init__(self, n: int, *, seed: int = 0, timings: Timings = LAN, network: Network | None = None,
                 label: str = "lan:dc1", fold_every: float = 5.0, trace: bool = False, encode: bool = True,
                 skip_noop: bool = False, events_trace: bool = False) -> None:
        self.seed = seed
        # skip_noop: news a receiver is certain to ignore (`Membership.stale`) is not handed to it, and a
        # datagram of nothing else is not delivered at all — the same run, membership event for
        # membership event, with fewer deliveries (docs/membership.md, "Simulator: skipping news that
        # changes nothing"). It needs the decoded path (encode=False).
        if skip_noop and encode:
            raise ValueError("skip_noop needs encode=False (news is judged in its decoded form)")
        self.skip_noop = skip_noop
        self._max_stall = 0.0  # the longest stall of any slow member (bounds how late a datagram is handled)
        # encode=False: datagrams travel as their members' encoded messages (core.pack = tuple), each
        # message decoded once and the decoded form handed to every receiver (`on_messages`): the same
        # run, event for event, without a msgpack decode per delivery. Streams are always encoded.
        self.encode = encode
        self._decoded: dict[bytes, Any] = {}
        self.rng = random.Random(seed)
        self.timings = timings
        self.net = network or Network()
        self.label = label
        self.now = 0.0
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self.members: list[SimMember] = []
        self.by_addr: dict[tuple[str, int], int] = {}
        self.by_name: dict[str, int] = {}
        self.share: list[float] = []
        self.groups: list[int] | None = None  # partition: group per member; None = one network
        self.link_loss: dict[tuple[int, int], float] = {}
        self.bytes_out: list[int] = []
        self.packets_out: list[int] = []
        self.crashed_at: dict[int, float] = {}
        self.dead_seen: dict[int, dict[int, float]] = {}  # crashed member -> observer -> time it was seen dead
        self.join_seen: dict[int, dict[int, float]] = {}  # joined member -> observer -> time it was known
        self.stats = Stats()
        self.fold_every = fold_every
        self._trace = hashlib.blake2b(digest_size=16) if trace else None
        # events_trace: every timer firing, stream step and membership event with its time — what
        # trace=True records minus the datagram deliveries, so a run with skip_noop compares equal (a
        # chained digest, which checkpoints keep: membership/checkpoint.py)
        self._etrace = ChainDigest() if events_trace else None
        tags_rng = random.Random(seed ^ 0x5EED)
        recs = []
        for i in range(n):
            name, addr = self._identity(i)
            recs.append(Rec(Node(name, addr[0], addr[1], consul_tags(tags_rng)), 0, ALIVE, 0.0))
        self.baseline = Baseline(recs)
        self._prefix = len(Codec(label).prefix)
        for i in range(n):
            rec = recs[i]
            core = Membership(rec.node.name, rec.node.addr, rec.node.port, rec.node.tags,
                              rng=random.Random(self.rng.getrandbits(64)), timings=timings, label=label,
                              view=View(self.baseline))
            self._add(core)
        for m in self.members:
            m.core.start(0.0)  # type: ignore[union-attr]
            self._drain(m)
        if fold_every:
            self.at(fold_every, self._fold)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _identity(i: int) -> tuple[str, tuple[str, int]]:
        return f"node-{i:05d}", (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 8301)

    def _add(self, core: Membership) -> SimMember:
        i = len(self.members)
        if not self.encode:
            core.pack = tuple
        addr = (core.addr, core.port)
        m = SimMember(i, core.name, addr, core)
        self.members.append(m)
        self.by_addr[addr] = i
        self.by_name[core.name] = i
        lo, hi = self.net.latency
        self.share.append(lo + (hi - lo) * self.rng.random())
        self.bytes_out.append(0)
        self.packets_out.append(0)
        if self.groups is not None:
            self.groups.append(0)
        return m

    @property
    def n(self) -> int:
        return len(self.members)

    def running(self) -> list[SimMember]:
        return [m for m in self.members if not m.crashed and not m.left]

    # ------------------------------------------------------------------ scheduling
    def _push(self, when: float, kind: int, i: int, a: Any = None, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, i, a, b))

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Run `fn` at simulated time `when` (scenario steps)."""
        self._push(when, _CALL, -1, fn)

    def call(self, when: float, method: str, *args: Any) -> None:
        """Call the Sim's public `method` with `args` at simulated time `when` — a scenario step that,
        unlike `at(when, lambda: ...)`, can be checkpointed (`crash`, `join`, `heal`, `partition`, ...)."""
        if method.startswith("_") or not callable(getattr(self, method, None)):
            raise ValueError(f"Sim has no public method {method!r}")
        self._push(when, _CALL, -1, Action(self, method, args))

    def run(self, until: float) -> None:
        """Process every event up to simulated time `until`."""
        heap = self._heap
        pop = heapq.heappop
        push = heapq.heappush
        members = self.members
        rnd = self.rng.random
        trace = self._trace
        etrace = self._etrace
        while heap and heap[0][0] <= until:
            ev = pop(heap)
            t, _, kind, i, a, b = ev
            if kind >= _PAUSE:
                self.now = t
                if kind == _CALL:
                    a()
                else:
                    self._pause(members[i], t)
                continue
            m = members[i]
            core = m.core
            if core is None or m.crashed:
                continue
            if m.paused_until > t:
                push(heap, (m.paused_until, rnd() - 2.0, kind, i, a, b))
                continue
            self.now = t
            if trace is not None:
                trace.update(f"{t:.9f} {kind} {i}".encode())
            if etrace is not None and kind != _UDP:
                etrace.update(b"%.9f %d %d" % (t, kind, i))
            if kind == _UDP:
                if type(a) is bytes:
                    core.on_packet(t, a)
                else:
                    core.on_messages(t, a)
            elif kind == _TIMER:
                core.on_timer(t, a, b)
            elif kind == _REQ:
                self._serve_stream(m, t, a)
            elif kind == _REP:
                self._stream_reply(m, t, a)
            else:
                core.stream_failed(t, a[0], a[1])
            if core.out or core.timers or core.streams or core.events:
                self._drain(m)
        self.now = max(self.now, until)

    # ------------------------------------------------------------------ effects
    def _drain(self, m: SimMember) -> None:
        core = m.core
        assert core is not None
        i = m.index
        if core.out:
            out = core.out
            core.out = []
            for dest, data in out:
                self._udp(i, dest, data)
        if core.timers:
            timers = core.timers
            core.timers = []
            heap = self._heap
            for when, kind, tok in timers:
                self._seq += 1
                heapq.heappush(heap, (when, self._seq, _TIMER, i, kind, tok))
        if core.streams:
            streams = core.streams
            core.streams = []
            for kind, dest, body, token, deadline in streams:
                self._open_stream(i, kind, dest, body, token, deadline)
        if core.events:
            events = core.events
            core.events = []
            self._on_events(m, events)

    def _udp(self, i: int, dest: tuple[str, int], data: bytes | tuple[bytes, ...]) -> None:
        if type(data) is bytes:
            size = len(data)
        else:  # the frame codec.packet would make: header, array header, the messages
            size = self._prefix + (1 if len(data) < 16 else 3) + sum(map(len, data))
        self.bytes_out[i] += size + UDP_OVERHEAD
        self.packets_out[i] += 1
        j = self.by_addr.get(dest)
        if j is None or (self.groups is not None and self.groups[i] != self.groups[j]):
            return
        net = self.net
        rnd = self.rng.random
        loss = self.link_loss.get((i, j), net.loss) if self.link_loss else net.loss
        if loss and rnd() < loss:
            return
        share = self.share
        target = self.members[j]
        when = self.now + share[i] + share[j]
        if net.jitter:
            when -= net.jitter * _log(1.0 - rnd())
        if target.lag:  # a slow member takes its datagrams in the order they came, `lag` late
            when += target.lag
            if when < target.backlog:
                when = target.backlog
            target.backlog = when
        elif target.backlog > when:  # ... and works through the backlog after the episode ends
            when = target.backlog
        self.stats.datagrams += 1
        if type(data) is not bytes:
            data = self._decode(data) if not self.skip_noop else self._strip(target, data, when)  # type: ignore
            if data is None:
                return
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, _UDP, j, data, None))

    def _decode(self, data: tuple[bytes, ...]) -> list[Any]:
        """News (suspect, alive, dead, user events) is sent many times over: decoded once, shared.
        Probes, acks and nacks are one-offs: decoded as they come (msg[1] is the type after a one-byte
        array header)."""
        dec = self._decoded
        if len(dec) > 100_000:
            dec.clear()
        msgs = []
        for msg in data:
            if msg[1] < _NEWS:
                msgs.append(unpack_one(msg))
                continue
            m = dec.get(msg)
            if m is None:
                m = dec[msg] = unpack_one(msg)
            msgs.append(m)
        return msgs

    def _strip(self, target: SimMember, data: tuple[bytes, ...], when: float) -> list[Any] | None:
        """skip_noop: the datagram's messages decoded, without the news `target` is certain to ignore
        when it handles them — at `when`, or up to one stall later if it is paused then (`Membership.stale`).
        None: deliver nothing (a crashed member; or only such news, to a member that cannot stall: a
        stalled member's deferred datagrams draw from the network's random stream, which must stay as it
        was). What a member is certain to ignore stays so (docs/membership.md): each member remembers
        the encoded messages found stale for `STALE_EPOCH` simulated seconds, so most copies cost a set
        lookup, not a look at its state."""
        st = self.stats
        core = target.core
        if core is None or target.crashed:  # dropped on arrival anyway, without a draw
            st.skipped_datagrams += 1
            st.skipped_messages += len(data)
            return None
        stale = target.stale
        now = self.now
        if now >= target.stale_until:  # a new epoch: forget, look again
            stale.clear()
            target.stale_until = (now // STALE_EPOCH + 1) * STALE_EPOCH
        valid_until = target.stale_until + STALE_SLACK  # what is in `stale` is stale up to then
        if when + self._max_stall > valid_until:  # it may be handled later than that: no skipping
            return self._decode(data)
        if stale.issuperset(data):
            st.skipped_messages += len(data)
            return self._nothing_for(target, when)
        rest = list(filterfalse(stale.__contains__, data))
        is_stale = core.stale
        kept = []
        for msg, m in zip(rest, self._decode(rest), strict=True):
            if msg[1] >= _NEWS and is_stale(now, m, valid_until):
                stale.add(msg)
                continue
            kept.append(m)
        st.skipped_messages += len(data) - len(kept)
        return kept if kept else self._nothing_for(target, when)

    def _nothing_for(self, target: SimMember, when: float) -> list[Any] | None:
        """A datagram with nothing left for `target`: not delivered (None), unless `target` stalls —
        then it still arrives, empty, so its deferral draws as before."""
        if target.slow is not None and target.slow.kind == "stall":
            return []
        self.stats.skipped_datagrams += 1
        if when > target.skipped_until:
            target.skipped_until = when
        return None

    def _tcp_cost(self, i: int, body: bytes, connection: bool = False) -> None:
        size = len(body) + 4
        segments = (size + TCP_MSS - 1) // TCP_MSS
        self.bytes_out[i] += size + TCP_OVERHEAD * (segments + (TCP_CONNECTION if connection else 0))
        self.packets_out[i] += segments + (TCP_CONNECTION if connection else 0)

    def _link_rtt(self, i: int, j: int) -> float:
        return 2 * (self.share[i] + self.share[j])

    def _reachable(self, i: int, j: int) -> bool:
        return self.groups is None or self.groups[i] == self.groups[j]

    def _open_stream(self, i: int, kind: int, dest: tuple[str, int], body: bytes, token: Any,
                     deadline: float) -> None:
        self._tcp_cost(i, body, connection=True)
        j = self.by_addr.get(dest)
        conv = [i, j, kind, token, deadline]
        if j is None or not self._reachable(i, j):
            self._push(min(deadline, self.now + self.timings.tcp_timeout), _FAIL, i, (kind, token))
            return
        if self.members[j].crashed or self.members[j].left:  # the port is closed: refused at once
            self._push(self.now + self._link_rtt(i, j), _FAIL, i, (kind, token))
            return
        # connect (one round trip), then the message arrives half a round trip later
        self._push(self.now + 1.5 * self._link_rtt(i, j) + self.members[j].lag, _REQ, j, (conv, body))

    def _serve_stream(self, m: SimMember, t: float, a: Any) -> None:
        conv, body = a
        i = conv[0]
        reply = m.core.on_stream(t, body)  # type: ignore[union-attr]
        if reply is None or not self._reachable(m.index, i) or t > conv[4]:
            self._push(max(t, min(conv[4], t + self.timings.tcp_timeout)), _FAIL, i, (conv[2], conv[3]))
            return
        self._tcp_cost(m.index, reply)
        self._push(t + self._link_rtt(i, m.index) / 2 + self.members[i].lag, _REP, i, (conv, reply))

    def _stream_reply(self, m: SimMember, t: float, a: Any) -> None:
        conv, body = a
        core = m.core
        assert core is not None
        if t > conv[4]:
            core.stream_failed(t, conv[2], conv[3])
            return
        try:
            nxt = core.stream_reply(t, conv[2], conv[3], body)
        except (Malformed, Refused):
            core.stream_failed(t, conv[2], conv[3])
            return
        if nxt is None:
            return
        j = conv[1]
        self._tcp_cost(m.index, nxt)
        if not self._reachable(m.index, j) or self.members[j].crashed:
            self._push(min(conv[4], t + self.timings.tcp_timeout), _FAIL, m.index, (conv[2], conv[3]))
            return
        self._push(t + self._link_rtt(m.index, j) / 2 + self.members[j].lag, _REQ, j, (conv, nxt))

    def _on_events(self, m: SimMember, events: list[tuple[str, str, Any]]) -> None:
        core = m.core
        assert core is not None
        if core.me.state != ALIVE and not core.left:
            raise InvariantViolation(f"{m.name} sees itself {core.me!r}")
        st = self.stats
        st.events += len(events)
        trace = self._trace
        for kind, name, inc in events:
            line = f"{self.now:.9f} {m.index} {kind} {name} {inc}"
            if trace is not None:
                trace.update(line.encode())
            if self._etrace is not None:
                self._etrace.update(line.encode())
            if kind == FAILED:
                if name == m.name:
                    raise InvariantViolation(f"{m.name} declared itself dead")
                j = self.by_name.get(name)
                if j is None:
                    continue
                target = self.members[j]
                if target.crashed:
                    self.dead_seen.setdefault(j, {}).setdefault(m.index, self.now)
                elif not target.left:
                    st.false_pairs += 1
                    if (name, inc) not in st.false_incidents:
                        st.false_incidents.add((name, inc))
                        if target.slow is not None:
                            st.false_slow += 1
                    if target.slow is None and m.slow is None:
                        st.false_seen_by_healthy.add((name, inc))
            elif kind == SUSPECTED:
                st.suspicions += 1
            elif kind == REFUTED:
                st.refutes += 1
            elif kind == JOIN:
                j = self.by_name.get(name)
                if j is not None and j in self.join_seen:
                    self.join_seen[j].setdefault(m.index, self.now)

    def _fold(self) -> None:
        views = [m.core.view for m in self.members
                 if m.core is not None and not m.crashed and m.core.view.baseline is self.baseline]
        fold(self.baseline, views)
        self.at(self.now + self.fold_every, self._fold)

    # ------------------------------------------------------------------ faults and scenario steps
    def crash(self, i: int) -> None:
        """Crash-stop member i now: it sends and answers nothing from here on."""
        m = self.members[i]
        if m.crashed:
            return
        m.crashed = True
        self.crashed_at[i] = self.now
        self.dead_seen.setdefault(i, {})
        if m.core is not None:
            m.core.stop()
        m.core = None  # crash-stop: its view is gone (and no longer held back from folding)

    def slow(self, i: int, pattern: SlowPattern | None = None) -> None:
        """Member i pauses now and then from here on; its first pause comes at a random point of one
        period (as if it had been pausing all along), later ones every uniform(*every) seconds."""
        m = self.members[i]
        m.slow = pattern or SlowPattern()
        if m.slow.kind == "stall":
            self._max_stall = max(self._max_stall, m.slow.seconds)
        self._push(self.now + m.slow.every[1] * self.rng.random(), _PAUSE, i)

    def _pause(self, m: SimMember, t: float) -> None:
        p = m.slow
        if m.crashed or p is None:
            return
        if m.lag:  # a lag episode ends
            m.lag = 0.0
            end = t
        elif p.kind == "lag":
            m.lag = p.seconds
            m.pauses += 1
            self._push(t + p.length, _PAUSE, m.index)
            return
        else:
            if m.skipped_until > t:  # a datagram skip_noop dropped might have been deferred (and drawn for)
                raise InvariantViolation(f"{m.name} stalls at {t:.3f} s with a skipped datagram due at "
                                         f"{m.skipped_until:.3f} s: make members slow before the run starts")
            m.paused_until = end = t + p.seconds
            m.pauses += 1
        lo, hi = p.every
        self._push(end + lo + (hi - lo) * self.rng.random(), _PAUSE, m.index)

    def partition(self, groups: list[list[int]]) -> None:
        """Split the network: members in different groups cannot reach each other (unlisted: group 0)."""
        g = [0] * self.n
        for k, members in enumerate(groups):
            for i in members:
                g[i] = k
        self.groups = g

    def heal(self) -> None:
        self.groups = None

    def join(self, via: int = 0) -> int:
        """A new member (knowing no one) joins through member `via`; returns its index."""
        i = self.n
        name, addr = self._identity(i)
        tags = consul_tags(random.Random(self.seed ^ i))
        core = Membership(name, addr[0], addr[1], tags, rng=random.Random(self.rng.getrandbits(64)),
                          timings=self.timings, label=self.label, now=self.now)
        m = self._add(core)
        self.join_seen[i] = {i: self.now}
        core.start(self.now)
        target = self.members[via]
        core.streams.append((S_PUSH_PULL, target.addr, core.push_pull_open(True), "join",
                             self.now + self.timings.tcp_timeout))
        self._drain(m)
        return i

    def leave(self, i: int, grace: float = 5.0) -> None:
        """Member i leaves gracefully: says so, gossips until the news is out (or `grace`), then stops."""
        m = self.members[i]
        core = m.core
        assert core is not None
        core.leave(self.now)
        self._drain(m)
        deadline = self.now + grace

        def check() -> None:
            if m.core is None or m.crashed:
                return
            if m.core.leave_spread or self.now >= deadline:
                m.left = True
                m.core.stop()
                return
            self.at(self.now + self.timings.gossip_interval, check)

        self.at(self.now + self.timings.gossip_interval, check)

    # ------------------------------------------------------------------ measurements and checks
    def reset_traffic(self) -> None:
        self.bytes_out = [0] * self.n
        self.packets_out = [0] * self.n

    def views(self) -> list[tuple[SimMember, View]]:
        return [(m, m.core.view) for m in self.members if m.core is not None and not m.crashed and not m.left]

    def state_everywhere(self, name: str) -> dict[int, int]:
        """Count of running views per state of `name` (-1: unknown there)."""
        out: dict[int, int] = {}
        for _, v in self.views():
            r = v.get(name)
            s = -1 if r is None else r.state
            out[s] = out.get(s, 0) + 1
        return out

    def dead_anywhere(self) -> list[tuple[str, str]]:
        """(observer, member) pairs where a running member is dead or left in a running member's view."""
        healthy = {m.name for m in self.members if not m.crashed and not m.left}
        bad: list[tuple[str, str]] = []
        base_dead = {name for name, r in self.baseline.records.items() if r.state >= DEAD and name in healthy}
        for m, v in self.views():
            if v.baseline is self.baseline:
                for name in base_dead:
                    r = v.get(name)
                    if r is not None and r.state >= DEAD:
                        bad.append((m.name, name))
                for name, r in v.differences():
                    if r is not None and r.state >= DEAD and name in healthy and name not in base_dead:
                        bad.append((m.name, name))
            else:
                bad += [(m.name, r.node.name) for r in v if r.state >= DEAD and r.node.name in healthy]
        return bad

    def check_no_false_dead(self) -> None:
        bad = self.dead_anywhere()
        if bad:
            raise InvariantViolation(f"{len(bad)} (observer, member) pairs see a running member dead, e.g. {bad[:3]}")

    def check_crashed_dead(self) -> None:
        for i in self.crashed_at:
            name = self.members[i].name
            for m, v in self.views():
                r = v.get(name)
                if r is not None and r.state not in (DEAD, LEFT):
                    raise InvariantViolation(f"crashed {name} is still {r!r} in {m.name}'s view at {self.now:.1f}s")

    def detection_times(self, i: int) -> list[float]:
        """Seconds after member i crashed at which each running member first saw it dead (sorted)."""
        t0 = self.crashed_at[i]
        return sorted(t - t0 for t in self.dead_seen.get(i, {}).values())

    def known_by(self, seen: dict[int, float], since: float, fraction: float) -> float | None:
        """Seconds until `fraction` of the running members had an event, or None if not that many did."""
        running = [m.index for m in self.running()]
        need = max(1, math.ceil(fraction * len(running) - 1e-9))
        times = sorted(seen[i] - since for i in running if i in seen)
        return times[need - 1] if len(times) >= need else None

    def trace_digest(self) -> str:
        assert self._trace is not None, "build the Sim with trace=True"
        return self._trace.hexdigest()

    def events_digest(self) -> str:
        assert self._etrace is not None, "build the Sim with events_trace=True"
        return self._etrace.hexdigest()

    def state_digest(self) -> str:
        """Every running core's state: its view's records, suspicions (accusers, deadlines), gossip
        queue (items and their transmit counts), probe, relays, health, counters and random state."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(sorted((n, r.inc, r.state, r.since) for n, r in self.baseline.records.items())).encode())
        for m in self.members:
            core = m.core
            if core is None:
                continue
            p = core.probe
            part = (m.index, sorted((n, None if r is None else (r.inc, r.state, r.since, r.node.addr))
                                    for n, r in core.view.differences()),
                    sorted((n, sorted(s.accusers), s.deadline, s.k) for n, s in core.suspicions.items()),
                    sorted(core.queue._items), None if p is None else (p.seq, p.node.name, p.nacks, p.indirect),
                    sorted(core.relays.items()), core.health.score, sorted(core.stats.items()),
                    core.rng.getstate(), core._seq, core._tick_time, core._gossip_pending, m.backlog)
            h.update(repr(part).encode())
        return h.hexdigest()

    def counters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for m in self.members:
            if m.core is not None:
                for k, v in m.core.stats.items():
                    total[k] = total.get(k, 0) + v
        return total
