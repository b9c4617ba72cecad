"""Federation: a read answered by another datacenter vs the same read answered locally, and the
replication lag of intention writes from the primary to a secondary.

Two dev agents on 127.0.0.1 (dc1, the primary, and dc2), joined over the WAN. Arms, alternated:
`wrk GET /v1/kv/bench` on dc1's agent (local) and `…?dc=dc2` on the same agent (forwarded to dc2's
server and back). Reported: requests/s, p50, p99, the cross/local ratio, and CPU seconds per 1,000
requests of both agents together. Then N intentions are written to dc1 (8 writers) and the time
until dc2's replica holds all of them is measured after the last write was acknowledged.

With `--gateways`: nginx in dc2 behind a sidecar, a dc1 client sidecar with two upstreams to it —
one straight to dc2's sidecar (mode none), one through dc1's and dc2's mesh gateways (mode local) —
and `wrk` through each, alternated; CPU counts the proxies and gateways.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (
    AgentProcess,
    Arm,
    Background,
    CpuMeter,
    alternate,
    free_port,
    http_json,
    report,
    wait_for,
    wrk,
)


def start(tmp: Path) -> tuple[AgentProcess, AgentProcess]:
    conf = tmp / "fed.json"
    conf.write_text(json.dumps({"primary_datacenter": "dc1", "gossip_wan": {"probe_interval": "500ms", "probe_timeout": "250ms"}}))
    a = AgentProcess(tmp / "a", dev=True, args=["--node", "a", "--datacenter", "dc1", "--log-level", "warn",
                                                 "--config-file", str(conf)])
    a.start()
    b = AgentProcess(tmp / "b", dev=True, args=["--node", "b", "--datacenter", "dc2", "--log-level", "warn",
                                                 "--config-file", str(conf),
                                                 "--retry-join-wan", f"127.0.0.1:{a.serf_wan_port}"])
    b.start()
    wait_for(lambda: len(http_json("GET", f"{a.url}/v1/catalog/datacenters")) == 2, 20, message="the WAN join")
    return a, b


def measured(url: str, agents: list[AgentProcess], connections: int, duration: float) -> dict[str, float]:
    meter = CpuMeter([ag.proc.pid for ag in agents if ag.proc is not None])
    meter.start()
    r = wrk(url, connections, duration).as_dict()
    cpu = meter.stop()
    r["cpu_s_per_1k"] = cpu * 1000 / max(r["rps"] * duration, 1)
    return r


def replication_lag(a: AgentProcess, b: AgentProcess, n: int, writers: int = 8) -> dict[str, float]:
    start = time.monotonic()

    def write(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            http_json("POST", f"{a.url}/v1/connect/intentions",
                      {"SourceName": f"src-{i}", "DestinationName": f"dst-{i % 50}", "Action": "allow"})

    step = (n + writers - 1) // writers
    threads = [threading.Thread(target=write, args=(i, min(i + step, n))) for i in range(0, n, step)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = time.monotonic()
    wait_for(lambda: len(http_json("GET", f"{b.url}/v1/connect/intentions?stale")) >= n, 120, interval=0.01,
             message="dc2 to hold every intention")
    done = time.monotonic()
    return {"writes": n, "write_s": written - start, "writes_per_s": n / (written - start),
            "lag_after_last_write_s": done - written, "total_s": done - start}


def gateway_arms(tmp: Path, a: AgentProcess, b: AgentProcess, args: argparse.Namespace) -> dict[str, object]:
    from proxy_bench import _curl, nginx

    app = free_port()
    (tmp / "nginx").mkdir()
    web = nginx(tmp / "nginx", app, None)
    direct, via = free_port(), free_port()
    assert b.put("/v1/agent/service/register", {"Name": "nginx", "Port": app,
                                                 "Connect": {"SidecarService": {"Port": free_port()}}})[0] == 200
    ups = [{"DestinationName": "nginx", "Datacenter": "dc2", "LocalBindPort": direct, "MeshGateway": {"Mode": "none"}},
           {"DestinationName": "nginx", "Datacenter": "dc2", "LocalBindPort": via, "MeshGateway": {"Mode": "local"}}]
    assert a.put("/v1/agent/service/register", {"Name": "client", "Port": 1, "Connect": {"SidecarService": {
        "Port": free_port(), "Proxy": {"Upstreams": ups}}}})[0] == 200
    cli = [sys.executable, "-m", "proconsul.agent.cli", "connect", "proxy", "-log-level", "warn"]
    procs = [Background([*cli, "-sidecar-for", "nginx", "-http-addr", b.addr, "-admin-bind", "off"]),
             Background([*cli, "-sidecar-for", "client", "-http-addr", a.addr, "-admin-bind", "off"])]
    for agent in (a, b):
        port = free_port()
        procs.append(Background([*cli, "-mesh-gateway", "-register", "-address", f"127.0.0.1:{port}",
                                 "-http-addr", agent.addr]))
    try:
        for port in (direct, via):
            wait_for(lambda p=port: _curl(f"http://127.0.0.1:{p}/") == "ok\n", 30, message="traffic through the mesh")
        pids = [p.proc.pid for p in procs]

        def arm(port: int) -> dict[str, float]:
            meter = CpuMeter(pids)
            meter.start()
            r = wrk(f"http://127.0.0.1:{port}/", args.connections, args.duration).as_dict()
            r["cpu_s_per_1k"] = meter.stop() * 1000 / max(r["rps"] * args.duration, 1)
            return r

        arms = [Arm("sidecar -> sidecar (direct)", lambda: arm(direct)),
                Arm("via two mesh gateways", lambda: arm(via))]
        alternate(arms, args.rounds)
        d, g = arms
        return {"direct": {k: d.median(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k")},
                "gateways": {k: g.median(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k")},
                "ratio_rps_gateways_vs_direct": g.median("rps") / d.median("rps")}
    finally:
        for p in procs:
            p.stop()
        if web is not None:
            web.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--intentions", type=int, default=1000)
    ap.add_argument("--gateways", action="store_true", help="also measure traffic through two mesh gateways")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = start(Path(tmp))
        try:
            http_json("PUT", f"{a.url}/v1/kv/bench", "x" * 20)
            http_json("PUT", f"{b.url}/v1/kv/bench", "x" * 20)
            assert http_json("GET", f"{a.url}/v1/kv/bench?dc=dc2")[0]["Key"] == "bench"
            agents = [a, b]
            arms = [Arm("local read (dc1)", lambda: measured(f"{a.url}/v1/kv/bench", agents, args.connections,
                                                            args.duration)),
                    Arm("cross-DC read (dc1 -> dc2)", lambda: measured(f"{a.url}/v1/kv/bench?dc=dc2", agents,
                                                                     args.connections, args.duration))]
            load = os.getloadavg()[0]
            alternate(arms, args.rounds)
            local, cross = arms
            lag = replication_lag(a, b, args.intentions)
            gateways = gateway_arms(Path(tmp), a, b, args) if args.gateways else None
            report("federation", {
                "connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                "load_1m_before": load, "load_1m_after": os.getloadavg()[0],
                "local": {k: local.median(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k")},
                "cross_dc": {k: cross.median(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k")},
                "ratio_rps_cross_vs_local": cross.median("rps") / local.median("rps"),
                "ratio_p50_cross_vs_local": cross.median("p50_ms") / local.median("p50_ms"),
                "replication": lag, "gateways": gateways,
            })
        finally:
            b.stop()
            a.stop()


if __name__ == "__main__":
    main()
