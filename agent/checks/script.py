"""Script checks: run `args`; exit 0 passing, 1 warning, anything else critical.

Only with enable_script_checks (or, for checks from config files, enable_local_script_checks). A
script that outlives its timeout (30 s by default, as Consul) is killed with its whole process
group. At most MAX_CONCURRENT scripts run at once per agent, so a thousand slow scripts cannot
exhaust the machine. stdout and stderr are captured together into a ring of OutputMaxSize (4 KiB)
bytes: like Consul, the output keeps the *last* bytes, with a "Captured N of M bytes" note when cut,
and memory stays bounded whatever the script prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from typing import Any

from proconsul.agent.checks.runner import (
    DEFAULT_OUTPUT_MAX,
    IntervalRunner,
    ResultSink,
    RunnerHost,
)
from proconsul.agent.config.duration import format_duration
from proconsul.catalog.store import CRITICAL, PASSING, WARNING

MAX_CONCURRENT = 8
DEFAULT_TIMEOUT = 30.0
READ_CHUNK = 65536


class OutputRing:
    """The last `size` bytes written, and how many were written in all (Consul's circbuf)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()
        self.total = 0

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.size:
            del self.data[: len(self.data) - self.size]

    def text(self) -> str:
        out = self.data.decode(errors="replace")
        if self.total > self.size:
            out = f"Captured {self.size} of {self.total} bytes\n...\n{out}"
        return out


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ScriptRunner(IntervalRunner):
    default_timeout = DEFAULT_TIMEOUT

    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.args = list(defn["Args"])
        self.output_max = int(defn.get("OutputMaxSize") or DEFAULT_OUTPUT_MAX)
        sem = manager.context.get("script_slots")
        if sem is None:
            sem = manager.context["script_slots"] = asyncio.Semaphore(MAX_CONCURRENT)
        self.slots: asyncio.Semaphore = sem

    async def probe(self) -> tuple[str, str]:
        async with self.slots:
            return await self._run()

    async def _run(self) -> tuple[str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            return CRITICAL, f"cannot run {self.args[0]!r}: {e.strerror or e}"
        ring = OutputRing(self.output_max)
        try:
            async with asyncio.timeout(self.timeout):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(READ_CHUNK):
                    ring.write(chunk)
                code = await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()  # never start the next run while this one lives
            msg = f"Timed out ({format_duration(self.timeout)}) running check"
            out = ring.text()
            return CRITICAL, f"{msg}\n\n{out}" if out else msg
        except asyncio.CancelledError:  # deregistered or reloaded while running
            _kill_group(proc.pid)
            raise
        if code == 0:
            return PASSING, ring.text()
        if code == 1:
            return WARNING, ring.text()
        return CRITICAL, ring.text()

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


