"""HTTP API: GET /v1/health/service/web?passing with 50 instances vs an aiohttp hello-world.

PERFORMANCE.md §4. Goal: ≥ 0.7× the hello-world's requests/s, wrk -c16, same machine, same run. Each arm also
reports its server's CPU seconds per 1,000 requests; `--baseline-tree` adds another version (e.g. main) as an arm.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import (
    AgentProcess,
    Arm,
    Background,
    alternate,
    free_port,
    http_json,
    metered,
    report,
    tree_env,
    wait_for,
    wrk,
)

HERE = Path(__file__).resolve().parent


def seed(agent: AgentProcess, instances: int) -> None:
    for i in range(instances):
        http_json("PUT", f"{agent.url}/v1/catalog/register", {
            "Node": f"node-{i}", "Address": f"10.0.{i // 250}.{i % 250 + 1}",
            "Service": {"Service": "web", "ID": f"web-{i}", "Port": 8080, "Tags": ["v1"]},
            "Checks": [{"CheckID": f"web-{i}-alive", "Name": "alive", "ServiceID": f"web-{i}", "Status": "passing"}],
        })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="another source tree (e.g. `git archive main` unpacked) run as one more arm, same seed")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), dev=True, args=["--log-level", "warn"])
        agent.start()
        base = None
        if args.baseline_tree:
            base = AgentProcess(Path(tmp) / "baseline", dev=True, args=["--log-level", "warn"],
                                env=tree_env(args.baseline_tree, Path(tmp)))
            base.start()
            seed(base, 50)
        hello_port = free_port()
        seed(agent, 50)
        entries = http_json("GET", f"{agent.url}/v1/health/service/web?passing")
        assert len(entries) == 50, len(entries)
        body_file = Path(tmp) / "body.json"
        with urllib.request.urlopen(f"{agent.url}/v1/health/service/web?passing") as resp:
            body_file.write_bytes(resp.read())
        hello = Background([sys.executable, str(HERE / "hello_aiohttp.py"), str(hello_port), str(body_file)])
        try:
            wait_for(lambda: http_json("GET", f"http://127.0.0.1:{hello_port}/"), message="hello server")
            hello_pid, agent_pid = hello.proc.pid, agent.proc.pid  # type: ignore[union-attr]
            arms = [
                Arm("aiohttp hello-world", metered([hello_pid], lambda: wrk(
                    f"http://127.0.0.1:{hello_port}/", args.connections, args.duration).as_dict())),
                Arm("aiohttp same-size static body", metered([hello_pid], lambda: wrk(
                    f"http://127.0.0.1:{hello_port}/static", args.connections, args.duration).as_dict())),
                Arm("health/service?passing", metered([agent_pid], lambda: wrk(
                    f"{agent.url}/v1/health/service/web?passing", args.connections, args.duration).as_dict())),
            ]
            if base is not None:
                arms.append(Arm("health/service (baseline)", metered([base.proc.pid], lambda: wrk(  # type: ignore
                    f"{base.url}/v1/health/service/web?passing", args.connections, args.duration).as_dict())))
            alternate(arms, args.rounds)
            ceiling, same_size, ours = arms[:3]
            report("http_health", {
                "connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                "hello_rps": ceiling.median("rps"), "hello_p99_ms": ceiling.median("p99_ms"),
                "health_rps": ours.median("rps"), "health_p50_ms": ours.median("p50_ms"),
                "health_p99_ms": ours.median("p99_ms"),
                "same_size_static_rps": same_size.median("rps"), "body_bytes": body_file.stat().st_size,
                "ratio": ours.median("rps") / ceiling.median("rps"), "goal": 0.7,
                "ratio_vs_same_size_static": ours.median("rps") / same_size.median("rps"),
                "cpu_s_per_1k": {a.name: a.median("cpu_s_per_1k") for a in arms},
                **({"baseline_rps": arms[3].median("rps"), "baseline_p99_ms": arms[3].median("p99_ms"),
                    "baseline_ratio": arms[3].median("rps") / ceiling.median("rps")} if base is not None else {}),
            })
        finally:
            hello.stop()
            agent.stop()
            if base is not None:
                base.stop()


if __name__ == "__main__":
    main()
