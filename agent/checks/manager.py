"""Check runners: one asyncio task (or timer) per check, owned by a CheckManager.

A runner produces results; the manager passes them through the check's status filter
(success_before_passing / failures_before_warning / failures_before_critical) and records them in
the local state, which syncs them to the catalog. Runners are cancelled cleanly on deregister or
reload. The kinds of check (kind → runner factory) are given to the manager by its owner
(`checks/kinds.py` has the standard set), so the manager never imports its runners.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from proconsul.agent.checks.runner import ResultSink, Runner, RunnerFactory
from proconsul.catalog.store import CRITICAL, PASSING, WARNING

log = logging.getLogger("proconsul.checks")


class StatusFilter:
    """Consul's StatusHandler: success_before_passing / failures_before_warning / failures_before_critical.

    Warning counts as a success, as in Consul. The counters start at their thresholds, so the first
    result after (re)registration is recorded as it is; after that a status must repeat enough times in a
    row. A result held back by a threshold records nothing, not even its output.
    """

    def __init__(self, defn: dict[str, Any]) -> None:
        self.success_before_passing = int(defn.get("SuccessBeforePassing") or 0)
        self.failures_before_critical = int(defn.get("FailuresBeforeCritical") or 0)
        # Consul: FailuresBeforeWarning defaults to FailuresBeforeCritical.
        self.failures_before_warning = int(defn.get("FailuresBeforeWarning") or self.failures_before_critical)
        self.successes = self.success_before_passing
        self.failures = self.failures_before_critical

    def feed(self, status: str) -> str | None:
        """The status to record after one raw result, or None to record nothing."""
        if status in (PASSING, WARNING):
            self.successes += 1
            self.failures = 0
            return status if self.successes >= self.success_before_passing else None
        self.successes = 0
        self.failures += 1
        if self.failures >= self.failures_before_critical:
            return CRITICAL
        if self.failures >= self.failures_before_warning:
            return WARNING
        return None


class CheckManager:
    def __init__(self, sink: ResultSink, kinds: Mapping[str, RunnerFactory],
                 rng: random.Random | None = None) -> None:
        self._sink = sink
        self._kinds = dict(kinds)
        self._rng = rng or random.Random()
        self._runners: dict[str, Runner] = {}
        self._filters: dict[str, StatusFilter] = {}
        self.context: dict[str, Any] = {}  # shared services for runners (e.g. the agent, for alias checks)
        self.closers: list[Callable[[], Awaitable[None]]] = []  # shared resources to close at shutdown

    def start(self, check_id: str, defn: dict[str, Any], initial_status: str = "") -> None:
        """(Re)start the runner for a check; kinds without a runner (maintenance) get none."""
        self.stop(check_id)
        factory = self._kinds.get(defn.get("Kind", ""))
        if factory is None:
            return
        self._filters[check_id] = StatusFilter(defn)
        runner = factory(check_id, defn, self._result, self._rng, self)
        self._runners[check_id] = runner
        runner.start()

    def stop(self, check_id: str) -> None:
        runner = self._runners.pop(check_id, None)
        self._filters.pop(check_id, None)
        if runner is not None:
            runner.stop()

    def stop_all(self) -> None:
        for cid in list(self._runners):
            self.stop(cid)

    async def close(self) -> None:
        """Stop every runner and close shared resources (the HTTP checks' connection pool)."""
        self.stop_all()
        closers, self.closers = self.closers, []
        for close in closers:
            await close()

    def runner(self, check_id: str) -> Runner | None:
        return self._runners.get(check_id)

    def _result(self, check_id: str, status: str, output: str) -> None:
        f = self._filters.get(check_id)
        if f is None:
            return
        if not getattr(self._runners.get(check_id), "uses_thresholds", True):
            self._sink(check_id, status, output)  # TTL expiry and aliases bypass the thresholds, as in Consul
            return
        recorded = f.feed(status)
        if recorded is not None:
            self._sink(check_id, recorded, output)

    @property
    def running(self) -> int:
        return len(self._runners)
