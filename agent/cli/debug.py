"""`proconsul debug`: a bundle for a bug report — agent facts, members, host, metrics sampled every
interval, the agent's logs for the duration, and a CPU profile (when the agent has enable_debug) — in
one `.tar.gz`, as Consul's `consul debug` makes."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import Client, CLIError, HttpAddr
from proconsul.agent.cli.output import client, fail, run


def debug(duration: Annotated[str, typer.Option("--duration", help="How long to capture (2m).")] = "2m",
          interval: Annotated[str, typer.Option("--interval", help="Metrics every (30s).")] = "30s",
          output: Annotated[str, typer.Option("--output", help="Bundle path (default: proconsul-debug-<time>).")]
          = "",
          http_addr: HttpAddr = None) -> None:
    """Capture a debug bundle from the agent."""
    from proconsul.agent.config.duration import DurationError, parse_duration

    try:
        total, every = parse_duration(duration), parse_duration(interval)
    except DurationError as e:
        raise fail(str(e)) from None
    if every <= 0 or total < every:
        raise fail("-interval must be positive and no longer than -duration")
    path = Path((output or f"proconsul-debug-{int(time.time())}") + ".tar.gz")
    files: dict[str, bytes] = {}

    def body() -> None:
        api = client(http_addr)
        for name, endpoint in (("agent.json", "/v1/agent/self"), ("members.json", "/v1/agent/members"),
                               ("host.json", "/v1/agent/host")):
            files[name] = json.dumps(api.get(endpoint).json(), indent=2).encode()
        logs: list[str] = []
        stop = threading.Event()

        def follow() -> None:
            try:
                for line in api.stream("/v1/agent/monitor", params={"loglevel": "debug"}):
                    logs.append(line)
                    if stop.is_set():
                        return
            except CLIError:
                pass

        threading.Thread(target=follow, daemon=True).start()
        profile: dict[str, Any] = {}

        seconds = max(1, int(min(total, 60)))

        def take_profile() -> None:
            try:
                slow = Client(http_addr, timeout=seconds + 30)
                profile["text"] = slow.get("/v1/agent/debug/profile", params={"seconds": str(seconds)}).body
            except CLIError as e:
                profile["text"] = f"CPU profile unavailable: {e}\n".encode()

        prof = threading.Thread(target=take_profile, daemon=True)
        prof.start()
        samples = []
        end = time.monotonic() + total
        typer.echo(f"==> Capturing for {duration} (metrics every {interval}) …")
        while True:
            samples.append(api.get("/v1/agent/metrics").json())
            if time.monotonic() + every > end:
                break
            time.sleep(every)
        stop.set()
        prof.join(seconds + 35)
        files["metrics.json"] = json.dumps(samples, indent=2).encode()
        files["proconsul.log"] = ("\n".join(logs) + "\n").encode()
        files["profile.txt"] = profile.get("text") or b"CPU profile unavailable: set enable_debug = true on the agent\n"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{path.name.removesuffix('.tar.gz')}/{name}")
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        try:
            path.write_bytes(buf.getvalue())
        except OSError as e:
            raise CLIError(f"cannot write {path}: {e.strerror}") from None
        typer.echo(f"Saved debug bundle to {path}")

    run(body)


def register(app: typer.Typer) -> None:
    app.command()(debug)
