"""A deterministic cluster simulator for the Raft core (FoundationDB / TigerBeetle style).

Many `RaftCore`s run in one process on a simulated clock and network, all driven by one seeded
RNG, so a run is a pure function of its seed. Faults: message loss, duplication, reordering,
delay, partitions (and healing), crashes and restarts from durable state (only what a Ready
persisted survives; a crash during persistence may keep a prefix of the entries), membership
changes, leadership transfers, snapshots with compaction, ReadIndex reads. Safety invariants are
checked after every event; `check_liveness` heals everything and demands progress within a bound.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .core import InitialState, RaftConfig, RaftCore, Ready, bootstrap_state
from .errors import ConfChangeInProgress, ConfigurationError, NotLeader, ProposalDropped, RaftError
from .messages import (
    ConfChange,
    ConfChangeType,
    Configuration,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Role,
    Snapshot,
)


class InvariantViolation(AssertionError):
    """A Raft safety or liveness property failed in the simulation."""


def _digest(prev: bytes, index: int, data: bytes) -> bytes:
    return hashlib.blake2b(prev + index.to_bytes(8, "big") + data, digest_size=12).digest()


class SimFSM:
    """A state machine whose state is a hash chain of every applied command (and its index)."""

    def __init__(self) -> None:
        self.index = 0
        self.digest = b""
        self.count = 0

    def apply(self, index: int, data: bytes) -> None:
        self.digest = _digest(self.digest, index, data)
        self.index = index
        self.count += 1

    def skip(self, index: int) -> None:
        self.index = index

    def snapshot(self) -> bytes:
        return msgpack.packb([self.index, self.digest, self.count])

    def restore(self, data: bytes) -> None:
        self.index, self.digest, self.count = msgpack.unpackb(data)


class SimStorage:
    """Durable state of one simulated server: survives crashes; only Ready-persisted data lands here."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    def initial_state(self) -> InitialState:
        return InitialState(self.hard_state, self.snapshot, list(self.entries))

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        if self.entries:
            start = self.entries[0].index
            if first < start:
                raise InvariantViolation(f"storage append at {first} is before the log start {start}")
            del self.entries[first - start:]
            if self.entries and self.entries[-1].index != first - 1:
                raise InvariantViolation(f"storage gap before {first}")
        self.entries.extend(entries)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        self.append(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def save_snapshot(self, snap: Snapshot) -> None:
        if self.snapshot is None or snap.index > self.snapshot.index:
            self.snapshot = snap

    def compact(self, index: int) -> None:
        self.entries = [e for e in self.entries if e.index > index]


@dataclass
class SimNode:
    id: str
    storage: SimStorage
    core: RaftCore | None = None
    fsm: SimFSM = field(default_factory=SimFSM)
    ready: Ready | None = None  # taken from the core, persistence in flight
    incarnation: int = 0

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass
class Faults:
    loss: float = 0.0
    dup: float = 0.0
    min_delay: int = 1
    max_delay: int = 8
    long_delay: float = 0.0  # probability of a much longer delay (reordering)
    crash_rate: float = 0.0  # per event-tick probability
    partition_rate: float = 0.0
    proposal_rate: float = 0.3
    conf_rate: float = 0.0
    transfer_rate: float = 0.0
    read_rate: float = 0.0
    snapshot_every: int = 0  # 0: never snapshot
    trailing: int = 2  # entries kept after compaction
    max_persist_delay: int = 5  # time an fsync takes, at most

    @classmethod
    def random(cls, rng: random.Random) -> Faults:
        harsh = rng.random() < 0.4
        return cls(
            loss=rng.choice([0.0, 0.01, 0.05, 0.15, 0.3] if harsh else [0.0, 0.01, 0.05]),
            dup=rng.choice([0.0, 0.02, 0.1]),
            min_delay=1,
            max_delay=rng.choice([3, 8, 15]),
            long_delay=rng.choice([0.0, 0.02, 0.1]),
            crash_rate=rng.choice([0.01, 0.03, 0.06] if harsh else [0.0, 0.002, 0.01]),
            partition_rate=rng.choice([0.01, 0.03, 0.06] if harsh else [0.0, 0.003, 0.01]),
            proposal_rate=rng.choice([0.3, 0.6, 1.0, 2.0]),
            conf_rate=rng.choice([0.0, 0.005, 0.02, 0.05]),
            transfer_rate=rng.choice([0.0, 0.003, 0.01, 0.03]),
            read_rate=rng.choice([0.0, 0.02, 0.1]),
            snapshot_every=rng.choice([0, 4, 12, 40]),
            trailing=rng.choice([0, 2, 10]),
            max_persist_delay=rng.choice([0, 2, 5, 20]),
        )


TICK = 10  # simulated time units per node tick


class Simulator:
    """A seeded cluster: call `run(duration)` then `check_liveness()`; invariants run after every event."""

    def __init__(self, seed: int, voters: int = 3, spares: int = 1, faults: Faults | None = None,
                 config: RaftConfig | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults if faults is not None else Faults.random(self.rng)
        self.cfg = config or RaftConfig(election_ticks=10, heartbeat_ticks=2, max_msg_entries=self.rng.choice([1, 3, 64]),
                                        max_inflight=self.rng.choice([1, 4, 64]), max_uncommitted_bytes=2000)
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, str, Any]] = []
        ids = [f"n{i}" for i in range(1, voters + 1)]
        self.spare_ids = [f"s{i}" for i in range(1, spares + 1)]
        self.nodes: dict[str, SimNode] = {}
        boot = bootstrap_state(Configuration({i: f"addr-{i}" for i in ids}))
        for sid in ids + self.spare_ids:
            st = SimStorage()
            if sid in ids:
                st.hard_state = boot.hard_state
                st.entries = list(boot.entries)
            self.nodes[sid] = SimNode(sid, st)
            self._start(self.nodes[sid])
        self.blocked: set[tuple[str, str]] = set()
        self._schedule(TICK, "chaos", None)
        # invariant bookkeeping
        self.leaders: dict[int, str] = {}
        self.entry_info: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        self.digest_at: dict[int, bytes] = {}
        self.committed_terms: dict[int, int] = {}
        self.commit_by_term: dict[int, int] = {}
        self.max_commit = 0
        self.pending_reads: dict[bytes, int] = {}
        self.next_id = 0
        self.events = 0
        self.stats: dict[str, int] = {}
        self.trace: list[str] = []
        self.applied_proposals = 0

    # ---- plumbing -----------------------------------------------------------------------

    def _schedule(self, delay: int, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, kind, payload))

    def _bump(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        node_rng = random.Random(self.rng.getrandbits(64))
        node.core = RaftCore(node.id, self.cfg, node_rng, node.storage.initial_state())
        node.fsm = SimFSM()
        if node.storage.snapshot is not None:
            self._restore(node, node.storage.snapshot)
        node.ready = None
        self._schedule(self.rng.randrange(1, TICK + 1), "tick", (node.id, node.incarnation))

    def _restore(self, node: SimNode, snap: Snapshot) -> None:
        node.fsm.restore(snap.data)
        if node.fsm.index != snap.index:
            raise InvariantViolation(f"{node.id}: snapshot data at {node.fsm.index} but meta says {snap.index}")
        expect = self.digest_at.get(snap.index)
        if expect is not None and expect != node.fsm.digest:
            raise InvariantViolation(f"{node.id}: snapshot at {snap.index} differs from the applied history")
        self.digest_at[snap.index] = node.fsm.digest

    def crash(self, sid: str) -> None:
        node = self.nodes[sid]
        if not node.alive:
            return
        rd = node.ready
        if rd is not None and rd.entries and self.rng.random() < 0.5:
            # Torn persistence: a prefix of the entries reached the disk, nothing else did.
            cut = self.rng.randrange(0, len(rd.entries) + 1)
            node.storage.append(rd.entries[:cut])
        node.core = None
        node.ready = None
        self.trace.append(f"{self.now}: crash {sid}")
        self._bump("crash")

    def restart(self, sid: str) -> None:
        node = self.nodes[sid]
        if node.alive:
            return
        self._start(node)
        self.trace.append(f"{self.now}: restart {sid}")
        self._bump("restart")

    def partition(self, group: set[str]) -> None:
        others = set(self.nodes) - group
        for a in group:
            for b in others:
                self.blocked.add((a, b))
                self.blocked.add((b, a))
        self.trace.append(f"{self.now}: partition {sorted(group)}")
        self._bump("partition")

    def heal(self) -> None:
        self.blocked.clear()
        self.trace.append(f"{self.now}: heal")

    def _send(self, m: Message) -> None:
        f = self.faults
        if (m.frm, m.to) in self.blocked or self.rng.random() < f.loss:
            self._bump("dropped")
            return
        copies = 2 if self.rng.random() < f.dup else 1
        for _ in range(copies):
            delay = self.rng.randint(f.min_delay, f.max_delay)
            if self.rng.random() < f.long_delay:
                delay += self.rng.randint(10, 60)
            self._schedule(delay, "deliver", m)

    # ---- the Ready loop of one simulated server -----------------------------------------

    def _pump(self, node: SimNode) -> None:
        core = node.core
        if core is None or node.ready is not None or not core.has_ready():
            return
        rd = core.ready()
        self._check_ready(node, rd)
        node.ready = rd
        delay = self.rng.randint(0, self.faults.max_persist_delay) if self.rng.random() < 0.5 else 0
        self._schedule(delay, "persisted", (node.id, node.incarnation, rd))

    def _finish_ready(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        node.storage.persist(rd)
        for m in rd.messages:
            self._send(m)
        if rd.snapshot is not None:
            self._restore(node, rd.snapshot)
        for e in rd.committed_entries:
            self._apply(node, e)
        for rs in rd.read_states:
            floor = self.pending_reads.pop(rs.context, None)
            if floor is not None and rs.index < floor:
                raise InvariantViolation(f"{node.id}: ReadIndex {rs.index} is below the commit {floor} seen "
                                         "before the read was issued (stale read)")
            self._bump("reads")
        for ctx in rd.dropped_reads:
            self.pending_reads.pop(ctx, None)
        node.ready = None
        core.advance(rd)
        self._maybe_snapshot(node)

    def _apply(self, node: SimNode, e: Entry) -> None:
        fsm = node.fsm
        if e.index != fsm.index + 1:
            raise InvariantViolation(f"{node.id}: applied {e.index} after {fsm.index} (gap or repeat)")
        if e.type == EntryType.NORMAL:
            fsm.apply(e.index, e.data)
            self.applied_proposals += 1
        else:
            fsm.skip(e.index)
        expect = self.digest_at.get(e.index)
        if expect is None:
            self.digest_at[e.index] = fsm.digest
        elif expect != fsm.digest:
            raise InvariantViolation(f"{node.id}: state machine safety: index {e.index} applied differently")

    def _maybe_snapshot(self, node: SimNode) -> None:
        core = node.core
        every = self.faults.snapshot_every
        if core is None or not every:
            return
        applied = core.log.applied
        last_snap = core.snapshot.index if core.snapshot else 0
        if applied - last_snap < every or node.fsm.index != applied:
            return
        snap = core.create_snapshot(applied, node.fsm.snapshot())
        node.storage.save_snapshot(snap)
        upto = min(applied - self.faults.trailing, core.log.stable_index)
        if upto > core.log.offset:
            core.compact(upto)
            node.storage.compact(upto)
        self._bump("snapshots")

    # ---- invariants ---------------------------------------------------------------------

    def _check_ready(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        for e in rd.entries:
            prev = core.log.term(e.index - 1)
            info = (hashlib.blake2b(bytes([e.type]) + e.data, digest_size=8).digest(), prev)
            seen = self.entry_info.get((e.index, e.term))
            if seen is None:
                self.entry_info[(e.index, e.term)] = info
            elif seen[0] != info[0] or (seen[1] is not None and prev is not None and seen[1] != prev):
                raise InvariantViolation(f"{node.id}: log matching: entry ({e.index}, {e.term}) differs between logs")

    def check_invariants(self) -> None:
        for node in self.nodes.values():
            core = node.core
            if core is None:
                continue
            if core.role == Role.LEADER:
                other = self.leaders.setdefault(core.term, node.id)
                if other != node.id:
                    raise InvariantViolation(f"election safety: {other} and {node.id} both lead term {core.term}")
                self._check_leader(node, core)
            if core.log.committed > self.max_commit:
                self.max_commit = core.log.committed

    def _check_leader(self, node: SimNode, core: RaftCore) -> None:
        log = core.log
        # Leader completeness: every entry committed by the leader of an earlier term is in our log.
        for term, upto in self.commit_by_term.items():
            if term >= core.term or upto <= log.offset:
                continue
            want = self.committed_terms.get(upto)
            if want is not None and log.term(upto) != want:
                raise InvariantViolation(f"leader completeness: {node.id} (term {core.term}) lacks entry {upto} "
                                         f"of term {want} committed in term {term}")
        # Record what this leader committed (counting only happens on leaders).
        prev = self.commit_by_term.get(core.term, 0)
        if log.committed > prev:
            for i in range(max(prev + 1, log.offset + 1), log.committed + 1):
                t = log.term(i)
                assert t is not None
                known = self.committed_terms.setdefault(i, t)
                if known != t:
                    raise InvariantViolation(f"two different entries committed at index {i}")
            self.commit_by_term[core.term] = log.committed

    def check_log_matching(self) -> None:
        """Full check over every live log: same (index, term) implies the same entry and the same history."""
        for node in self.nodes.values():
            core = node.core
            if core is None:
                continue
            log = core.log
            for e in log.entries:
                prev = log.term(e.index - 1)
                key = (e.index, e.term)
                h = hashlib.blake2b(bytes([e.type]) + e.data, digest_size=8).digest()
                seen = self.entry_info.setdefault(key, (h, prev))
                if seen[0] != h or (seen[1] is not None and prev is not None and seen[1] != prev):
                    raise InvariantViolation(f"{node.id}: log matching broken at ({e.index}, {e.term})")

    # ---- workload -------------------------------------------------------------------------

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for node in self.nodes.values():
            if node.core is not None and node.core.is_leader and (best is None or node.core.term > best.core.term):
                best = node
        return best

    def propose(self, node: SimNode) -> int | None:
        assert node.core is not None
        self.next_id += 1
        try:
            idx = node.core.propose(f"{self.seed}:{self.next_id}".encode())
        except (NotLeader, ProposalDropped):
            return None
        self._bump("proposals")
        return idx

    def _random_event(self) -> None:
        f, rng = self.faults, self.rng
        r = rng.random()
        live = [n for n in self.nodes.values() if n.alive]
        leader = self.leader()
        if r < f.crash_rate and live:
            self.crash(rng.choice(live).id)
            return
        r -= f.crash_rate
        if r < f.crash_rate * 3:
            dead = [n for n in self.nodes.values() if not n.alive]
            if dead:
                self.restart(rng.choice(dead).id)
            return
        r -= f.crash_rate * 3
        if r < f.partition_rate:
            if self.blocked:
                self.heal()
            else:
                ids = list(self.nodes)
                self.partition(set(rng.sample(ids, rng.randint(1, len(ids) // 2))))
            return
        r -= f.partition_rate
        if r < 0.01 * (f.partition_rate > 0) and leader is not None:
            self.partition({leader.id})  # isolate the leader: the classic case
            return
        leaders = [n for n in live if n.core is not None and n.core.is_leader]
        if not leaders:
            return
        leader = rng.choice(leaders)  # sometimes a stale leader that has not noticed yet
        assert leader.core is not None
        r = rng.random()
        burst = int(f.proposal_rate) + (1 if rng.random() < f.proposal_rate % 1 else 0)
        for _ in range(burst):
            self.propose(leader)
        if r < f.conf_rate:
            self._random_conf_change(leader)
        elif r < f.conf_rate + f.transfer_rate:
            voters = [v for v in leader.core.config.voters if v != leader.id]
            if voters:
                try:
                    leader.core.transfer_leadership(rng.choice(voters))
                    self._bump("transfers")
                except RaftError:
                    pass
        elif r < f.conf_rate + f.transfer_rate + f.read_rate:
            self.next_id += 1
            ctx = f"r{self.next_id}".encode()
            try:
                leader.core.read_index(ctx)
                self.pending_reads[ctx] = self.max_commit
            except NotLeader:
                pass

    def _random_conf_change(self, leader: SimNode) -> None:
        core = leader.core
        assert core is not None
        conf = core.config
        rng = self.rng
        options: list[ConfChange] = []
        for sid in self.nodes:
            if sid in conf.voters:
                if len(conf.voters) > 1:
                    options.append(ConfChange(ConfChangeType.REMOVE, sid))
            elif sid in conf.learners:
                options.append(ConfChange(ConfChangeType.PROMOTE, sid))
                options.append(ConfChange(ConfChangeType.REMOVE, sid))
            else:
                options.append(ConfChange(ConfChangeType.ADD_LEARNER, sid, f"addr-{sid}"))
                options.append(ConfChange(ConfChangeType.ADD_VOTER, sid, f"addr-{sid}"))
        # Keep clusters from shrinking below two voters too often (that makes runs boring, not unsafe).
        if len(conf.voters) <= 2:
            options = [o for o in options if o.type != ConfChangeType.REMOVE or o.node_id in conf.learners] or options
        cc = rng.choice(options)
        try:
            core.propose_conf_change(cc)
            self._bump("conf_changes")
            self.trace.append(f"{self.now}: conf {cc.type.name} {cc.node_id} via {leader.id}")
        except (ConfChangeInProgress, ConfigurationError, ProposalDropped, NotLeader):
            pass

    # ---- driving ----------------------------------------------------------------------------

    def _process(self, kind: str, payload: Any) -> None:
        if kind == "tick":
            sid, inc = payload
            node = self.nodes[sid]
            if node.core is None or node.incarnation != inc:
                return
            node.core.tick()
            self._schedule(TICK, "tick", payload)
            self._pump(node)
        elif kind == "deliver":
            m: Message = payload
            node = self.nodes.get(m.to)
            if node is None or node.core is None or (m.frm, m.to) in self.blocked:
                return
            node.core.step(m)
            self._pump(node)
        elif kind == "persisted":
            sid, inc, rd = payload
            node = self.nodes[sid]
            if node.core is None or node.incarnation != inc or node.ready is not rd:
                return
            self._finish_ready(node, rd)
            self._pump(node)

    def step(self) -> None:
        """Process one event (plus maybe one random fault/workload action), then check every invariant."""
        at, _, kind, payload = heapq.heappop(self._queue)
        self.now = at
        if kind == "chaos":
            self._random_event()
            self._schedule(TICK, "chaos", None)
            for node in self.nodes.values():
                self._pump(node)
        else:
            self._process(kind, payload)
        self.events += 1
        self.check_invariants()

    def run(self, duration: int) -> None:
        end = self.now + duration
        while self._queue and self._queue[0][0] <= end:
            self.step()
        self.now = max(self.now, end)

    def check_liveness(self, bound: int = 6000) -> int:
        """Heal everything, restart everyone, stop faults; a leader must emerge and commit a proposal
        on every voter within `bound` time units. Returns the time it took."""
        self.heal()
        for sid in self.nodes:
            self.restart(sid)
        f = self.faults
        self.faults = Faults(min_delay=f.min_delay, max_delay=min(f.max_delay, 8), proposal_rate=0.0,
                             snapshot_every=f.snapshot_every, trailing=f.trailing)
        start = self.now
        target: tuple[int, int] | None = None
        while self.now - start < bound:
            self.run(TICK)
            leader = self.leader()
            if leader is None or leader.core is None:
                continue
            core = leader.core
            if target is None or core.term != target[1]:
                idx = self.propose(leader)
                target = (idx, core.term) if idx is not None else None
                continue
            idx, term = target
            voters = core.config.voters
            done = all(self.nodes[v].core is not None and self.nodes[v].fsm.index >= idx for v in voters)
            if done and self.committed_terms.get(idx) == term:
                self.check_log_matching()
                return self.now - start
        raise InvariantViolation(f"liveness: no proposal committed on all voters within {bound} time units "
                                 f"after healing; leader={self.leader() and self.leader().id}, "
                                 f"status={[n.core.status() for n in self.nodes.values() if n.core]}")

    def describe(self) -> str:
        return (f"seed={self.seed} faults={self.faults} events={self.events} stats={self.stats} "
                f"last trace: {self.trace[-15:]}")


class Cluster:
    """A hand-driven cluster for focused tests: messages queue until `deliver()`; no randomness but
    the seeded election timeouts. `drop(pred)` filters messages; `isolate(id)` cuts a server off."""

    def __init__(self, ids: list[str], config: RaftConfig | None = None, seed: int = 0,
                 members: list[str] | None = None) -> None:
        self.cfg = config or RaftConfig()
        self.rng = random.Random(seed)
        boot = bootstrap_state(Configuration({i: f"addr-{i}" for i in (members or ids)}))
        self.storage: dict[str, SimStorage] = {}
        self.cores: dict[str, RaftCore] = {}
        self.applied: dict[str, list[tuple[int, bytes]]] = {}
        self.fsm: dict[str, SimFSM] = {}
        self.queue: list[Message] = []
        self.filters: list[Any] = []
        self.isolated: set[str] = set()
        self.down: set[str] = set()
        self.read_states: list[tuple[str, ReadState]] = []
        self.dropped_reads: list[bytes] = []
        for sid in ids:
            st = SimStorage()
            if sid in (members or ids):
                st.hard_state, st.entries = boot.hard_state, list(boot.entries)
            self.storage[sid] = st
            self.start(sid)

    def start(self, sid: str) -> RaftCore:
        st = self.storage[sid]
        core = RaftCore(sid, self.cfg, random.Random(self.rng.getrandbits(32)), st.initial_state())
        self.cores[sid] = core
        self.fsm[sid] = SimFSM()
        self.applied[sid] = []
        if st.snapshot is not None:
            self.fsm[sid].restore(st.snapshot.data)
        self.down.discard(sid)
        return core

    def crash(self, sid: str) -> None:
        self.down.add(sid)

    def __getitem__(self, sid: str) -> RaftCore:
        return self.cores[sid]

    def drop(self, pred: Any) -> None:
        self.filters.append(pred)

    def isolate(self, sid: str) -> None:
        self.isolated.add(sid)

    def heal(self) -> None:
        self.isolated.clear()
        self.filters.clear()

    def _blocked(self, m: Message) -> bool:
        if m.to in self.down or m.frm in self.isolated or m.to in self.isolated:
            return True
        return any(f(m) for f in self.filters)

    def process(self, sid: str) -> bool:
        """Run one Ready cycle of `sid`; True if there was one."""
        core = self.cores[sid]
        if sid in self.down or not core.has_ready():
            return False
        rd = core.ready()
        self.storage[sid].persist(rd)
        self.queue.extend(m for m in rd.messages if not self._blocked(m))
        fsm = self.fsm[sid]
        if rd.snapshot is not None:
            fsm.restore(rd.snapshot.data)
        for e in rd.committed_entries:
            if e.type == EntryType.NORMAL:
                fsm.apply(e.index, e.data)
                self.applied[sid].append((e.index, e.data))
            else:
                fsm.skip(e.index)
        self.read_states.extend((sid, rs) for rs in rd.read_states)
        self.dropped_reads.extend(rd.dropped_reads)
        core.advance(rd)
        return True

    def deliver(self, max_rounds: int = 10_000) -> None:
        """Process Readys and deliver messages until nothing is left to do."""
        for _ in range(max_rounds):
            busy = False
            for sid in self.cores:
                while self.process(sid):
                    busy = True
            if self.queue:
                busy = True
                batch, self.queue = self.queue, []
                for m in batch:
                    if not self._blocked(m):
                        self.cores[m.to].step(m)
            if not busy:
                return
        raise InvariantViolation("cluster did not quiesce")

    def tick(self, sid: str | None = None, n: int = 1) -> None:
        for _ in range(n):
            for s in [sid] if sid else list(self.cores):
                if s not in self.down:
                    self.cores[s].tick()
            self.deliver()

    def elect(self, sid: str) -> RaftCore:
        self.cores[sid].campaign()
        self.deliver()
        return self.cores[sid]

    def leaders(self) -> list[str]:
        return [s for s, c in self.cores.items() if c.is_leader and s not in self.down]

    def snapshot(self, sid: str, trailing: int = 0) -> Snapshot:
        core = self.cores[sid]
        snap = core.create_snapshot(core.log.applied, self.fsm[sid].snapshot())
        self.storage[sid].save_snapshot(snap)
        upto = snap.index - trailing
        core.compact(upto)
        self.storage[sid].compact(upto)
        return snap
