"""Where the whole-process cost of access logs and tracing goes (issue 19): the `l7-chain` of traffic_bench.py
(wrk → client sidecar → mTLS → two server sidecars, 80/20 → nginx), arms alternated, and for each round every
process's CPU per request, user and kernel apart (the three sidecars, wrk, nginx, the OTLP sink, the agent),
voluntary / involuntary context switches, the whole machine's busy time per request, and with `--syscalls` the
client's and v1's system calls per request (`perf stat -e raw_syscalls:sys_enter`).

Variants run a second chain whose sidecars load a `sitecustomize` (written here, to a temporary directory) that
changes one thing, arms named `VARIANT:arm`, alternated with the plain ones:
  noexport  the span exporter drops its queue once a second (no encoding, no POST): what export costs
  dummy     every finished request also runs a private Tracer's start + finish (≈3.7 µs a call in a loop):
            what a known amount of per-request Python costs the whole processes

    .venv/bin/python bench/traffic_breakdown.py --arms off,log,trace100,noexport:trace100,dummy:off --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Background, free_port, process_tree, wait_for
from proxy_bench import _curl, nginx
from traffic_bench import SINK, ChainArm, _requests

TICK = os.sysconf("SC_CLK_TCK")
VARIANTS = {
    "noexport": """
import asyncio
from proconsul.connect.proxy import tracing
async def run(self):
    while True:
        await asyncio.sleep(tracing.FLUSH_EVERY)
        self.exported += len(self.queue)
        self.queue.clear()
tracing.Tracer.run = run
""",
    "dummy": """
import random
from proconsul.connect.proxy import http, tracing
_T = tracing.Tracer("x", tracing.TracingSettings("http://127.0.0.1:1/v1/traces", 100.0), random.Random(3))
_done = http.Front.done
def done(self, ex):
    ctx, _ = _T.start(ex.head.headers, tracing.CLIENT)
    _T.finish_encoded(ctx, 200, (b"", b""))
    if len(_T.queue) > 2048:
        _T.queue.clear()
    return _done(self, ex)
http.Front.done = done
""",
}


def _proc(pid: int) -> list[float]:
    """utime, stime (s), voluntary and involuntary context switches of `pid` and its descendants."""
    out = [0.0, 0.0, 0.0, 0.0]
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        out[0] += int(stat[11]) / TICK
        out[1] += int(stat[12]) / TICK
        out[2] += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        out[3] += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return out


def _machine() -> tuple[int, int]:
    """(busy, all) jiffies of the whole machine."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def _wrk(port: int, duration: float) -> tuple[int, float, float]:
    """Requests, requests/s, wrk's own CPU seconds."""
    p = subprocess.Popen(["wrk", "-t1", "-c16", f"-d{int(duration)}s", f"http://127.0.0.1:{port}/"],
                         stdout=subprocess.PIPE, text=True)
    out = p.stdout.read() if p.stdout else ""
    _, _, ru = os.wait4(p.pid, 0)
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return n, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), ru.ru_utime + ru.ru_stime  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="off,log,trace100", help="off, log, trace100, trace1, each maybe VARIANT:…")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--syscalls", action="store_true", help="count system calls (perf stat) of the client and v1")
    args = ap.parse_args()
    arms = args.arms.split(",")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        app = free_port()
        web = nginx(tmp, app, None)
        wait_for(lambda: _curl(f"http://127.0.0.1:{app}/") == "ok\n", 10, message="nginx")
        sink_port = free_port()
        sink = Background([sys.executable, "-c", SINK, str(sink_port)])
        sink_url = f"http://127.0.0.1:{sink_port}/v1/traces"
        chains: dict[str, ChainArm] = {}
        results: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
        try:
            for variant in sorted({a.split(":")[0] if ":" in a else "" for a in arms}):
                env = None
                if variant:
                    (tmp / variant).mkdir()
                    (tmp / variant / "sitecustomize.py").write_text(VARIANTS[variant])
                    env = {"PYTHONPATH": str(tmp / variant)}
                chains[variant] = ChainArm(tmp, app, None, chain=True, env=env, label=variant, ingress=False)
            for r in range(args.rounds):
                for arm in arms:
                    variant, _, what = arm.rpartition(":")
                    results[arm].append(_round(chains[variant], what, bool(variant), web, sink, sink_url, args))
                    print(f"round {r + 1} {arm:<22} " + "  ".join(f"{k}={v:.2f}" for k, v in results[arm][-1].items()),
                          flush=True)
        finally:
            for c in chains.values():
                c.stop()
            sink.stop()
            web.stop()
    print(json.dumps({a: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for a, rows in results.items()},
                     indent=1))


def _round(chain: ChainArm, what: str, variant: bool, web: Background, sink: Background, sink_url: str,
           args: Any) -> dict[str, float]:
    if what == "log":
        chain.access_logs(True)
    elif what.startswith("trace"):
        if variant:  # a variant's sink may see no POST: wait for the setting, not for spans
            assert chain.agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": {
                "otlp_endpoint": sink_url, "sampling_percent": float(what[5:])}}})[0] == 200
            time.sleep(1.0)  # the sidecars follow the config entry (a blocking query): then warm the path
            _requests(chain.front, 200)
        else:
            chain.tracing(sink_url, float(what[5:]))
    procs = dict(zip(("v1", "v2", "client"), chain.pids, strict=True)) | {"nginx": web.proc.pid, "sink": sink.proc.pid}
    perf = [subprocess.Popen(["perf", "stat", "-x,", "-o", str(Path(tempfile.gettempdir()) / f"sc-{procs[n]}"), "-e",
                              "raw_syscalls:sys_enter", "-p", str(procs[n])], stderr=subprocess.DEVNULL)
            for n in ("client", "v1")] if args.syscalls else []
    before, m0 = {k: _proc(p) for k, p in procs.items()}, _machine()
    n, rps, wrk_cpu = _wrk(chain.front, args.duration)
    after, m1 = {k: _proc(p) for k, p in procs.items()}, _machine()
    row = {"rps": rps}
    for k in procs:
        row[f"{k}_user_us"] = (after[k][0] - before[k][0]) / n * 1e6
        row[f"{k}_sys_us"] = (after[k][1] - before[k][1]) / n * 1e6
        row[f"{k}_cs"] = (after[k][2] - before[k][2] + after[k][3] - before[k][3]) / n
    row["sidecars_us"] = sum(row[f"{k}_{t}_us"] for k in ("v1", "v2", "client") for t in ("user", "sys"))
    row["wrk_us"] = wrk_cpu / n * 1e6
    row["machine_busy_us"] = (m1[0] - m0[0]) / TICK / n * 1e6
    row["machine_busy_cores"] = (m1[0] - m0[0]) / (m1[1] - m0[1]) * (os.cpu_count() or 1)
    for p, name in zip(perf, ("client", "v1"), strict=False):
        p.send_signal(signal.SIGINT)
        p.wait()
        text = (Path(tempfile.gettempdir()) / f"sc-{procs[name]}").read_text()
        row[f"{name}_syscalls"] = int(next(ln.split(",")[0] for ln in text.splitlines() if "sys_enter" in ln)) / n
    if what == "log":
        chain.access_logs(False)
    elif what.startswith("trace"):
        if variant:
            chain.agent.request("DELETE", "/v1/config/proxy-defaults/global")
            time.sleep(1.5)  # the exporter's interval: spans made before now are gone by then
        else:
            chain.tracing("", 0)
    return row


if __name__ == "__main__":
    main()
