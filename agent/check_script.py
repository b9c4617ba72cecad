"""Script checks: run `args`; exit 0 passing, 1 warning, anything else critical.

Only with enable_script_checks. A script that outlives its timeout is killed with its whole
process group. At most MAX_CONCURRENT scripts run at once per agent, so a thousand slow scripts
cannot exhaust the machine; output (stdout and stderr) is cut to OutputMaxSize (4 KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from typing import Any

from proconsul.catalog.store import CRITICAL, PASSING, WARNING

from .checks import RUNNERS, CheckManager, IntervalRunner, ResultSink

MAX_CONCURRENT = 8
DEFAULT_TIMEOUT = 30.0


class ScriptRunner(IntervalRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: CheckManager) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.args = list(defn["Args"])
        self.timeout = float(defn.get("TimeoutSeconds") or DEFAULT_TIMEOUT)
        self.output_max = int(defn.get("OutputMaxSize") or 4096)
        sem = manager.context.get("script_slots")
        if sem is None:
            sem = manager.context["script_slots"] = asyncio.Semaphore(MAX_CONCURRENT)
        self.slots: asyncio.Semaphore = sem

    async def probe(self) -> tuple[str, str]:
        async with self.slots:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                return CRITICAL, f"cannot run {self.args[0]!r}: {e.strerror or e}"
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                return CRITICAL, f"Timed out ({self.timeout:g}s) running check"
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise
        text = out[: self.output_max].decode(errors="replace")
        if proc.returncode == 0:
            return PASSING, text
        if proc.returncode == 1:
            return WARNING, text
        return CRITICAL, text

    async def _loop(self) -> None:
        await asyncio.sleep(self._rng.random() * self.interval)
        while True:
            try:
                status, output = await self.probe()  # the script's own timeout bounds it
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a probe bug must not kill the runner
                status, output = CRITICAL, f"check failed: {e}"
            self._sink(self.check_id, status, output)
            await asyncio.sleep(self.interval)


RUNNERS["script"] = ScriptRunner
