"""Check runners: one asyncio task (or timer) per check, owned by a CheckManager.

A runner produces results; the manager passes them through the check's status filter
(success_before_passing / failures_before_warning / failures_before_critical) and records them in
the local state, which syncs them to the catalog. Runners are cancelled cleanly on deregister or
reload. Kinds with their own module register themselves in RUNNERS.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from proconsul.catalog.store import CRITICAL, PASSING, WARNING

from .duration import format_duration

log = logging.getLogger("proconsul.checks")
DEFAULT_OUTPUT_MAX = 4096  # Consul's checks.DefaultBufSize
DEFAULT_TIMEOUT = 10.0  # Consul's default probe timeout (script checks: 30 s)

ResultSink = Callable[[str, str, str], None]  # (check id, status, output)


class Runner(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


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


def truncate_output(output: str, limit: int) -> str:
    """Consul's cut for outputs reported through the API (TTL updates): the head, and a note."""
    if len(output) <= limit:
        return output
    return f"{output[:limit]} ... (captured {limit} of {len(output)} bytes)"


class TTLRunner:
    """Critical with "TTL expired" unless updated within TTL; every update re-arms the timer."""

    uses_thresholds = False  # Consul's TTL checks report straight to the local state

    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink) -> None:
        self.check_id = check_id
        self.ttl = float(defn["TTLSeconds"])
        self.output_max = int(defn.get("OutputMaxSize") or DEFAULT_OUTPUT_MAX)
        self._sink = sink
        self._timer: asyncio.TimerHandle | None = None
        self.last_output = ""

    def start(self) -> None:
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.ttl, self._expired)

    def _expired(self) -> None:
        self._timer = None
        log.info("check %s: TTL of %ss expired without an update, marking critical", self.check_id, self.ttl)
        output = "TTL expired"
        if self.last_output:
            output += f" (last output before timeout follows): {self.last_output}"
        self._sink(self.check_id, CRITICAL, output)

    def set_status(self, status: str, output: str) -> str:
        """An update from the application: re-arm the timer; returns the (possibly truncated) output."""
        output = truncate_output(output, self.output_max)
        self.last_output = output
        self._arm()
        return output

    def touch(self) -> None:
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class TaskRunner:
    """Base for runners that are one asyncio task (`_loop`), cancelled on stop."""

    uses_thresholds = True  # results pass through the check's StatusFilter

    def __init__(self, check_id: str, sink: ResultSink, rng: random.Random) -> None:
        self.check_id = check_id
        self._sink = sink
        self._rng = rng
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"check:{self.check_id}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        raise NotImplementedError


class IntervalRunner(TaskRunner):
    """Base for checks that probe on an interval: jittered first run, never two probes at once.

    As in Consul, the next probe starts `interval` after the previous one finished, and a probe that
    outlives its timeout is abandoned and reported critical, so a hanging target delays only itself.
    """

    default_timeout = DEFAULT_TIMEOUT

    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random) -> None:
        super().__init__(check_id, sink, rng)
        self.defn = defn
        self.interval = float(defn["IntervalSeconds"])
        self.timeout = float(defn.get("TimeoutSeconds") or self.default_timeout)

    async def _loop(self) -> None:
        await asyncio.sleep(self._rng.random() * self.interval)  # spread first runs over one interval
        while True:
            try:
                # The probe bounds itself by `timeout`; this is the backstop if it does not.
                async with asyncio.timeout(self.timeout + 1.0):
                    status, output = await self.probe()
            except TimeoutError:
                status, output = CRITICAL, f"Timed out ({format_duration(self.timeout)}) running check"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a probe bug must not kill the runner
                log.exception("check %s: probe failed", self.check_id)
                status, output = CRITICAL, f"check failed: {e}"
            self._sink(self.check_id, status, output)
            await asyncio.sleep(self.interval)

    async def probe(self) -> tuple[str, str]:
        raise NotImplementedError


# kind -> factory(check_id, definition, sink, rng, manager) -> Runner. Modules for other kinds add theirs.
RunnerFactory = Callable[[str, dict[str, Any], ResultSink, random.Random, "CheckManager"], Runner]
RUNNERS: dict[str, RunnerFactory] = {
    "ttl": lambda cid, d, sink, rng, mgr: TTLRunner(cid, d, sink),
}


class CheckManager:
    def __init__(self, sink: ResultSink, rng: random.Random | None = None) -> None:
        self._sink = sink
        self._rng = rng or random.Random()
        self._runners: dict[str, Runner] = {}
        self._filters: dict[str, StatusFilter] = {}
        self.context: dict[str, Any] = {}  # shared services for runners (e.g. the agent, for alias checks)
        self.closers: list[Callable[[], Awaitable[None]]] = []  # shared resources to close at shutdown

    def start(self, check_id: str, defn: dict[str, Any], initial_status: str = "") -> None:
        """(Re)start the runner for a check; kinds without a runner (maintenance) get none."""
        self.stop(check_id)
        factory = RUNNERS.get(defn.get("Kind", ""))
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


def _load_kinds() -> None:
    """Import the modules that register the other kinds of check in RUNNERS."""
    from . import check_alias, check_h2, check_http, check_net, check_script  # noqa: F401


_load_kinds()
