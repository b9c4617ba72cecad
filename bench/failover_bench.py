"""Three Proconsul servers: time to a new leader after kill -9 of the leader, and catch-up time of a
follower that is 100,000 entries behind (PERFORMANCE.md §1; goal: failover under 2 s with default timeouts).

Failover: kill -9 the leader, then poll the survivors until both name the same new leader and a
write through them commits; restart the killed server (same data dir) and repeat. Catch-up: stop a
follower, write N keys through the leader (wrk), restart the follower and time until its stale
reads reach the leader's index (with N above the snapshot threshold this includes InstallSnapshot).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

from common import AgentProcess, need, report, wait_for, wrk
from raft_bench import Proconsul


def committed_write(servers: list[AgentProcess]) -> bool:
    for s in servers:
        try:
            if s.put("/v1/kv/failover/probe", "x", timeout=2.0) == (200, True):
                return True
        except OSError:
            pass
    return False


def leader_among(servers: list[AgentProcess]) -> AgentProcess | None:
    try:
        seen = {s.get("/v1/status/leader", timeout=1.0)[1] for s in servers}
    except OSError:
        return None
    if len(seen) != 1:
        return None
    addr = seen.pop()
    return next((s for s in servers if addr and addr.endswith(f":{s.server_port}")), None)


def failover_once(pc: Proconsul) -> float:
    lead = pc.leader()
    survivors = [s for s in pc.servers if s is not lead]
    lead.stop(signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: leader_among(survivors) is not None and committed_write(survivors), 30.0, interval=0.01,
             message="a new leader")
    took = time.monotonic() - t0
    lead.start_background()
    lead.wait_ready(60)
    wait_for(lambda: leader_among(pc.servers) is not None, 30.0, message="all three agree")
    return took


def index_of(s: AgentProcess) -> int:
    _, _, headers = s.request("GET", "/v1/kv/catchup/key0?stale", timeout=5.0)
    return int(headers.get("X-Consul-Index", "0"))


def catch_up(pc: Proconsul, root: Path, entries: int) -> dict[str, float]:
    lead = pc.leader()
    follower = next(s for s in pc.servers if s is not lead)
    follower.stop()
    start_index = index_of(lead)
    script = root / "catchup.lua"
    script.write_text('local n = 0\nrequest = function()\n  n = n + 1\n'
                      '  return wrk.format("PUT", "/v1/kv/catchup/key" .. (n % 1000), nil, "vvvvvvvvvvvvvvvvvvvv")\n'
                      'end\n')
    written = 0
    t_write = time.monotonic()
    while index_of(lead) - start_index < entries:
        wrk(lead.url, 64, 5.0, script=str(script))
    written = index_of(lead) - start_index
    write_s = time.monotonic() - t_write
    target = index_of(lead)
    t0 = time.monotonic()
    follower.start_background()
    wait_for(lambda: _safe_index(follower) >= target, 300.0, interval=0.05, message="the follower to catch up")
    return {"entries_behind": written, "catch_up_s": time.monotonic() - t0, "write_s": write_s}


def _safe_index(s: AgentProcess) -> int:
    try:
        return index_of(s)
    except OSError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--entries", type=int, default=100_000)
    args = ap.parse_args()
    need("wrk", "wrk")
    root = Path(tempfile.mkdtemp(prefix="failoverbench-"))
    pc = Proconsul(root / "proconsul")
    try:
        times = []
        for i in range(args.trials):
            took = failover_once(pc)
            times.append(took)
            print(f"  trial {i + 1}: new leader and a committed write {took:.2f}s after kill -9", flush=True)
        cu = catch_up(pc, root, args.entries) if args.entries else {}
        report("raft_failover", {
            "failover_s": {"median": statistics.median(times), "max": max(times), "trials": times},
            "catch_up": cu, "election_timeout": "0.8-1.6 s (8-16 ticks of 100 ms)",
            "goal": "new leader < 2 s after kill -9 of the leader"})
    finally:
        pc.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
