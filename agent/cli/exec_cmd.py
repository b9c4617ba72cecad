"""`proconsul exec [-node RE] [-service RE] [-tag RE] [-wait 2s] [-shell=false] [-verbose] COMMAND... | -`:
Consul's `consul exec` — run a command on the agents of the datacenter that the filters select and whose
`disable_remote_exec` is false, and show what each prints (agent/local/remote_exec.py has the protocol).

It creates a session, writes the job under `_rexec/<session>/`, fires the `_rexec` event, then follows the
keys the agents write (ack, output, exit code) until nothing has been heard for `-wait` (twice that while a
node that acknowledged has not finished). Exit status: 0, 2 when a node exited non-zero or did not finish,
1 when the command could not be run at all.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Annotated

import typer

from proconsul.agent.cli.client import Client, CLIError, HttpAddr
from proconsul.agent.cli.output import client, fail, run
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.agent.local.events import EventError, new_event
from proconsul.agent.local.remote_exec import EVENT_NAME, PREFIX, Job, job_value

SESSION_TTL = "15s"
RENEW_EVERY = 5.0


def exec_(command: Annotated[list[str] | None, typer.Argument(
              help="The command to run, or '-' to read a script from stdin.")] = None,
          node: Annotated[str, typer.Option("--node", help="Regular expression: only nodes whose name matches.")] = "",
          service: Annotated[str, typer.Option("--service", help="Regular expression: only nodes running a matching "
                                                                 "service.")] = "",
          tag: Annotated[str, typer.Option("--tag", help="Regular expression on the service's tags (needs -service).")
                         ] = "",
          wait: Annotated[str, typer.Option("--wait", help="Quiet time after which the job is considered done.")
                          ] = "2s",
          wait_repl: Annotated[str, typer.Option("--wait-repl", help="Pause between writing the job and firing the "
                                                                     "event (for the job to replicate).")] = "200ms",
          shell: Annotated[str, typer.Option("--shell", help="true: run the command through /bin/sh; false "
                                                             "(-shell=false): as the program and its arguments.")
                           ] = "true",
          verbose: Annotated[bool, typer.Option("--verbose", help="Also show acknowledgements and heartbeats.")
                             ] = False,
          http_addr: HttpAddr = None) -> None:
    """Run a command on the nodes that match (their agents must set disable_remote_exec = false)."""
    words = list(command or [])
    if not words:
        raise fail("Must specify a command to execute")
    try:
        quiet, repl = parse_duration(wait), parse_duration(wait_repl)
    except DurationError as e:
        raise fail(f"-wait / -wait-repl: {e}") from None
    try:
        new_event(EVENT_NAME, b"{}", node, service, tag)  # Consul's filter checks, before anything is written
    except EventError as e:
        raise fail(str(e)) from None
    if shell.lower() not in ("true", "false", "1", "0", "t", "f"):
        raise fail(f"-shell must be true or false, not {shell!r}")
    if words == ["-"]:
        job = Job(script=sys.stdin.buffer.read(), wait=quiet)
    elif shell.lower() in ("true", "1", "t"):
        job = Job(command=" ".join(words), wait=quiet)
    else:
        job = Job(args=tuple(words), wait=quiet)
    c = client(http_addr)
    code = 1

    def body() -> None:
        nonlocal code
        code = _run(c, job, node, service, tag, quiet, repl, verbose)

    run(body)
    raise typer.Exit(code)


def _run(c: Client, job: Job, node: str, service: str, tag: str, quiet: float, repl: float, verbose: bool) -> int:
    session = c.put("/v1/session/create", body={"Name": "Remote Exec", "Behavior": "delete",
                                                "TTL": SESSION_TTL}).json()["ID"]
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(c, session, stop), daemon=True)
    renewer.start()
    try:
        if c.put(f"/v1/kv/{PREFIX}/{session}/job", raw=job_value(job), params={"acquire": session}).json() is not True:
            raise CLIError(f"failed to acquire key {PREFIX}/{session}/job")
        if verbose:
            typer.echo("Uploaded remote execution spec")
        time.sleep(repl)  # Consul's heuristic: let the job replicate before agents read it
        fired = c.put(f"/v1/event/fire/{EVENT_NAME}", raw=json.dumps({"Prefix": PREFIX, "Session": session}).encode(),
                      params={"node": node or None, "service": service or None, "tag": tag or None}).json()
        if verbose:
            typer.echo(f"Fired remote execution event: {fired['ID']}")
        return _follow(c, session, quiet, verbose)
    finally:
        stop.set()
        try:
            c.put(f"/v1/session/destroy/{session}")
            c.delete(f"/v1/kv/{PREFIX}/{session}", params={"recurse": True})
        except CLIError:
            pass


def _renew(c: Client, session: str, stop: threading.Event) -> None:
    while not stop.wait(RENEW_EVERY):
        try:
            c.put(f"/v1/session/renew/{session}")
        except CLIError:
            return


def _follow(c: Client, session: str, quiet: float, verbose: bool) -> int:
    """Print what the nodes write until nothing is heard for `quiet`; the exit status."""
    directory = f"{PREFIX}/{session}/"
    seen: set[str] = set()
    acked, exited, bad = 0, 0, 0
    index = 0
    last = time.monotonic()
    while True:
        window = quiet * 2 if acked > exited else quiet
        left = last + window - time.monotonic()
        if left <= 0:
            break
        resp = c.get(f"/v1/kv/{directory}", params={"keys": True, "index": index or None,
                                                    "wait": f"{max(left, 0.05):.3f}s"}, ok404=True)
        index = resp.index or index
        keys = resp.json() if resp.status == 200 else []
        for key in sorted(k for k in keys if k not in seen):
            seen.add(key)
            rest = key[len(directory):]
            if rest == "job":
                continue
            last = time.monotonic()
            if rest.endswith("/ack"):
                acked += 1
                if verbose:
                    typer.echo(f"==> {rest[:-4]}: acknowledged")
            elif rest.endswith("/exit"):
                exited += 1
                status = _value(c, key).decode(errors="replace")
                code = int(status) if status.lstrip("-").isdigit() else 1
                bad += code != 0
                typer.echo(f"==> {rest[:-5]}: finished with exit code {code}")
            elif "/out/" in rest:
                name = rest[:rest.rindex("/out/")]
                data = _value(c, key)
                if not data:
                    if verbose:
                        typer.echo(f"==> {name}: heartbeat received")
                    continue
                for line in data.decode(errors="replace").rstrip("\n").split("\n"):
                    typer.echo(f"    {name}: {line}")
    typer.echo(f"{exited} / {acked} node(s) completed / acknowledged")
    return 2 if bad or exited < acked else 0


def _value(c: Client, key: str) -> bytes:
    resp = c.get(f"/v1/kv/{key}", params={"raw": True}, ok404=True)
    return resp.body if resp.status == 200 else b""


def register(app: typer.Typer) -> None:
    app.command(name="exec", context_settings={"allow_interspersed_args": False})(exec_)
