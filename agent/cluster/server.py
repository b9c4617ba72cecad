"""The server role: the state store as a replicated state machine, blocking reads, leader duties.

Writes go through a `Replicator` (a single-node log in dev mode today; Raft in a cluster), which
hands committed commands to the store's `apply`. Reads run named queries (catalog/queries.py) against
the local store and block, without polling, until the answer's index passes the caller's.
Leader-only work — session TTLs, tombstone reaping — happens by proposing commands, with times
stamped here so that `apply` stays deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgpack

from proconsul.agent.cluster.caller import mark_filtered
from proconsul.agent.cluster.rpc import NoLeader, RPCNotSent, RPCUnavailable
from proconsul.agent.cluster.watch import ChangeNotifier
from proconsul.catalog import commands as c
from proconsul.catalog.errors import CatalogError
from proconsul.catalog.queries import get_query
from proconsul.catalog.store import StateStore
from proconsul.consensus.errors import NotLeader, ProposalDropped

log = logging.getLogger("proconsul.server")

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
SESSION_TTL_MULTIPLIER = 2.0  # Consul invalidates a session after twice its TTL without renewal
TOMBSTONE_TTL = 15 * 60.0
ENCODED_CACHE_SIZE = 1024


class NotLeaderError(Exception):
    """A write reached a server that is not the leader and could not be forwarded."""


LEADER_HOLD = 7.0  # how long a call waits for a leader to appear (Consul's rpc_hold_timeout)
Forward = Callable[..., Awaitable[Any]]
# Failures after which a call is safe to try again: nothing was proposed (or it is a read).
_RETRY: tuple[type[BaseException], ...] = (NotLeader, ProposalDropped, NoLeader, RPCNotSent)
_RETRY_IDEMPOTENT = (*_RETRY, RPCUnavailable)


class Replicator(Protocol):
    """What the server role needs of its log: Raft in a cluster, a local counter in dev mode."""

    async def propose(self, cmd: c.Command) -> Any: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str: ...

    def peers(self) -> list[str]: ...

    def last_contact(self) -> float: ...


class LocalReplicator:
    """A single-voter log kept in memory: commits at once. The dev agent's replicator."""

    def __init__(self, store: StateStore, address: str) -> None:
        self._store = store
        self._address = address
        self._index = store.last_index

    async def propose(self, cmd: c.Command) -> Any:
        # Round-trip through the wire encoding so dev mode exercises the same bytes Raft carries.
        self._index = max(self._index, self._store.last_index) + 1
        return self._store.apply_bytes(self._index, c.encode(cmd))

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader(self) -> str:
        return self._address

    def peers(self) -> list[str]:
        return [self._address]

    def last_contact(self) -> float:
        return 0.0


class StartingReplicator:
    """The replicator before Raft has started: no leader, no writes (calls wait, then fail)."""

    async def propose(self, cmd: c.Command) -> Any:
        raise NotLeader()

    @property
    def is_leader(self) -> bool:
        return False

    @property
    def leader(self) -> str:
        return ""

    def peers(self) -> list[str]:
        return []

    def last_contact(self) -> float:
        return 0.0


