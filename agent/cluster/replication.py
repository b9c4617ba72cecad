"""Replication from the primary datacenter: what it owns, copied into a secondary by its leader.

A secondary's leader runs one `TableReplicator` per replicated table (config entries — intentions
included, as `service-intentions` entries; with ACLs, policies, roles and, with
`acl.enable_token_replication`, the global tokens, as Consul's ACL replication does, with the
`acl.tokens.replication` token). Each holds a blocking query open against the primary
(through the router) and, on every answer, applies the difference to the local table through Raft:
rows that are new or changed are set, rows the primary no longer has are deleted. A cut WAN only
delays it: the loop backs off, retries, and catches up from the primary's current state. Followers
and lost leaders stop; the next leader starts from scratch (one full compare).

`plan_table` is the pure part: given both sides, the commands that make ours equal theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from proconsul.catalog import commands as c

log = logging.getLogger("proconsul.replication")

INDEX_FIELDS = ("CreateIndex", "ModifyIndex")
REPLICATION_WAIT = 300.0
BACKOFF_MIN, BACKOFF_MAX = 0.25, 5.0


def _content(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in INDEX_FIELDS}


def plan_table(table: str, local: list[dict[str, Any]], remote: list[dict[str, Any]],
               key: Callable[[dict[str, Any]], str]) -> list[c.Command]:
    """The commands that make the local `table` hold exactly the remote rows (indexes aside)."""
    mine = {key(r): _content(r) for r in local}
    theirs = {key(r): _content(r) for r in remote}
    cmds: list[c.Command] = []
    for k in sorted(theirs):
        if mine.get(k) != theirs[k]:
            cmds.append(c.TableSet(table=table, key=k, row=theirs[k], validate=False))  # the primary checked it
    for k in sorted(set(mine) - set(theirs)):
        cmds.append(c.TableDelete(table=table, key=k, validate=False))
    return cmds


@dataclass
class ReplicationStatus:
    """What `/v1/operator/federation` shows for one replicator."""

    name: str
    source: str
    running: bool = False
    index: int = 0  # the primary's index we are caught up with
    last_success: float = 0.0  # wall-clock time of the last applied (or confirmed unchanged) answer
    last_error: str = ""
    last_error_at: float = 0.0
    applied: int = 0  # commands applied since this server started replicating

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "SourceDatacenter": self.source, "Running": self.running,
                "ReplicatedIndex": self.index, "LastSuccess": self.last_success, "LastError": self.last_error,
                "LastErrorAt": self.last_error_at, "Applied": self.applied}


class TableReplicator:
    def __init__(self, name: str, primary: str, table: str, query: str, args: dict[str, Any],
                 key: Callable[[dict[str, Any]], str], *, is_leader: Callable[[], bool], leading: asyncio.Event,
                 forward_dc: Callable[..., Awaitable[Any]], apply: Callable[[c.Command], Awaitable[Any]],
                 local_rows: Callable[[str], list[dict[str, Any]]], rng: random.Random | None = None,
                 select: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.status = ReplicationStatus(name, primary)
        self.select = select  # the rows this replicator owns, on both sides (ACL tokens: the global ones)
        self.primary = primary
        self.table = table
        self.query = query
        self.args = args
        self.key = key
        self.is_leader = is_leader
        self.leading = leading
        self.forward_dc = forward_dc
        self.apply = apply
        self.local_rows = local_rows
        self.rng = rng or random.Random()
        self.wait = REPLICATION_WAIT

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.is_leader():
                self.status.running = False
                await _either(self.leading, stop)
                continue
            self.status.running = True
            log.info("replication of %s from %s started", self.status.name, self.primary)
            await self._lead(stop)

    async def _lead(self, stop: asyncio.Event) -> None:
        index, backoff = 0, BACKOFF_MIN
        while not stop.is_set() and self.is_leader():
            try:
                answer = await self._fetch(index, stop)
                if answer is None:
                    return
                new_index, rows = answer
                if not self.is_leader():
                    return
                local = self.local_rows(self.table)
                if self.select is not None:
                    local, rows = [r for r in local if self.select(r)], [r for r in rows if self.select(r)]
                cmds = plan_table(self.table, local, rows, self.key)
                if cmds:
                    await self.apply(c.Batch(commands=cmds))
                    self.status.applied += len(cmds)
                    log.info("replication of %s: applied %d change(s) from %s at index %d", self.status.name,
                             len(cmds), self.primary, new_index)
                # An index that went backwards means the primary was restored or rebuilt: start over.
                index = new_index if new_index >= index else 0
                self.status.index = new_index
                self.status.last_success = time.time()
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.status.last_error, self.status.last_error_at = str(e) or type(e).__name__, time.time()
                log.warning("replication of %s from %s failed: %s; retrying in %.1fs", self.status.name,
                            self.primary, self.status.last_error, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)
        self.status.running = False

    async def _fetch(self, index: int, stop: asyncio.Event) -> tuple[int, list[dict[str, Any]]] | None:
        result = await query_primary(self.forward_dc, self.primary, self.query, self.args, index, self.wait, stop)
        return None if result is None else (result[0], list(result[1]))


async def query_primary(forward_dc: Callable[..., Awaitable[Any]], primary: str, query: str, args: dict[str, Any],
                        index: int, wait: float, stop: asyncio.Event) -> tuple[int, Any] | None:
    """A blocking query on the primary's leader (through the router): (index, result), or None when
    `stop` is set first (the call is then abandoned)."""
    call = asyncio.ensure_future(forward_dc(
        primary, "catalog.query", {"name": query, "args": args, "index": index, "wait": wait, "mode": "leader"},
        timeout=wait * 17 / 16 + 30.0, idempotent=True))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({call, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if call not in done:
        call.cancel()
        return None
    result = call.result()
    return int(result[0]), result[1]


async def _either(event: asyncio.Event, stop: asyncio.Event) -> None:
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
