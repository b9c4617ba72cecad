"""Consul's remote execution (`consul exec`), the agent's side and the shapes both sides share.

The CLI makes a session, writes the job `<prefix>/<session>/job` (JSON: `Command`, or `Args`, or a base64
`Script`; `Wait` in nanoseconds) held by that session, and fires the user event `_rexec` whose payload
names the prefix and session. Every agent the event's filters select, and whose `disable_remote_exec` is
false (it is true by default, as in Consul), reads the job, writes `<prefix>/<session>/<node>/ack`, runs the
command (stdout and stderr together), uploads the output in chunks of at most 4 KiB as
`<node>/out/00000`, `00001`, … (a chunk is sent when full or after 500 ms of quiet; an empty one every
`Wait` without output, as a heartbeat), and finally writes `<node>/exit` with the exit code. Every key is
written with the session, so destroying it (the CLI does, when done) deletes them all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

EVENT_NAME = "_rexec"
PREFIX = "_rexec"
CHUNK = 4 * 1024
IDLE_FLUSH = 0.5
DEFAULT_WAIT = 2.0

log = logging.getLogger("proconsul.exec")


class RemoteExecError(ValueError):
    """A remote exec event or job that cannot be run (malformed); the message says what."""


@dataclass(frozen=True)
class Job:
    command: str = ""
    args: tuple[str, ...] = ()
    script: bytes = b""
    wait: float = DEFAULT_WAIT  # seconds without output between heartbeats


def parse_event(payload: bytes) -> tuple[str, str]:
    """(prefix, session) from a `_rexec` event's payload."""
    try:
        msg = json.loads(payload)
    except (ValueError, TypeError):
        raise RemoteExecError("the remote exec event's payload is not JSON") from None
    prefix, session = (msg.get("Prefix"), msg.get("Session")) if isinstance(msg, dict) else (None, None)
    if not isinstance(prefix, str) or not isinstance(session, str) or not prefix or not session:
        raise RemoteExecError("the remote exec event names no Prefix and Session")
    if ".." in prefix.split("/") or "/" in session or prefix.startswith("/"):
        raise RemoteExecError(f"the remote exec event's Prefix {prefix!r} / Session {session!r} is not a key path")
    return prefix, session


def parse_job(value: bytes) -> Job:
    """The job a CLI wrote (Consul's rExecSpec as JSON)."""
    try:
        spec = json.loads(value or b"")
    except (ValueError, TypeError):
        raise RemoteExecError("the remote exec job is not JSON") from None
    if not isinstance(spec, dict):
        raise RemoteExecError("the remote exec job is not an object")
    args = spec.get("Args") or []
    script = spec.get("Script") or ""
    if not isinstance(spec.get("Command") or "", str) or not isinstance(args, list) or \
            not all(isinstance(a, str) for a in args) or not isinstance(script, str):
        raise RemoteExecError("the remote exec job's Command, Args or Script has the wrong type")
    try:
        raw_script = base64.b64decode(script, validate=True) if script else b""
    except ValueError:
        raise RemoteExecError("the remote exec job's Script is not base64") from None
    wait = spec.get("Wait")
    seconds = wait / 1e9 if isinstance(wait, int | float) and wait > 0 else DEFAULT_WAIT
    job = Job(str(spec.get("Command") or ""), tuple(args), raw_script, seconds)
    if not (job.command or job.args or job.script):
        raise RemoteExecError("the remote exec job has nothing to run")
    return job


def job_value(job: Job) -> bytes:
    """The job as the CLI writes it."""
    return json.dumps({**({"Command": job.command} if job.command else {}),
                       **({"Args": list(job.args)} if job.args else {}),
                       **({"Script": base64.b64encode(job.script).decode()} if job.script else {}),
                       "Wait": int(job.wait * 1e9)}).encode()


def node_key(prefix: str, session: str, node: str, suffix: str) -> str:
    return f"{prefix}/{session}/{node}/{suffix}"


def output_key(prefix: str, session: str, node: str, num: int) -> str:
    return node_key(prefix, session, node, f"out/{num:05x}")


class Runner:
    """Runs one remote exec job on this agent. `get(key)` reads a KV value (None when missing); `put(key,
    value, session)` writes it holding `session` (False when the lock fails: the CLI gave up)."""

    def __init__(self, node: str, get: Any, put: Any) -> None:
        self.node, self.get, self.put = node, get, put

    async def run(self, payload: bytes) -> int | None:
        """Run the job an event names; its exit code (None when there was nothing to run)."""
        try:
            prefix, session = parse_event(payload)
            value = await self.get(f"{prefix}/{session}/job")
            if value is None:
                log.info("remote exec: the job of session %s is gone; nothing to run", session)
                return None
            job = parse_job(value)
        except RemoteExecError as e:
            log.warning("remote exec: %s", e)
            return None
        if not await self.put(node_key(prefix, session, self.node, "ack"), b"", session):
            return None
        code = 255
        try:
            code = await self._execute(job, prefix, session)
        finally:
            await self.put(node_key(prefix, session, self.node, "exit"), str(code).encode(), session)
        return code

    async def _execute(self, job: Job, prefix: str, session: str) -> int:
        script_path = ""
        try:
            if job.script:
                fd, script_path = tempfile.mkstemp(prefix="rexec")
                with os.fdopen(fd, "wb") as f:
                    f.write(job.script)
                os.chmod(script_path, 0o750)
            log.info("remote exec %r (session %s)", job.args or script_path or job.command, session)
            argv = job.args or ("/bin/sh", "-c", script_path or job.command)
            try:
                proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                            stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.STDOUT)
            except OSError as e:
                log.warning("remote exec: cannot start %r: %s", job.args or job.command, e)
                return 255
            assert proc.stdout is not None
            if not await self._stream(proc.stdout, job.wait, prefix, session):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                return 255
            return await proc.wait()
        finally:
            if script_path:
                with contextlib.suppress(OSError):
                    os.unlink(script_path)

    async def _stream(self, out: asyncio.StreamReader, wait: float, prefix: str, session: str) -> bool:
        """Upload the output as it comes; False when an upload failed (the session is gone)."""
        buf, num, quiet = b"", 0, 0.0
        tick = min(IDLE_FLUSH, wait)
        while True:
            try:
                chunk = await asyncio.wait_for(out.read(CHUNK - len(buf)), tick)
            except TimeoutError:
                quiet += tick
                if buf or quiet >= wait:  # quiet for 500 ms: send what there is; for `wait`: a heartbeat
                    if not await self.put(output_key(prefix, session, self.node, num), buf, session):
                        return False
                    num, buf, quiet = num + 1, b"", 0.0
                continue
            if not chunk:
                break
            buf += chunk
            quiet = 0.0
            if len(buf) >= CHUNK:
                if not await self.put(output_key(prefix, session, self.node, num), buf, session):
                    return False
                num, buf = num + 1, b""
        if buf:
            return bool(await self.put(output_key(prefix, session, self.node, num), buf, session))
        return True
