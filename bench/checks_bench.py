"""1,000 HTTP checks at a 10 s interval on one agent: CPU share of one core and extra RSS.

The agent's CPU time (utime+stime from /proc) is sampled over a window while idle and while running
the checks against a local aiohttp target, alternating windows. Goal: < 5% of a core, < 80 MB extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import AgentProcess, Background, free_port, http_json, report, rss_mb, wait_for

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def window(pid: int, seconds: float) -> float:
    """Share of one core the process used over the next `seconds`."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checks", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        target = Background([sys.executable, str(HERE / "hello_aiohttp.py"), str(port)])
        agent = AgentProcess(Path(tmp), dev=True, args=["--log-level", "warn"])
        agent.start()
        pid = agent.proc.pid
        try:
            wait_for(lambda: http_json("GET", f"http://127.0.0.1:{port}/"), message="target")
            idle_rss = rss_mb(pid)
            idle = [window(pid, args.window / 3)]
            for i in range(args.checks):
                http_json("PUT", f"{agent.url}/v1/agent/check/register", {
                    "Name": f"web-{i}", "CheckID": f"web-{i}", "HTTP": f"http://127.0.0.1:{port}/?n={i}",
                    "Interval": "10s", "Timeout": "5s"})

            def all_ran() -> bool:
                checks = http_json("GET", f"{agent.url}/v1/agent/checks")
                return sum(1 for c in checks.values() if c["Status"] == "passing") >= args.checks

            wait_for(all_ran, 60, 1.0, "every check to have run once")
            busy = []
            for _ in range(args.rounds):
                busy.append(window(pid, args.window))
            loaded_rss = rss_mb(pid)
            report("checks", {
                "checks": args.checks, "interval_s": 10, "window_s": args.window, "rounds": args.rounds,
                "idle_cpu_share": statistics.median(idle), "busy_cpu_share": statistics.median(busy),
                "busy_cpu_share_each": busy, "extra_cpu_share": statistics.median(busy) - statistics.median(idle),
                "idle_rss_mb": idle_rss, "loaded_rss_mb": loaded_rss, "extra_rss_mb": loaded_rss - idle_rss,
                "goal": "< 5% of a core, < 80 MB extra"})
        finally:
            agent.stop()
            target.stop()


if __name__ == "__main__":
    main()
