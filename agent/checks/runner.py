"""What every check runner is: the Runner protocol, the factory signature, and the task/interval bases.

A runner produces raw results and hands them to a sink; the CheckManager owns runners and filters their
results. Runner modules import this module, never the manager, so the manager can be given its kinds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from proconsul.agent.config.duration import format_duration
from proconsul.catalog.store import CRITICAL, PASSING

log = logging.getLogger("proconsul.checks")
DEFAULT_OUTPUT_MAX = 4096  # Consul's checks.DefaultBufSize
DEFAULT_TIMEOUT = 10.0  # Consul's default probe timeout (script checks: 30 s)
FIRST_RUN_SPREAD = 2.0  # seconds over which the first probes of new checks are spread
EARLY_RETRY = 1.0  # seconds between probes of a new check that has not passed yet (within its first interval)

ResultSink = Callable[[str, str, str], None]  # (check id, status, output)


class Runner(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class RunnerHost(Protocol):
    """What a runner may use of the manager that owns it."""

    context: dict[str, Any]  # shared services (e.g. the agent, for alias checks)
    closers: list[Callable[[], Awaitable[None]]]  # shared resources to close at shutdown


# kind -> factory(check_id, definition, sink, rng, host) -> Runner
RunnerFactory = Callable[[str, dict[str, Any], ResultSink, random.Random, RunnerHost], Runner]


def truncate_output(output: str, limit: int) -> str:
    """Consul's cut for outputs reported through the API (TTL updates): the head, and a note."""
    if len(output) <= limit:
        return output
    return f"{output[:limit]} ... (captured {limit} of {len(output)} bytes)"


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
        # Spread first runs so an agent restart does not probe everything at once — over at most
        # FIRST_RUN_SPREAD seconds (Consul spreads over a whole interval: a new 10s check would then
        # stay critical for up to 10 s, holding a fresh sidecar out of `?passing` answers).
        await asyncio.sleep(self._rng.random() * min(self.interval, FIRST_RUN_SPREAD))
        loop = asyncio.get_running_loop()
        started, passed = loop.time(), False
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
            passed = passed or status == PASSING
            # Until its first pass, and only within its first interval, a new check probes every
            # second: a service (or sidecar) that comes up just after registering is seen at once,
            # not an interval later; one that stays down is then probed at the normal pace.
            early = not passed and loop.time() - started < self.interval
            await asyncio.sleep(min(EARLY_RETRY, self.interval) if early else self.interval)

    async def probe(self) -> tuple[str, str]:
        raise NotImplementedError
