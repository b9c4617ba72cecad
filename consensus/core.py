"""The pure Raft state machine, shaped like etcd-io/raft.

No sockets, clock, disk or global randomness: time is `tick()`, randomness is an injected seeded
RNG, input is `step(message)` plus a few local calls (propose, read_index, transfer, ...), and
output is a `Ready` holding everything the caller must do, in this order:

1. persist `hard_state`, `entries` (truncating any conflicting suffix first) and `snapshot`;
2. send `messages`;
3. restore the FSM from `snapshot`, then apply `committed_entries`; answer `read_states`;
4. call `advance(ready)`.

Only one Ready is outstanding at a time, but `step`/`tick`/`propose` may be called while the
caller persists it (the shell awaits fsync on another thread): the core keeps its own markers
consistent across that gap. The leader counts its own log toward commit only once persisted.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .errors import (
    BootstrapError,
    ConfChangeInProgress,
    ConfigurationError,
    NotLeader,
    ProposalDropped,
    RaftError,
)
from .log import RaftLog
from .messages import (
    ConfChange,
    Configuration,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    decode_conf_entry,
    encode_conf_entry,
)
from .progress import Progress, ProgressState

CAMPAIGN_TRANSFER = b"transfer"  # context of a vote request caused by TimeoutNow: bypasses the leader lease

_RESPONSE = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}


class Rng(Protocol):
    """The only randomness the core uses (a seeded `random.Random` satisfies it)."""

    def randrange(self, start: int, stop: int) -> int: ...


@dataclass(frozen=True)
class RaftConfig:
    """Tunables of the core, in ticks and counts (the shell decides how long a tick is)."""

    election_ticks: int = 10  # followers campaign after a random timeout in [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_entries: int = 512  # batching: entries per AppendEntries
    max_msg_bytes: int = 1 << 20  # batching: payload bytes per AppendEntries (at least one entry is sent)
    max_inflight: int = 64  # pipelining: unacknowledged AppendEntries per follower
    max_apply_entries: int = 4096  # committed entries per Ready
    max_uncommitted_bytes: int = 0  # flow control: refuse proposals beyond this much uncommitted data (0: off)
    snapshot_retry_ticks: int = 0  # re-probe a follower whose InstallSnapshot went unanswered (0: 2x election)

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks, which must be >= 1")
        if self.max_inflight < 1 or self.max_msg_entries < 1 or self.max_apply_entries < 1:
            raise ValueError("max_inflight, max_msg_entries and max_apply_entries must be >= 1")


@dataclass
class InitialState:
    """What storage hands the core at start: the durable hard state, latest snapshot and log suffix."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def is_empty(self) -> bool:
        return self.hard_state == HardState() and self.snapshot is None and not self.entries


def bootstrap_state(config: Configuration) -> InitialState:
    """The state of a brand-new cluster member: one CONF entry at index 1, term 1."""
    if not config.voters:
        raise BootstrapError("a bootstrap configuration needs at least one voter")
    entry = Entry(1, 1, EntryType.CONF, encode_conf_entry(None, config))
    return InitialState(HardState(term=1), None, [entry])


