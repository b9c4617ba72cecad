"""HTTP API: GET /v1/health/service/web?passing with 50 instances vs an aiohttp hello-world.

PERFORMANCE.md §4. Goal: ≥ 0.7× the hello-world's requests/s, wrk -c16, same machine, same run
(issue 17: ≥ 0.8× on a busy machine). Every arm also reports its server's CPU seconds per 1,000
requests; `--cpus N` pins the agent, the hello-world server and wrk to the first N cores;
`--base GIT_REF` or `--baseline-tree DIR` adds another version as one more arm; `--kv` adds GETs of one
KV key (on each agent).
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
    add_baseline_options,
    alternate,
    baseline,
    free_port,
    http_json,
    loadavg,
    metered_wrk,
    pin,
    pinned,
    report,
    wait_for,
)

HERE = Path(__file__).resolve().parent


KV_PATH = "/v1/kv/bench/config"


def seed(agent: AgentProcess, instances: int) -> None:
    req = urllib.request.Request(f"{agent.url}{KV_PATH}", data=b"x" * 20, method="PUT")
    urllib.request.urlopen(req, timeout=60).close()  # the KV arm's key: a 20-byte value
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
    ap.add_argument("--cpus", type=int, default=None, help="pin both servers and wrk to the first N cores")
    ap.add_argument("--kv", action="store_true", help="also GET one KV key (20-byte value) on each agent")
    add_baseline_options(ap)
    args = ap.parse_args()
    cpus = args.cpus

    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), dev=True, args=["--log-level", "warn"])
        agent.start()
        pin([agent.proc.pid], cpus)  # type: ignore[union-attr]
        label, env = baseline(args, Path(tmp)) or ("", None)
        base = None
        if env is not None:
            base = AgentProcess(Path(tmp) / "baseline", dev=True, args=["--log-level", "warn"], env=env)
            base.start()
            pin([base.proc.pid], cpus)  # type: ignore[union-attr]
            seed(base, 50)
        hello_port = free_port()
        seed(agent, 50)
        entries = http_json("GET", f"{agent.url}/v1/health/service/web?passing")
        assert len(entries) == 50, len(entries)
        body_file = Path(tmp) / "body.json"
        with urllib.request.urlopen(f"{agent.url}/v1/health/service/web?passing") as resp:
            body_file.write_bytes(resp.read())
        hello = Background(pinned([sys.executable, str(HERE / "hello_aiohttp.py"), str(hello_port), str(body_file)],
                                  cpus))
        hpid, apid = hello.proc.pid, agent.proc.pid  # type: ignore[union-attr]
        load = [loadavg()]
        try:
            wait_for(lambda: http_json("GET", f"http://127.0.0.1:{hello_port}/"), message="hello server")
            arms = [
                Arm("aiohttp hello-world", lambda: metered_wrk(f"http://127.0.0.1:{hello_port}/", [hpid],
                                                               args.connections, args.duration, cpus=cpus)),
                Arm("aiohttp same-size static body", lambda: metered_wrk(
                    f"http://127.0.0.1:{hello_port}/static", [hpid], args.connections, args.duration, cpus=cpus)),
                Arm("health/service?passing", lambda: metered_wrk(
                    f"{agent.url}/v1/health/service/web?passing", [apid], args.connections, args.duration,
                    cpus=cpus)),
            ]
            if base is not None:
                bpid = base.proc.pid  # type: ignore[union-attr]
                arms.append(Arm(f"health/service@{label}", lambda: metered_wrk(
                    f"{base.url}/v1/health/service/web?passing", [bpid], args.connections, args.duration,
                    cpus=cpus)))
            kv_arms = []
            if args.kv:
                kv_arms.append(Arm("kv read", lambda: metered_wrk(f"{agent.url}{KV_PATH}", [apid], args.connections,
                                                                  args.duration, cpus=cpus)))
                if base is not None:
                    kv_arms.append(Arm(f"kv read@{label}", lambda: metered_wrk(
                        f"{base.url}{KV_PATH}", [bpid], args.connections, args.duration, cpus=cpus)))
            alternate(arms + kv_arms, args.rounds)
            load.append(loadavg())
            ceiling, same_size, ours = arms[:3]
            kv = {f"kv{'_baseline' if i else ''}_{k}": arm.median(m) for i, arm in enumerate(kv_arms)
                  for k, m in (("rps", "rps"), ("cpu_s_per_1k", "cpu_s_per_1k"), ("p99_ms", "p99_ms"))}
            if kv:
                kv["kv_ratio"] = kv["kv_rps"] / ceiling.median("rps")
            report("http_health", {
                "connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                "pinned_cpus": cpus, "load": load,
                "hello_rps": ceiling.median("rps"), "hello_p99_ms": ceiling.median("p99_ms"),
                "hello_cpu_s_per_1k": ceiling.median("cpu_s_per_1k"),
                "same_size_static_cpu_s_per_1k": same_size.median("cpu_s_per_1k"),
                "health_cpu_s_per_1k": ours.median("cpu_s_per_1k"),
                "health_rps": ours.median("rps"), "health_p50_ms": ours.median("p50_ms"),
                "health_p99_ms": ours.median("p99_ms"),
                "same_size_static_rps": same_size.median("rps"), "body_bytes": body_file.stat().st_size,
                "ratio": ours.median("rps") / ceiling.median("rps"), "goal": 0.8,
                "ratio_vs_same_size_static": ours.median("rps") / same_size.median("rps"),
                **({"baseline_rps": arms[3].median("rps"), "baseline_p99_ms": arms[3].median("p99_ms"),
                    "baseline_cpu_s_per_1k": arms[3].median("cpu_s_per_1k"),
                    "baseline_ratio": arms[3].median("rps") / ceiling.median("rps")} if base is not None else {}),
                **kv,
            })
        finally:
            hello.stop()
            agent.stop()
            if base is not None:
                base.stop()


if __name__ == "__main__":
    main()
