"""`proconsul lock PREFIX COMMAND…`: run a command while holding a KV lock (or one of N semaphore slots),
as Consul's `consul lock` does.

The lock is `PREFIX/.lock`, held by a session with a 15 s TTL that is renewed while the command runs;
with `-n N > 1` it is Consul's semaphore: a contender key `PREFIX/<session>` and, in `PREFIX/.lock`, a
JSON {Limit, Holders} updated with check-and-set. If the session is lost, the command is stopped. When
the command ends, the lock is released and the session destroyed.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import threading
import time
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import Client, CLIError, HttpAddr
from proconsul.agent.cli.output import client, fail

SESSION_TTL = "15s"
RENEW_EVERY = 5.0


def _session(api: Client, name: str) -> str:
    return api.put("/v1/session/create", body={"Name": name, "TTL": SESSION_TTL, "Behavior": "release",
                                               "LockDelay": "1ms"}).json()["ID"]


def _acquire_lock(api: Client, key: str, sid: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if api.put(f"/v1/kv/{key}", params={"acquire": sid}, raw=b"").json():
            return True
        resp = api.get(f"/v1/kv/{key}", ok404=True)
        index = resp.index if resp.status == 200 else 0
        api.get(f"/v1/kv/{key}", params={"index": index, "wait": "5s"}, ok404=True)  # wait for a change
    return False


def _acquire_semaphore(api: Client, prefix: str, sid: str, limit: int, deadline: float) -> bool:
    api.put(f"/v1/kv/{prefix}/{sid}", params={"acquire": sid}, raw=b"")
    lock_key = f"{prefix}/.lock"
    while time.monotonic() < deadline:
        resp = api.get(f"/v1/kv/{lock_key}", ok404=True)
        current: dict[str, Any] = {"Limit": limit, "Holders": {}}
        index = 0
        if resp.status == 200:
            row = resp.json()[0]
            index = row["ModifyIndex"]
            if row.get("Value"):
                import base64

                current = json.loads(base64.b64decode(row["Value"]))
        if current.get("Limit") != limit:
            raise CLIError(f"semaphore limit conflict: {lock_key} has limit {current.get('Limit')}, not {limit}")
        alive = {r["Key"].rsplit("/", 1)[1] for r in (api.get(f"/v1/kv/{prefix}/", params={"recurse": True},
                                                              ok404=True).json() or []) if r.get("Session")}
        holders = {h: True for h in current.get("Holders", {}) if h in alive}
        if len(holders) < limit:
            holders[sid] = True
            body = json.dumps({"Limit": limit, "Holders": holders}).encode()
            if api.put(f"/v1/kv/{lock_key}", params={"cas": str(index)}, raw=body).json():
                return True
            continue
        api.get(f"/v1/kv/{lock_key}", params={"index": index, "wait": "5s"}, ok404=True)
    return False


def lock(prefix: Annotated[str, typer.Argument(help="KV prefix of the lock.")],
         command: Annotated[list[str], typer.Argument(help="The command to run while holding it.")],
         n: Annotated[int, typer.Option("-n", "--n", help="How many may hold it at once (a semaphore).")] = 1,
         timeout: Annotated[str, typer.Option("--timeout", help="Give up after this long (e.g. 30s).")] = "",
         child_exit_code: Annotated[bool, typer.Option("--child-exit-code",
                                                       help="Exit with the command's exit status.")] = False,
         name: Annotated[str, typer.Option("--name", help="The session's name.")] = "",
         http_addr: HttpAddr = None) -> None:
    """Run COMMAND while holding a lock at PREFIX (or one of N slots with -n N)."""
    from proconsul.agent.config.duration import DurationError, parse_duration

    if n < 1:
        raise fail("-n must be at least 1")
    try:
        wait = parse_duration(timeout) if timeout else float("inf")
    except DurationError as e:
        raise fail(f"-timeout: {e}") from None
    prefix = prefix.strip("/")
    api = client(http_addr)
    try:
        sid = _session(api, name or f"Consul lock for {prefix}")
    except CLIError as e:
        raise fail(str(e)) from None
    lost = threading.Event()
    done = threading.Event()

    def renew() -> None:
        while not done.wait(RENEW_EVERY):
            try:
                if not api.put(f"/v1/session/renew/{sid}", ok404=True).json():
                    lost.set()
                    return
            except CLIError:
                lost.set()
                return

    try:
        deadline = time.monotonic() + wait
        held = (_acquire_lock(api, f"{prefix}/.lock", sid, deadline) if n == 1 else
                _acquire_semaphore(api, prefix, sid, n, deadline))
        if not held:
            raise fail(f"could not acquire the lock at {prefix} within {timeout}")
        threading.Thread(target=renew, daemon=True).start()
        argv = command if len(command) > 1 else ["/bin/sh", "-c", command[0]]
        child = subprocess.Popen(argv)
        while child.poll() is None:
            if lost.is_set():
                typer.echo("Error: the lock was lost; stopping the command", err=True)
                child.send_signal(signal.SIGTERM)
                child.wait(10)
                raise typer.Exit(1)
            time.sleep(0.1)
        code = child.returncode
    except CLIError as e:
        raise fail(str(e)) from None
    finally:
        done.set()
        try:
            if n == 1:
                api.put(f"/v1/kv/{prefix}/.lock", params={"release": sid}, raw=b"")
            api.put(f"/v1/session/destroy/{sid}")
        except CLIError:
            pass
    if child_exit_code and code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(lock)


__all__ = ["lock", "register", "shlex"]
