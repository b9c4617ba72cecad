"""TTL checks: the application reports its own status before the TTL runs out."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from proconsul.agent.checks.runner import DEFAULT_OUTPUT_MAX, ResultSink, RunnerHost, truncate_output
from proconsul.catalog.store import CRITICAL

log = logging.getLogger("proconsul.checks")


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


def ttl_runner(check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
               host: RunnerHost) -> TTLRunner:
    return TTLRunner(check_id, defn, sink)