class ServerRole:
    """One server's view of the catalog, with the leader duties that keep it tidy."""

    def __init__(self, store: StateStore, replicator: Replicator | None = None, *,
                 address: str = "127.0.0.1:8300", rng: random.Random | None = None) -> None:
        self.store = store
        self.notifier = ChangeNotifier()
        store.subscribe(self.notifier.on_change)
        self.replicator: Replicator = replicator or LocalReplicator(store, address)
        self.forward: Forward | None = None  # (leader address, method, args) -> result; set by the cluster
        self._rng = rng or random.Random()
        self._session_timers: dict[str, asyncio.TimerHandle] = {}
        self._index_times: deque[tuple[float, int]] = deque(maxlen=4096)
        self._encoded: OrderedDict[tuple[str, bytes], tuple[int, int, bytes]] = OrderedDict()
        # (command kind, milliseconds to commit) after each write this server led: the agent's metrics.
        self.observe: Callable[[str, float], None] | None = None

    # ------------------------------------------------------------------ writes
    async def apply(self, cmd: c.Command) -> Any:
        """Replicate a command and return the FSM's result; on a follower, forward it to the leader,
        which stamps its time into the command (so `apply` is deterministic on every server)."""

        async def here() -> Any:
            stamped = c.stamp(cmd, time.time())
            started = time.perf_counter()
            result = await self.replicator.propose(stamped)
            if self.observe is not None:
                self.observe(type(cmd).__name__, (time.perf_counter() - started) * 1000.0)
            if isinstance(result, CatalogError):
                raise result
            return result

        return await self.on_leader(here, "catalog.apply", lambda: {"cmd": c.encode(cmd)})

    async def on_leader(self, here: Callable[[], Awaitable[Any]], method: str,
                        args: dict[str, Any] | Callable[[], dict[str, Any]], timeout: float | None = None,
                        idempotent: bool = False) -> Any:
        """Run `here()` if this server leads, else forward `method(args)` to the leader over RPC
        (`args` may be a function that builds them, so the leader never encodes what it won't send).

        While there is no leader (an election), or leadership moves under the call, retry for up
        to LEADER_HOLD seconds, then fail with "No cluster leader". A write whose outcome is
        unknown (leadership lost after it was appended, or the connection to the leader broke
        after the call was sent) is not retried — a second copy could apply twice — and the caller
        hears so; reads (`idempotent`) are retried.
        """
        if self.replicator.is_leader:  # the common case on the leader: no retry bookkeeping
            try:
                return await here()
            except (NotLeader, ProposalDropped):
                pass  # leadership moved between the check and the proposal: take the slow path
        retry = _RETRY_IDEMPOTENT if idempotent else _RETRY
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_HOLD
        while True:
            rep = self.replicator
            try:
                if rep.is_leader:
                    return await here()
                if rep.leader and self.forward is not None:
                    if callable(args):
                        args = args()
                    return await self.forward(rep.leader, method, args, timeout)
            except retry as e:
                log.debug("%s: leader moved or unreachable (%s); retrying", method, e)
            if loop.time() >= deadline:
                raise NotLeaderError("No cluster leader")
            await asyncio.sleep(0.05 + self._rng.random() * 0.05)

    # ------------------------------------------------------------------ reads
    def serves_locally(self, mode: str) -> bool:
        """Whether a read in this consistency mode may be answered from this server's store as is."""
        return mode == "stale" or (mode == "leader" and self.replicator.is_leader)

    async def query(self, name: str, args: dict[str, Any], min_index: int = 0,
                    wait: float = DEFAULT_WAIT, mode: str = "leader") -> tuple[int, Any]:
        """Run a named query; with `min_index`, block until its index passes it or `wait` ends.

        `mode` is the consistency mode: "leader" (default: the leader answers; a follower forwards),
        "stale" (any server answers from its own store), "consistent" (the leader confirms it still
        leads with a ReadIndex round first).
        """
        if self.serves_locally(mode):
            return await self._query_here(name, args, min_index, wait)

        async def here() -> tuple[int, Any]:
            if mode == "consistent":
                read_index = getattr(self.replicator, "read_index", None)
                if read_index is not None:
                    await read_index()
            return await self._query_here(name, args, min_index, wait)

        result = await self.on_leader(here, "catalog.query", {"name": name, "args": args, "index": min_index,
                                                               "wait": wait, "mode": mode},
                                      timeout=min(wait, MAX_WAIT) + 30.0, idempotent=True)
        mark_filtered(len(result) > 4 and bool(result[4]))  # the leader cut the answer to the caller's token
        return result[0], result[1]

    async def _query_here(self, name: str, args: dict[str, Any], min_index: int, wait: float) -> tuple[int, Any]:
        q = get_query(name)
        if min_index <= 0:
            return q.run(self.store, args)
        deadline = asyncio.get_running_loop().time() + min(wait, MAX_WAIT)
        await self._tables_past(q, args, min_index, deadline)
        idx, result = q.run(self.store, args)
        kv_key = args.get(q.kv_arg) if q.kv_arg else None
        while idx <= min_index:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await self.notifier.wait(q.tables, remaining, kv_key=kv_key, kv_prefix=q.kv_prefix)
            idx, result = q.run(self.store, args)
        return idx, result

    async def _tables_past(self, q: Any, args: dict[str, Any], min_index: int, deadline: float) -> None:
        """Wait, without running the query, until one of its tables moves past `min_index` (or the deadline):
        a query's index never exceeds its tables', so a waiting client costs no computation — which matters
        for big aggregates such as the UI's services summary."""
        kv_key = args.get(q.kv_arg) if q.kv_arg else None
        while self.store.table_index(*q.tables) <= min_index:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self.notifier.wait(q.tables, remaining, kv_key=kv_key, kv_prefix=q.kv_prefix)

    async def query_encoded(self, name: str, args: dict[str, Any], encode: Callable[[Any], bytes],
                            min_index: int = 0, wait: float = DEFAULT_WAIT, mode: str = "leader"
                            ) -> tuple[int, Any, bytes]:
        """Like `query`, but also returns the encoded body, cached until the query's tables change.

        The cache is keyed by query and arguments and is valid while the highest index of the tables
        the query reads is the one it was computed at, so a hit can never be stale.
        """
        if not self.serves_locally(mode):
            idx, result = await self.query(name, args, min_index, wait, mode)
            return idx, result, encode(result)
        q = get_query(name)
        key = (name, _args_key(args))
        if min_index > 0:  # blocking: wait for a change first, so every waiter woken by it shares one encoding
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(wait, MAX_WAIT)
            await self._tables_past(q, args, min_index, deadline)
            wait = max(0.0, deadline - loop.time())
        hit = self._encoded.get(key)
        timed_out = min_index > 0 and wait <= 0  # then an unchanged answer at min_index is the answer, as Consul's
        if hit is not None and hit[0] == self.store.table_index(*q.tables) and (
                hit[1] > min_index or (timed_out and hit[1] == min_index)):
            self._encoded.move_to_end(key)
            return hit[1], None, hit[2]
        idx, result = await self.query(name, args, min_index, wait, mode)
        body = encode(result)
        self._encoded[key] = (self.store.table_index(*q.tables), idx, body)
        if len(self._encoded) > ENCODED_CACHE_SIZE:
            self._encoded.popitem(last=False)
        return idx, result, body

    # ------------------------------------------------------------------ sessions (leader duty)
    # Session TTL timers live on the leader, so these three run there (forwarded from followers).
    async def session_create(self, session: dict[str, Any]) -> str:
        async def here() -> str:
            sid = session.get("ID") or _uuid(self._rng)
            result = await self.apply(c.SessionCreate(session=dict(session, ID=sid)))
            self._arm_session_timer(sid, session.get("TTL") or "")
            return result

        return await self.on_leader(here, "session.create", {"session": session})

    async def session_destroy(self, sid: str) -> bool:
        async def here() -> bool:
            self._disarm_session_timer(sid)
            return await self.apply(c.SessionDestroy(id=sid))

        return await self.on_leader(here, "session.destroy", {"id": sid})

    async def session_renew(self, sid: str) -> dict[str, Any] | None:
        """Reset a session's TTL timer; None when there is no such session."""

        async def here() -> dict[str, Any] | None:
            _, sess = self.store.session_get(sid)
            if sess is None:
                return None
            self._arm_session_timer(sid, sess.get("TTL") or "")
            return sess

        return await self.on_leader(here, "session.renew", {"id": sid})

    def _arm_session_timer(self, sid: str, ttl: str) -> None:
        from proconsul.agent.config.duration import parse_duration

        self._disarm_session_timer(sid)
        if not ttl:
            return
        seconds = parse_duration(ttl) * SESSION_TTL_MULTIPLIER
        loop = asyncio.get_running_loop()
        self._session_timers[sid] = loop.call_later(seconds, self._session_expired, sid)

    def _disarm_session_timer(self, sid: str) -> None:
        handle = self._session_timers.pop(sid, None)
        if handle is not None:
            handle.cancel()

    def _session_expired(self, sid: str) -> None:
        self._session_timers.pop(sid, None)
        log.info("session %s expired: TTL passed without renewal, invalidating it", sid)
        task = asyncio.get_running_loop().create_task(self.apply(c.SessionDestroy(id=sid)))
        task.add_done_callback(_log_task_error)

    def disarm_sessions(self) -> None:
        """On losing leadership: the new leader owns the timers now."""
        for sid in list(self._session_timers):
            self._disarm_session_timer(sid)

    def rearm_sessions(self) -> None:
        """On becoming leader: every session with a TTL gets a fresh full timer (as Consul does)."""
        _, sessions = self.store.session_list()
        for sess in sessions:
            self._arm_session_timer(sess["ID"], sess.get("TTL") or "")

    # ------------------------------------------------------------------ tombstones (leader duty)
    async def reap_tombstones(self, now: float | None = None) -> int:
        """Drop KV tombstones older than TOMBSTONE_TTL; called periodically on the leader."""
        now = time.time() if now is None else now
        self._index_times.append((now, self.store.last_index))
        cutoff = 0
        for t, idx in self._index_times:
            if now - t >= TOMBSTONE_TTL:
                cutoff = idx
        if cutoff <= 0:
            return 0
        return await self.apply(c.TombstoneReap(index=cutoff))

    async def run_leader_duties(self, stop: asyncio.Event, period: float = 60.0) -> None:
        while not stop.is_set():
            if self.replicator.is_leader:
                try:
                    await self.reap_tombstones()
                except Exception:  # keep the loop alive; the next round retries
                    log.exception("tombstone reaping failed")
            try:
                await asyncio.wait_for(stop.wait(), period)
            except TimeoutError:
                pass


def _args_key(args: dict[str, Any]) -> bytes:
    return msgpack.packb(sorted(args.items()), use_bin_type=True)


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background write failed: %s", task.exception())
