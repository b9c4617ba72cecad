"""Alias checks: mirror the health of another service instance or of a node, as Consul's CheckAlias.

- `AliasService` alone: a service on this agent. The alias follows the agent's local state and
  changes as soon as the aliased checks do (re-checked at least once a minute regardless).
- `AliasNode` (with or without `AliasService`): follows that node's checks in the catalog with
  blocking queries, backing off while the servers cannot answer.

The verdict is Consul's: the aliased service's checks *and* its node's node-level checks count;
any critical one makes the alias critical, else any warning makes it warning, else passing ("No
checks found." when there are none); an aliased service that does not exist, or an aliased node
without node-level checks (or absent), is critical.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from proconsul.agent.checks.runner import ResultSink, RunnerHost, TaskRunner
from proconsul.catalog.store import CRITICAL, PASSING, WARNING

log = logging.getLogger("proconsul.checks")
WAIT = 60.0  # blocking-query wait, and the local mode's refresh period (Consul's maxDurationBetweenUpdates)
BACKOFF_AFTER = 3  # failed attempts before backing off (Consul's checkAliasBackoffMin)
BACKOFF_MAX = 60.0


def alias_verdict(check_id: str, service: str, node: str, checks: Iterable[dict[str, Any]],
                  service_exists: Callable[[], bool]) -> tuple[str, str]:
    """(status, output) for an alias of `service` (or of the node when empty) over `checks`."""
    health, msg, found = PASSING, "No checks found.", False
    for chk in checks:
        if chk["CheckID"] == check_id:
            continue  # never mirror ourselves
        if node and chk.get("Node", "").lower() != node.lower():
            continue
        sid = chk.get("ServiceID") or ""
        match = sid == service
        if sid and not match:
            continue
        found = found or match
        if chk["Status"] in (CRITICAL, WARNING):
            health = chk["Status"]
            msg = f"Aliased check {chk['Name']!r} failing: {chk.get('Output', '')}"
            if health == CRITICAL:
                break
        elif health == PASSING:
            msg = "All checks passing."
    if not found and not service:  # Consul: a node alias needs at least one node-level check
        return CRITICAL, f"Node {node} could not be found or has no node-level checks"
    if not found and not service_exists():
        return CRITICAL, f"Service {service} could not be found on node {node}"
    return health, msg


class AliasRunner(TaskRunner):
    uses_thresholds = False  # Consul's alias checks report straight to the local state

    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, sink, rng)
        self.agent = manager.context["agent"]
        self.service = defn.get("AliasService") or ""
        self.node = defn.get("AliasNode") or ""
        self._last: tuple[str, str] | None = None

    def _report(self, result: tuple[str, str]) -> None:
        if result != self._last:
            self._last = result
            self._sink(self.check_id, *result)

    async def _loop(self) -> None:
        if self.node:
            await self._follow_catalog()
        else:
            await self._follow_local()

    async def _follow_local(self) -> None:
        local = self.agent.local
        me = self.agent.config.node_name
        while True:
            checks = list(local.checks().values())
            self._report(alias_verdict(self.check_id, self.service, me, checks,
                                       lambda: local.service(self.service) is not None))
            await local.wait_changed(WAIT)

    async def _follow_catalog(self) -> None:
        backend = self.agent.backend
        index, attempt = 0, 0
        while True:
            if attempt > BACKOFF_AFTER:
                await asyncio.sleep(min(BACKOFF_MAX, 2.0 ** (attempt - BACKOFF_AFTER)))
            try:
                index, checks = await backend.query("health.node", {"node": self.node}, index, WAIT)
                exists = await self._service_exists() if self.service and not any(
                    c.get("ServiceID") == self.service for c in checks) else True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a server hiccup: report it (after the first miss) and retry
                attempt += 1
                log.warning("alias check %s: %s", self.check_id, e)
                if attempt > 1:
                    self._report((CRITICAL, f"Failure checking aliased node or service: {e}"))
                index = 0
                await asyncio.sleep(0.5 + self._rng.random())
                continue
            attempt = 0
            index = max(index, 1)  # always block on the next round: never a hot loop
            self._report(alias_verdict(self.check_id, self.service, self.node, checks, lambda e=exists: e))

    async def _service_exists(self) -> bool:
        _, ns = await self.agent.backend.query("catalog.node_services", {"node": self.node})
        return bool(ns) and any(s["ID"] == self.service for s in ns["Services"])


