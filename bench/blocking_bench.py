"""Blocking queries: N concurrent `?index=` watchers on one agent; one write; how fast all return.

PERFORMANCE.md §4. Goal: 10,000 watchers all answered within 1 s of the write; agent RSS < 300 MB.
The watchers are raw HTTP/1.1 connections on asyncio (one socket each), so the client costs little.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import AgentProcess, http_json, report, rss_mb, wait_for


async def watch(port: int, path: str, pace: asyncio.Semaphore, started: list[float], done: list[float]) -> None:
    async with pace:  # bounded connection set-up; the wait itself is not bounded
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
    started.append(time.monotonic())
    line = await reader.readline()
    done.append(time.monotonic())
    assert b" 200 " in line, line
    writer.close()


def gauge(agent: AgentProcess, name: str) -> float:
    for g in http_json("GET", f"{agent.url}/v1/agent/metrics")["Gauges"]:
        if g["Name"] == name:
            return g["Value"]
    raise KeyError(name)


def current_index(agent: AgentProcess, key: str) -> int:
    http_json("PUT", f"{agent.url}/v1/kv/{key}", "v0")
    with urllib.request.urlopen(f"{agent.url}/v1/kv/{key}") as resp:
        return int(resp.headers["X-Consul-Index"])


async def run(agent: AgentProcess, watchers: int, key: str, index: int) -> dict[str, float]:
    started: list[float] = []
    done: list[float] = []
    path = f"/v1/kv/{key}?index={index}&wait=120s"
    pace = asyncio.Semaphore(500)
    tasks = [asyncio.ensure_future(watch(agent.http_port, path, pace, started, done)) for _ in range(watchers)]
    deadline = time.monotonic() + 120
    while await asyncio.to_thread(gauge, agent, "consul.http.blocking_queries") < watchers:
        assert time.monotonic() < deadline, "watchers never all registered"
        await asyncio.sleep(0.2)
    rss_before = rss_mb(agent.proc.pid)
    assert not done, "a watcher returned before the write"
    t0 = time.monotonic()
    await asyncio.to_thread(http_json, "PUT", f"{agent.url}/v1/kv/{key}", "v1")
    await asyncio.gather(*tasks)
    latencies = sorted(d - t0 for d in done)
    return {"watchers": watchers, "all_returned_s": latencies[-1], "median_s": statistics.median(latencies),
            "rss_mb_while_waiting": rss_before, "rss_mb_after": rss_mb(agent.proc.pid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--watchers", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.watchers + 100:
        print(f"SKIPPED: the open-files limit ({hard}) is below {args.watchers} watchers")
        return
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), dev=True, args=["--log-level", "warn"])
        agent.start()
        try:
            wait_for(lambda: http_json("GET", f"{agent.url}/v1/status/leader"))
            rounds = [asyncio.run(run(agent, args.watchers, f"bench/key{i}", current_index(agent, f"bench/key{i}")))
                      for i in range(args.rounds)]
            for r in rounds:
                print("  round", r)
            report("blocking_queries", {
                "watchers": args.watchers, "rounds": args.rounds,
                "all_returned_s_median": statistics.median(r["all_returned_s"] for r in rounds),
                "all_returned_s_worst": max(r["all_returned_s"] for r in rounds),
                "rss_mb_max": max(max(r["rss_mb_while_waiting"], r["rss_mb_after"]) for r in rounds),
                "goal": "all within 1 s, RSS < 300 MB",
            })
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
