"""`RaftNode`: the thin asyncio shell that owns a `RaftCore`, its storage and its transport.

One task ticks the core; another runs the Ready loop: persist (one fsync per Ready, in an executor,
which is group commit: everything that arrives during an fsync goes into the next Ready) → send
messages → restore/apply to the FSM → resolve waiting proposals and reads → `advance()` → take a
snapshot and compact when enough entries were applied. Inbound messages are stepped into the core
as they arrive; the core tolerates that while a Ready is being persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .core import RaftConfig, RaftCore, Ready, bootstrap_state
from .errors import (
    BootstrapError,
    ConfChangeInProgress,
    LeadershipLost,
    NodeStopped,
    NotLeader,
    RaftError,
)
from .messages import ConfChange, ConfChangeType, Configuration, EntryType, Message, MsgType, Role
from .storage import MemoryStorage, Storage
from .transport import Transport

log = logging.getLogger("proconsul.consensus.node")

LEADER_EARLY = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.TIMEOUT_NOW})


class FSM(Protocol):
    """The replicated state machine. `apply` must be deterministic: same state + same data -> same result."""

    def apply(self, index: int, data: bytes) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Server:
    """One member of the cluster configuration."""

    id: str
    address: str
    voter: bool = True


@dataclass(frozen=True)
class NodeOptions:
    """Timing and housekeeping. Defaults: 100 ms ticks, elections after 0.8-1.6 s without a leader."""

    tick_interval: float = 0.1
    election_ticks: int = 8
    heartbeat_ticks: int = 1
    snapshot_threshold: int = 8192  # take a snapshot after this many applied entries
    trailing_logs: int = 1024  # entries kept after a snapshot, so slightly slow followers avoid a snapshot
    max_msg_entries: int = 512
    max_msg_bytes: int = 1 << 20
    max_inflight: int = 64
    max_uncommitted_bytes: int = 64 << 20  # proposals beyond this much uncommitted data raise ProposalDropped
    conf_change_timeout: float = 10.0

    def raft_config(self) -> RaftConfig:
        return RaftConfig(election_ticks=self.election_ticks, heartbeat_ticks=self.heartbeat_ticks,
                          max_msg_entries=self.max_msg_entries, max_msg_bytes=self.max_msg_bytes,
                          max_inflight=self.max_inflight, max_uncommitted_bytes=self.max_uncommitted_bytes)


class RaftNode:
    """A Raft server: `await start()`, `await bootstrap(...)` once for a new cluster, then propose/read."""

    def __init__(self, node_id: str, fsm: FSM, storage: Storage | None = None, *, bind: str | None = None,
                 options: NodeOptions | None = None, rng: random.Random | None = None,
                 server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None,
                 advertise: str | None = None, transport_options: dict[str, Any] | None = None) -> None:
        self.id = node_id
        self.fsm = fsm
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.options = options or NodeOptions()
        self.rng = rng or random.Random()
        self.transport: Transport | None = None
        if bind is not None:
            self.transport = Transport(node_id, bind, self._on_message, self._resolve,
                                       rng=random.Random(self.rng.getrandbits(64)), server_ssl=server_ssl,
                                       client_ssl=client_ssl, advertise=advertise, **(transport_options or {}))
        self.core: RaftCore | None = None
        self.leader_changed = asyncio.Event()
        self._listeners: list[Callable[[str], None]] = []
        self._wake = asyncio.Event()
        self._applied_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._batch: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._reads: dict[bytes, asyncio.Future[None]] = {}
        self._read_waiting: list[tuple[int, bytes]] = []
        self._read_seq = 0
        self._applied = 0
        self._snapshot_index = 0
        self._last_contact: float | None = None
        self._heard: dict[str, float] = {}  # server id -> loop time its last message arrived
        self._leader = ""
        self._term = 0
        self._stopped = False
        self._fatal: BaseException | None = None
        self._sync_storage = isinstance(self.storage, MemoryStorage)
        self._io_future: asyncio.Future[Any] | None = None


    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load storage, restore the FSM from the latest snapshot, bind the transport, start the loops."""
        state = await self._io(self.storage.load)
        if state.snapshot is not None:
            self.fsm.restore(state.snapshot.data)
            self._applied = self._snapshot_index = state.snapshot.index
        self.core = RaftCore(self.id, self.options.raft_config(), random.Random(self.rng.getrandbits(64)), state)
        if self.transport is not None:
            await self.transport.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick_loop(), name=f"raft-tick-{self.id}"),
                       loop.create_task(self._ready_loop(), name=f"raft-ready-{self.id}")]
        self._maybe_campaign_alone()

    async def bootstrap(self, servers: list[Server]) -> None:
        """Write the initial configuration of a brand-new cluster; refused if this storage holds any state."""
        core = self._core()
        if core.log.last_index > 0 or core.term > 0 or core.snapshot is not None:
            raise BootstrapError(f"server {self.id!r} already has Raft state (term {core.term}, last index "
                                 f"{core.log.last_index}); bootstrap only a brand-new data directory, once")
        voters = {s.id: s.address for s in servers if s.voter}
        learners = {s.id: s.address for s in servers if not s.voter}
        if self.id not in voters and self.id not in learners:
            raise BootstrapError(f"the bootstrap configuration must include this server ({self.id!r})")
        state = bootstrap_state(Configuration(voters, learners))
        await self._io(self.storage.save, state.hard_state, state.entries, None)
        self.core = RaftCore(self.id, self.options.raft_config(), random.Random(self.rng.getrandbits(64)), state)
        self._maybe_campaign_alone()
        self._wake.set()

    async def stop(self) -> None:
        """Stop ticking, close the transport and storage; waiting callers get NodeStopped."""
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.transport is not None:
            await self.transport.stop()
        self._fail_all(NodeStopped(f"raft server {self.id!r} stopped"))
        if self._io_future is not None:
            with contextlib.suppress(Exception):
                await self._io_future  # let an in-flight fsync finish before closing the files
        await self._io(self.storage.close)

    # ---- public API ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.transport.address if self.transport is not None else ""

    @property
    def leader_id(self) -> str:
        return self.core.lead if self.core else ""

    @property
    def leader_addr(self) -> str:
        return self.core.leader_addr if self.core else ""

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.is_leader

    @property
    def term(self) -> int:
        return self.core.term if self.core else 0

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def commit_index(self) -> int:
        return self.core.log.committed if self.core else 0

    @property
    def last_index(self) -> int:
        return self.core.log.last_index if self.core else 0

    @property
    def last_contact(self) -> float:
        """Seconds since this server last heard from the leader (0 on the leader; inf if never)."""
        if self.is_leader:
            return 0.0
        if self._last_contact is None:
            return float("inf")
        return max(0.0, asyncio.get_running_loop().time() - self._last_contact)

    def stats(self) -> dict[str, Any]:
        """Numbers for /v1/agent/self and metrics (Consul's raft block uses string values)."""
        core = self._core()
        return {"state": core.role.name.lower(), "term": core.term, "leader": core.lead,
                "last_log_index": core.log.last_index, "commit_index": core.log.committed,
                "applied_index": self._applied, "last_snapshot_index": self._snapshot_index,
                "num_peers": max(0, len(core.config.voters) - (1 if self.id in core.config.voters else 0)),
                "last_contact": self.last_contact}

    def peer_progress(self) -> dict[str, tuple[int, float]]:
        """On the leader: each other server's (last log index it has, seconds since we heard from it)."""
        core = self.core
        if core is None or not self.is_leader:
            return {}
        now = asyncio.get_running_loop().time()
        return {sid: (pr.match, now - self._heard.get(sid, float("-inf"))) for sid, pr in core.prs.items()
                if sid != self.id}

    def configuration(self) -> list[Server]:
        conf = self._core().config
        return ([Server(i, a, True) for i, a in sorted(conf.voters.items())]
                + [Server(i, a, False) for i, a in sorted(conf.learners.items())])

    def on_leader_change(self, callback: Callable[[str], None]) -> None:
        """Call `callback(leader_id)` ("" when unknown) whenever the known leader changes."""
        self._listeners.append(callback)

    async def wait_for_leader(self, timeout: float) -> str:
        """Wait until some leader is known (for tests and start-up); raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while not self.leader_id:
                self.leader_changed.clear()
                await self.leader_changed.wait()
        return self.leader_id

    async def propose(self, data: bytes) -> Any:
        """Replicate `data`; returns the FSM's result once it is committed and applied here (the leader).
        Raises NotLeader (naming the leader), ProposalDropped, LeadershipLost or NodeStopped.

        Proposals made during one turn of the event loop are appended together (`propose_many`:
        one broadcast, one fsync, one acknowledgement per follower for the whole batch)."""
        self._check_running()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((data, fut))
        self._wake.set()
        return await fut

    def _flush_proposals(self, core: RaftCore) -> None:
        batch, self._batch = self._batch, []
        batch = [(d, f) for d, f in batch if not f.done()]  # callers that gave up
        if not batch:
            return
        try:
            indexes = core.propose_many([d for d, _ in batch])
        except RaftError as exc:  # NotLeader / ProposalDropped: nothing was appended, callers may retry
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for index, (_, fut) in zip(indexes, batch, strict=True):
            self._proposals[index] = (core.term, fut)

    async def read_index(self) -> None:
        """Return once a read of the local FSM is linearizable (the leader confirmed it still leads)."""
        core = self._check_running()
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        core.read_index(ctx)
        self._reads[ctx] = fut
        self._wake.set()
        await fut

    async def add_voter(self, server_id: str, address: str) -> None:
        """Add a voter (or promote a non-voter); returns once the change is committed."""
        await self._conf_change(ConfChange(ConfChangeType.ADD_VOTER, server_id, address))

    async def add_nonvoter(self, server_id: str, address: str) -> None:
        """Add a non-voter: it receives the log but does not vote or count toward quorum."""
        await self._conf_change(ConfChange(ConfChangeType.ADD_LEARNER, server_id, address))

    async def remove_server(self, server_id: str) -> None:
        """Remove a voter or non-voter; a leader that removes itself steps down once it commits."""
        await self._conf_change(ConfChange(ConfChangeType.REMOVE, server_id))

    async def transfer_leadership(self, to: str | None = None, timeout: float | None = None) -> str:
        """Hand leadership to `to` (default: the most caught-up voter); returns the new leader's id."""
        core = self._check_running()
        if to is None:
            candidates = [(pr.match, sid) for sid, pr in core.prs.items()
                          if sid != self.id and sid in core.config.voters]
            if not candidates:
                raise RaftError("no other voter to transfer leadership to")
            to = max(candidates)[1]
        core.transfer_leadership(to)
        self._wake.set()
        limit = timeout if timeout is not None else 2 * self.options.election_ticks * self.options.tick_interval
        try:
            async with asyncio.timeout(limit):
                while self.leader_id in (self.id, ""):
                    self.leader_changed.clear()
                    await self.leader_changed.wait()
        except TimeoutError:
            raise RaftError(f"leadership transfer to {to!r} did not finish within {limit:.1f}s") from None
        return self.leader_id

    # ---- internals ---------------------------------------------------------------------------

    def _core(self) -> RaftCore:
        if self.core is None:
            raise RaftError("the raft server is not started")
        return self.core

    def _check_running(self) -> RaftCore:
        if self._stopped or self._fatal is not None:
            raise NodeStopped(f"raft server {self.id!r} is stopped" + (f": {self._fatal}" if self._fatal else ""))
        core = self._core()
        if not core.is_leader:
            raise NotLeader(core.lead, core.leader_addr)
        return core

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking storage call in an executor; shielded, so a cancelled caller never leaves a
        half-done write behind when stop() then closes the storage."""
        if self._sync_storage:
            return fn(*args)
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._io_future = fut
        return await asyncio.shield(fut)


    def _resolve(self, server_id: str) -> str | None:
        return self.core.config.address(server_id) if self.core else None

    def _on_message(self, msg: Message) -> None:
        core = self.core
        if core is None or self._stopped:
            return
        core.step(msg)
        now = asyncio.get_running_loop().time()
        self._heard[msg.frm] = now  # for the leader's view of its followers (autopilot's LastContact)
        if msg.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP) and core.lead == msg.frm:
            self._last_contact = now
        self._wake.set()

    def _maybe_campaign_alone(self) -> None:
        core = self.core
        if core is not None and core.config.voters.keys() == {self.id}:
            core.campaign()  # a single voter need not wait an election timeout (dev mode)
            self._wake.set()

    async def _wait_index(self, index: int, term: int) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (term, fut)
        self._wake.set()
        return await fut

    async def _conf_change(self, cc: ConfChange) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.conf_change_timeout
        while True:
            core = self._check_running()
            try:
                index = core.propose_conf_change(cc)
            except ConfChangeInProgress:
                # Wait for the previous change (or the new leader's first entry) to commit, then retry.
                if loop.time() > deadline:
                    raise
                self._applied_event.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await self._applied_event.wait()
                continue
            await self._wait_index(index, core.term)
            return

    async def _tick_loop(self) -> None:
        interval = self.options.tick_interval
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if self.core is not None:
                self.core.tick()
                self._wake.set()

    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.core is not None:
                    if self._batch:
                        self._flush_proposals(self.core)
                    if not self.core.has_ready():
                        break
                    await self._handle_ready(self.core, self.core.ready())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Storage failed or the core found a broken invariant: continuing could lose data.
            log.critical("raft server %s stopped: %s", self.id, exc, exc_info=True)
            self._fatal = exc
            self._fail_all(NodeStopped(f"raft server {self.id!r} hit a fatal error: {exc}"))

    async def _handle_ready(self, core: RaftCore, rd: Ready) -> None:
        # A leader replicates to its followers while it writes its own disk (Raft thesis §10.2.1; etcd
        # does the same): the core counts the leader's own entries toward a commit only once they are
        # persisted. Everything else — votes, append acks — leaves only after the fsync.
        early = bool(rd.messages) and self.transport is not None and core.is_leader
        if early:
            for m in rd.messages:
                if m.type in LEADER_EARLY:
                    self.transport.send(m)  # type: ignore[union-attr]
        if rd.must_sync:
            await self._io(self.storage.save, rd.hard_state, rd.entries, rd.snapshot)
        if self.transport is not None:
            for m in rd.messages:
                if not (early and m.type in LEADER_EARLY):
                    self.transport.send(m)
        if rd.snapshot is not None:
            log.info("raft server %s: installing a snapshot from the leader at index %d (term %d, %d bytes)",
                     self.id, rd.snapshot.index, rd.snapshot.term, len(rd.snapshot.data))
            self.fsm.restore(rd.snapshot.data)
            self._applied = self._snapshot_index = rd.snapshot.index
            for index in [i for i in self._proposals if i <= rd.snapshot.index]:
                _, fut = self._proposals.pop(index)
                if not fut.done():
                    fut.set_exception(LeadershipLost("the entry was superseded by a snapshot from the leader"))
        for e in rd.committed_entries:
            result: Any = None
            error: BaseException | None = None
            if e.type == EntryType.NORMAL:
                try:
                    result = self.fsm.apply(e.index, e.data)
                except Exception as exc:  # a deterministic refusal: every server raises the same
                    error = exc
            self._applied = e.index
            waiter = self._proposals.pop(e.index, None)
            if waiter is not None and not waiter[1].done():
                term, fut = waiter
                if term != e.term:
                    fut.set_exception(LeadershipLost(f"entry {e.index} was replaced by one from term {e.term}"))
                elif error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
        for rs in rd.read_states:
            self._read_waiting.append((rs.index, rs.context))
        for ctx in rd.dropped_reads:
            fut = self._reads.pop(ctx, None)
            if fut is not None and not fut.done():
                fut.set_exception(LeadershipLost("leadership was lost before the read was confirmed"))
        self._release_reads()
        if rd.soft_state is not None or core.term != self._term:
            self._on_soft_state(core)
        core.advance(rd)
        if rd.committed_entries or rd.snapshot is not None:
            self._applied_event.set()
            await self._maybe_snapshot(core)

    def _release_reads(self) -> None:
        if not self._read_waiting:
            return
        keep = []
        for index, ctx in self._read_waiting:
            if index <= self._applied:
                fut = self._reads.pop(ctx, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            else:
                keep.append((index, ctx))
        self._read_waiting = keep

    def _on_soft_state(self, core: RaftCore) -> None:
        self._term = core.term
        if core.role != Role.LEADER:
            # Proposals still waiting may yet commit under the next leader, but we cannot tell.
            for index in list(self._proposals):
                term, fut = self._proposals[index]
                if index > self._applied and not fut.done():
                    del self._proposals[index]
                    fut.set_exception(LeadershipLost(f"leadership lost while entry {index} (term {term}) was "
                                                     "uncommitted; it may or may not commit"))
        if core.lead != self._leader:
            self._leader = core.lead
            self.leader_changed.set()
            for cb in list(self._listeners):
                try:
                    cb(core.lead)
                except Exception:
                    log.exception("leader-change callback failed")

    async def _maybe_snapshot(self, core: RaftCore) -> None:
        if self._applied - self._snapshot_index < self.options.snapshot_threshold:
            return
        index = self._applied
        snap = core.create_snapshot(index, self.fsm.snapshot())
        await self._io(self.storage.save_snapshot, snap)
        self._snapshot_index = max(self._snapshot_index, snap.index)
        upto = min(snap.index - self.options.trailing_logs, core.log.stable_index, core.log.applied)
        if upto > core.log.offset and core.snapshot is not None and upto <= core.snapshot.index:
            core.compact(upto)
            await self._io(self.storage.compact, upto)

    def _fail_all(self, exc: BaseException) -> None:
        for _, fut in self._batch:
            if not fut.done():
                fut.set_exception(exc)
        self._batch.clear()
        for _, fut in self._proposals.values():
            if not fut.done():
                fut.set_exception(exc)
        self._proposals.clear()
        for fut in self._reads.values():
            if not fut.done():
                fut.set_exception(exc)
        self._reads.clear()