@dataclass
class Ready:
    """Work for the shell; see the module docstring for the order it must be done in."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)  # ReadIndex requests abandoned (leadership lost)

    @property
    def must_sync(self) -> bool:
        return bool(self.entries) or self.snapshot is not None or self.hard_state is not None


class RaftCore:
    """One server's Raft state machine."""

    def __init__(self, node_id: str, config: RaftConfig, rng: Rng, state: InitialState | None = None) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        state = state or InitialState()
        self.id = node_id
        self.cfg = config
        self.rng = rng
        snap = state.snapshot
        self.snapshot: Snapshot | None = snap  # the latest snapshot, sent to followers that need it
        offset, offset_term = (snap.index, snap.term) if snap else (0, 0)
        entries = [e for e in state.entries if e.index > offset]
        self.log = RaftLog(offset, offset_term, entries, state.hard_state.commit)
        self._base_config = snap.meta.config if snap else Configuration()
        self._conf_cache: dict[tuple[int, int], Configuration] = {}
        self._config_key: tuple[int, int] | None = None
        self.config = Configuration()
        self.term = state.hard_state.term
        self.vote = state.hard_state.vote
        self.role = Role.FOLLOWER
        self.lead = ""
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.prs: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.pending_conf_index = 0
        self.lead_transferee = ""
        self.uncommitted_bytes = 0
        self.msgs: list[Message] = []
        self._reads: dict[bytes, tuple[int, set[str]]] = {}  # ReadIndex in flight: ctx -> (index, acks)
        self._reads_waiting_commit: list[bytes] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._prev_hs = state.hard_state
        self._prev_ss = SoftState("", Role.FOLLOWER)
        self._outstanding = False
        self._commit_pending = False  # the commit index moved: followers not yet told get an append in ready()
        self._refresh_config()
        self._become_follower(self.term, "")

    # ---- introspection -------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def leader_addr(self) -> str:
        return self.config.address(self.lead) if self.lead else ""

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def promotable(self) -> bool:
        """May this server campaign? Voters may; so may a server that its own uncommitted change
        removed but that the committed configuration still lists (Ongaro's thesis §4.2.2: it may be
        needed to commit that change). Its own vote then does not count."""
        if self.log.pending_snapshot is not None:
            return False
        return self.id in self.config.voters or self.id in self.config_at(self.log.committed).voters

    def config_at(self, index: int) -> Configuration:
        """The configuration in effect at log index `index` (latest CONF entry at or before it)."""
        ci = self.log.conf_indexes
        i = bisect.bisect_right(ci, index)
        if i == 0:
            return self._base_config
        return self._decode_conf(ci[i - 1])

    def status(self) -> dict[str, object]:
        return {"id": self.id, "term": self.term, "vote": self.vote, "role": self.role.name, "leader": self.lead,
                "commit": self.log.committed, "applied": self.log.applied, "last_index": self.log.last_index,
                "first_index": self.log.first_index,
                "progress": {k: repr(v) for k, v in self.prs.items()} if self.is_leader else {}}

    # ---- local inputs --------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled); no-op for leaders and non-voters."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. Raises NotLeader / ProposalDropped."""
        return self.propose_many([data])[0]

    def propose_many(self, datas: Sequence[bytes]) -> list[int]:
        """Append several commands in one go (one broadcast); returns their indexes."""
        self._check_can_propose()
        first = self.log.last_index + 1
        entries = [Entry(self.term, first + i, EntryType.NORMAL, d) for i, d in enumerate(datas)]
        size = sum(e.size() for e in entries)
        limit = self.cfg.max_uncommitted_bytes
        if limit and self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
            raise ProposalDropped(f"too much uncommitted data ({self.uncommitted_bytes} bytes, limit {limit}): "
                                  "followers are not keeping up; retry shortly")
        self.uncommitted_bytes += size
        self._append(entries)
        return [e.index for e in entries]

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Append a single-server membership change (effective at once); returns its index."""
        self._check_can_propose()
        if self.pending_conf_index > self.log.committed:
            raise ConfChangeInProgress(
                f"membership change at index {self.pending_conf_index} is not committed yet; retry after it is")
        new = self.config.apply(cc)
        entry = Entry(self.term, self.log.last_index + 1, EntryType.CONF, encode_conf_entry(cc, new))
        self.pending_conf_index = entry.index
        self._append([entry])
        return entry.index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer comes as a ReadState with this context."""
        if not self.is_leader:
            raise NotLeader(self.lead, self.leader_addr)
        if not context or context in self._reads or context in self._reads_waiting_commit:
            raise ValueError("read_index needs a unique, non-empty context")
        if self.log.term(self.log.committed) != self.term:
            self._reads_waiting_commit.append(context)  # released once an entry of this term commits
            return
        self._start_read(context)

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter `to` (TimeoutNow once its log is caught up); aborts after an election timeout."""
        if not self.is_leader:
            raise NotLeader(self.lead, self.leader_addr)
        if to == self.id:
            return
        if to not in self.config.voters:
            raise ConfigurationError(f"cannot transfer leadership to {to!r}: it is not a voter")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        pr = self.prs[to]
        if pr.match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)

    def create_snapshot(self, index: int, data: bytes) -> Snapshot:
        """Record a snapshot the FSM took at applied index `index`; it becomes the one sent to followers."""
        if index > self.log.applied or index < self.log.offset:
            raise ValueError(f"snapshot index {index} must be within [{self.log.offset}, applied {self.log.applied}]")
        if self.snapshot is not None and index <= self.snapshot.index:
            return self.snapshot
        term = self.log.term(index)
        assert term is not None
        snap = Snapshot(SnapshotMeta(index, term, self.config_at(index)), data)
        self.snapshot = snap
        return snap

    def compact(self, index: int) -> None:
        """Drop log entries up to `index` (must be covered by the latest snapshot)."""
        if self.snapshot is None or index > self.snapshot.index:
            raise ValueError(f"cannot compact to {index}: no snapshot covers it")
        if index <= self.log.offset:
            return
        self._base_config = self.config_at(index)
        self.log.compact(index)

    # ---- the Ready cycle -----------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._outstanding:
            return False
        return bool(self.msgs or self._commit_pending or self._read_states or self._dropped_reads or self.log.unstable_entries()
                    or self.log.pending_snapshot is not None or self.log.committed > self.log.applying
                    or self.hard_state() != self._prev_hs or self._soft_state() != self._prev_ss)

    def ready(self) -> Ready:
        if self._outstanding:
            raise RaftError("ready() called again before advance()")
        self._outstanding = True
        if self._commit_pending:
            self._send_commit()
        rd = Ready()
        ss = self._soft_state()
        if ss != self._prev_ss:
            rd.soft_state = self._prev_ss = ss
        hs = self.hard_state()
        if hs != self._prev_hs:
            rd.hard_state = hs
        rd.entries = self.log.unstable_entries()
        rd.snapshot = self.log.pending_snapshot
        rd.committed_entries = self.log.next_committed(self.cfg.max_apply_entries)
        if rd.committed_entries:
            self.log.applying = rd.committed_entries[-1].index
        rd.messages, self.msgs = self.msgs, []
        rd.read_states, self._read_states = self._read_states, []
        rd.dropped_reads, self._dropped_reads = self._dropped_reads, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell finished `rd`: everything in it is persisted, sent and applied."""
        self._outstanding = False
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            if self.log.pending_snapshot is rd.snapshot:
                self.log.pending_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied = max(self.log.applied, rd.committed_entries[-1].index)
        if self.is_leader:
            self._self_persisted()

    # ---- network input ---------------------------------------------------------------------

    def step(self, m: Message) -> None:
        if m.to != self.id:
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                in_lease = self.cfg.check_quorum and self.lead != "" and self.election_elapsed < self.cfg.election_ticks
                if in_lease and m.context != CAMPAIGN_TRANSFER:
                    return  # we heard from a live leader recently: do not let this server disrupt it
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, "")
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MsgType.HEARTBEAT, MsgType.APP):
                # A stale leader (e.g. after a partition): tell it our term so that it steps down.
                self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            can_vote = (self.vote == m.frm or (self.vote == "" and self.lead == "")
                        or (m.type == MsgType.PRE_VOTE and m.term > self.term))
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self._send(Message(_RESPONSE[m.type], m.frm, self.id, m.term))
                if m.type == MsgType.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self._send(Message(_RESPONSE[m.type], m.frm, self.id, self.term, reject=True))
            return

        if self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    # ---- roles -------------------------------------------------------------------------------

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
        self.lead = ""
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_ticks + self.rng.randrange(0, self.cfg.election_ticks)
        self.lead_transferee = ""
        self.votes = {}
        self.prs = {}
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self._commit_pending = False
        self._dropped_reads.extend(self._reads)
        self._dropped_reads.extend(self._reads_waiting_commit)
        self._reads = {}
        self._reads_waiting_commit = []

    def _become_follower(self, term: int, lead: str) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def _become_pre_candidate(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = ""

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.log.last_index
        for sid in self.config.members():
            self._add_progress(sid, last + 1)
        me = self.prs.setdefault(self.id, Progress(last + 1, self.cfg.max_inflight))
        me.become_replicate()
        me.match = self.log.stable_index
        me.recent_active = True
        # No membership change until the first entry of this term commits (Ongaro's single-server fix).
        self.pending_conf_index = last
        self._append([Entry(self.term, last + 1, EntryType.NOOP)])

    def _add_progress(self, sid: str, next_index: int) -> None:
        if sid == self.id:
            pr = Progress(next_index, self.cfg.max_inflight)
            pr.become_replicate()
            pr.match = self.log.stable_index
            pr.recent_active = True
        else:
            pr = Progress(next_index, self.cfg.max_inflight, is_learner=sid in self.config.learners)
            pr.recent_active = True  # do not count a new member as dead before it had a chance to answer
        self.prs[sid] = pr

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MsgType.VOTE, self.term
        if self._poll(self.id, True) is True:
            # A single voter wins at once.
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for sid in sorted(self.config.voters):
            if sid != self.id:
                self._send(Message(vote_type, sid, self.id, term, log_term=self.log.last_term,
                                   index=self.log.last_index, context=ctx))

    def _poll(self, sid: str, granted: bool) -> bool | None:
        """Record a vote; True when won, False when lost, None while undecided."""
        if sid in self.config.voters:
            self.votes.setdefault(sid, granted)
        yes = sum(1 for v in self.votes.values() if v)
        no = len(self.votes) - yes
        q = self.config.quorum()
        if yes >= q:
            return True
        if no >= q or no > len(self.config.voters) - q:
            return False
        return None

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                if not self._quorum_active():
                    self._become_follower(self.term, "")
                    return
                for sid, pr in self.prs.items():
                    pr.recent_active = sid == self.id
            if self.lead_transferee:
                self.lead_transferee = ""  # the transfer did not finish within an election timeout
        retry = self.cfg.snapshot_retry_ticks or 2 * self.cfg.election_ticks
        for pr in self.prs.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= retry:
                    pr.become_probe()
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(b"")

    def _quorum_active(self) -> bool:
        active = sum(1 for sid in self.config.voters
                     if sid == self.id or (sid in self.prs and self.prs[sid].recent_active))
        return active >= self.config.quorum()

    # ---- leader ------------------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if not self.is_leader:
            raise NotLeader(self.lead, self.leader_addr)
        if self.lead_transferee:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee!r}; retry shortly")

    def _append(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._refresh_config()
        self._bcast_append()

    def _self_persisted(self) -> None:
        me = self.prs.get(self.id)
        if me is not None and me.maybe_update(self.log.stable_index) and self._maybe_commit():
            self._on_commit()

    def _maybe_commit(self) -> bool:
        matches = sorted((self.prs[v].match for v in self.config.voters if v in self.prs), reverse=True)
        q = self.config.quorum()
        if len(matches) < q:
            return False
        old = self.log.committed
        if not self.log.maybe_commit(matches[q - 1], self.term):
            return False
        if self.uncommitted_bytes:
            for i in range(max(old + 1, self.log.first_index), self.log.committed + 1):
                e = self.log.entry(i)
                if e.type == EntryType.NORMAL and e.term == self.term:
                    self.uncommitted_bytes -= e.size()
            self.uncommitted_bytes = max(0, self.uncommitted_bytes)
        return True

    def _on_commit(self) -> None:
        """The leader's commit index moved: tell followers, release reads, step down if removed.

        Followers are told in the next ready(), not here: an append sent before then (new proposals,
        more acks) carries the new commit index anyway, so under load one message per follower and
        turn does both jobs instead of an empty append per commit plus the next batch's."""
        self._commit_pending = True
        if self._reads_waiting_commit and self.log.term(self.log.committed) == self.term:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for ctx in waiting:
                self._start_read(ctx)
        if self.id not in self.config_at(self.log.committed).voters:
            self._become_follower(self.term, "")

    def _start_read(self, ctx: bytes) -> None:
        if self.config.voters.keys() == {self.id}:
            self._read_states.append(ReadState(self.log.committed, ctx))
            return
        self._reads[ctx] = (self.log.committed, {self.id})
        self._bcast_heartbeat(ctx)

    def _bcast_append(self) -> None:
        for sid in self.prs:
            if sid != self.id:
                self._send_append(sid)

    def _send_commit(self) -> None:
        self._commit_pending = False
        if not self.is_leader:
            return
        for sid, pr in self.prs.items():
            if sid != self.id and pr.commit_sent < self.log.committed:
                self._send_append(sid)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for sid, pr in self.prs.items():
            if sid != self.id:
                commit = min(pr.match, self.log.committed)
                self._send(Message(MsgType.HEARTBEAT, sid, self.id, self.term, commit=commit, context=ctx))

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None or prev < self.log.offset:
            return self._send_snapshot(to, pr)
        if pr.next <= self.log.last_index:
            ents = self.log.slice(pr.next, self.cfg.max_msg_entries, self.cfg.max_msg_bytes)
        else:
            ents = []
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APP, to, self.id, self.term, log_term=prev_term, index=prev,
                           entries=tuple(ents), commit=self.log.committed))
        pr.commit_sent = self.log.committed
        pr.sent(ents[-1].index if ents else prev, len(ents))
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        if not pr.recent_active or self.snapshot is None:
            return False
        self._send(Message(MsgType.SNAP, to, self.id, self.term, snapshot=self.snapshot))
        pr.become_snapshot(self.snapshot.index)
        return True

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if m.type == MsgType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            old_paused = pr.is_paused()
            if pr.maybe_update(m.index):
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state == ProgressState.REPLICATE:
                    pr.free_inflights_le(m.index)
                if self._maybe_commit():
                    self._on_commit()
                    if not self.is_leader:
                        return
                elif old_paused:
                    self._send_append(m.frm)
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self.lead_transferee and pr.match == self.log.last_index:
                    self._send(Message(MsgType.TIMEOUT_NOW, m.frm, self.id, self.term))
        elif m.type == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and len(pr.inflights) >= pr.max_inflight:
                pr.inflights.popleft()
            if pr.match < self.log.last_index or pr.state == ProgressState.PROBE:
                self._send_append(m.frm)
            if m.context and m.context in self._reads:
                self._ack_read(m.context, m.frm)

    def _ack_read(self, ctx: bytes, frm: str) -> None:
        _, acks = self._reads[ctx]
        if frm in self.config.voters:
            acks.add(frm)
        if sum(1 for v in acks if v in self.config.voters) < self.config.quorum():
            return
        # Leadership confirmed as of this request: release it and every request queued before it.
        while self._reads:
            first = next(iter(self._reads))
            index, _ = self._reads.pop(first)
            self._read_states.append(ReadState(index, first))
            if first == ctx:
                break

    # ---- candidate and follower ----------------------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif (m.type == MsgType.PRE_VOTE_RESP and self.role == Role.PRE_CANDIDATE) or (
                m.type == MsgType.VOTE_RESP and self.role == Role.CANDIDATE):
            result = self._poll(m.frm, not m.reject)
            if result is True:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
            elif result is False:
                self._become_follower(self.term, "")

    def _step_follower(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self.election_elapsed = 0
            self.lead = m.frm
            if m.type == MsgType.APP:
                self._handle_append(m)
            elif m.type == MsgType.HEARTBEAT:
                self.log.commit_to(min(m.commit, self.log.last_index))
                self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))
            else:
                self._handle_snapshot(m)
        elif m.type == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._refresh_config()
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        hint, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index), m.log_term)
        self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=m.index, reject=True,
                           reject_hint=hint, log_term=hint_term))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        if snap.index <= self.log.committed:
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=self.log.committed))
            return
        if self.log.match_term(snap.index, snap.term):
            # We already hold the snapshot's last entry: just fast-forward the commit index.
            self.log.commit_to(snap.index)
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=self.log.committed))
            return
        self.log.restore(snap)
        self.snapshot = snap
        self._base_config = snap.meta.config
        self._config_key = None
        self._refresh_config()
        self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=self.log.last_index))

    # ---- configuration ---------------------------------------------------------------------------

    def _decode_conf(self, index: int) -> Configuration:
        entry = self.log.entry(index)
        key = (entry.index, entry.term)
        conf = self._conf_cache.get(key)
        if conf is None:
            _, conf = decode_conf_entry(entry.data)
            if len(self._conf_cache) > 64:
                self._conf_cache.clear()
            self._conf_cache[key] = conf
        return conf

    def _refresh_config(self) -> None:
        ci = self.log.conf_indexes
        if ci:
            t = self.log.term(ci[-1])
            assert t is not None
            key = (ci[-1], t)
        else:
            key = (0, -1)
        if key == self._config_key:
            return
        self._config_key = key
        new = self._decode_conf(ci[-1]) if ci else self._base_config
        if new == self.config:
            return
        self.config = new
        if self.is_leader:
            last = self.log.last_index
            for sid in new.members():
                if sid not in self.prs:
                    self._add_progress(sid, last + 1)
                elif sid != self.id:
                    self.prs[sid].is_learner = sid in new.learners
            for sid in list(self.prs):
                if sid != self.id and sid not in new.members():
                    del self.prs[sid]
            if self.lead_transferee and self.lead_transferee not in new.voters:
                self.lead_transferee = ""

    def _send(self, m: Message) -> None:
        self.msgs.append(m)
