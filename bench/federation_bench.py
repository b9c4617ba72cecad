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
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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


class Prober:
    """Requests in a loop on a sidecar's upstream port (a new connection each, as a client would make), each
    recorded as (monotonic start, backend that answered or "" for an error)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import urllib.request
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as r:
                    self.seen.append((t, json.loads(r.read())["backend"]))
            except (OSError, ValueError, KeyError):
                self.seen.append((t, ""))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def switched(self, since: float, to: str, timeout: float = 30.0) -> dict[str, float]:
        """Seconds from `since` to the first answer from `to`, and the requests that failed in between."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = next((t for t, b in list(self.seen) if t >= since and b == to), None)
            if first is not None:
                failed = sum(1 for t, b in self.seen if since <= t < first and not b)
                return {"failover_s": max(first - since, 0.0), "failed_requests": failed}
            time.sleep(0.005)
        raise TimeoutError(f"no answer from {to} within {timeout:g}s")


def failover_arms(tmp: Path, a: AgentProcess, b: AgentProcess, args: argparse.Namespace) -> dict[str, object]:
    """How long a sidecar takes to fail over when its local target's instance goes critical: to a target in
    dc2 through two mesh gateways (the chain's `Failover { Datacenters = ["dc2"] }`) vs to another service in
    the same datacenter (`Failover { Service = … }`, the peer: the same mechanism without the WAN). Arms
    alternated, `--rounds` each; then once each with the instance's sidecar killed (SIGKILL) instead."""
    from support_mesh import Backends

    backends = Backends()
    cli = [sys.executable, "-m", "proconsul.agent.cli", "connect", "proxy", "-log-level", "warn"]
    procs: dict[str, Background] = {}
    xdc, same = free_port(), free_port()
    for kind, entry in (("proxy-defaults", {"Name": "global", "MeshGateway": {"Mode": "local"}}),
                        ("service-resolver", {"Name": "api", "Failover": {"*": {"Datacenters": ["dc2"]}}}),
                        ("service-resolver", {"Name": "svc", "Failover": {"*": {"Service": "svc-backup"}}})):
        http_json("PUT", f"{a.url}/v1/config", {"Kind": kind, **entry})
    wait_for(lambda: b.get("/v1/config/service-resolver/api")[0] == 200, 10, message="replication to dc2")
    for agent, sid, name, backend in ((a, "api", "api", "api-dc1"), (b, "api", "api", "api-dc2"),
                                      (a, "svc", "svc", "svc-main"), (a, "svc-backup", "svc-backup", "svc-backup")):
        assert agent.put("/v1/agent/service/register", {"ID": sid, "Name": name, "Port": backends.http(backend),
                                                         "Connect": {"SidecarService": {"Port": free_port()}}})[0] == 200
    ups = [{"DestinationName": "api", "LocalBindPort": xdc}, {"DestinationName": "svc", "LocalBindPort": same}]
    assert a.put("/v1/agent/service/register", {"Name": "client", "Port": 1, "Connect": {"SidecarService": {
        "Port": free_port(), "Proxy": {"Upstreams": ups}}}})[0] == 200

    def sidecar(agent: AgentProcess, sid: str) -> Background:
        return Background([*cli, "-sidecar-for", sid, "-http-addr", agent.addr, "-admin-bind", "off"])

    procs["api-dc1"], procs["api-dc2"] = sidecar(a, "api"), sidecar(b, "api")
    procs["svc"], procs["svc-backup"], procs["client"] = sidecar(a, "svc"), sidecar(a, "svc-backup"), sidecar(a, "client")
    for i, agent in enumerate((a, b)):
        port = free_port()
        procs[f"gw{i}"] = Background([*cli, "-mesh-gateway", "-register", "-address", f"127.0.0.1:{port}",
                                      "-wan-address", f"127.0.0.1:{port}", "-http-addr", agent.addr])

    def backend(port: int) -> str:
        try:
            return str(http_json("GET", f"http://127.0.0.1:{port}/")["backend"])
        except OSError:
            return ""

    try:
        wait_for(lambda: backend(xdc) == "api-dc1" and backend(same) == "svc-main", 30, message="traffic")
        wait_for(lambda: len(b.get("/v1/health/connect/api?passing")[1]) == 1, 30, message="dc2's api passing")
        wait_for(lambda: len(a.get("/v1/health/service/mesh-gateway?passing")[1]) == 1, 30, message="dc1 gateway")

        def critical(port: int, sid: str, to: str, back: str) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                with Prober(port) as p:
                    wait_for(lambda: any(b_ == back for _, b_ in p.seen[-3:]), 10, message="the local target")
                    t = time.monotonic()
                    a.put(f"/v1/agent/service/maintenance/{sid}?enable=true&reason=bench")
                    r = p.switched(t, to)
                    a.put(f"/v1/agent/service/maintenance/{sid}?enable=false")
                    t = time.monotonic()
                    r["failback_s"] = p.switched(t, back)["failover_s"]
                return r
            return run

        arms = [Arm("critical: failover to dc2 via gateways", critical(xdc, "api", "api-dc2", "api-dc1")),
                Arm("critical: failover in dc1 (peer)", critical(same, "svc", "svc-backup", "svc-main"))]
        alternate(arms, args.rounds)
        x, s = arms
        out: dict[str, object] = {
            "critical_cross_dc": {k: x.median(k) for k in ("failover_s", "failed_requests", "failback_s")},
            "critical_same_dc": {k: s.median(k) for k in ("failover_s", "failed_requests", "failback_s")},
        }
        for key, port, proc, to in (("killed_cross_dc", xdc, "api-dc1", "api-dc2"),
                                    ("killed_same_dc", same, "svc", "svc-backup")):
            with Prober(port) as p:
                time.sleep(0.2)
                t = time.monotonic()
                os.killpg(procs[proc].proc.pid, 9)
                out[key] = p.switched(t, to)
        out["query"] = query_failover(a, b, args.rounds)
        return out
    finally:
        for proc in procs.values():
            proc.stop()
        backends.close()


def query_failover(a: AgentProcess, b: AgentProcess, rounds: int) -> dict[str, float]:
    """A prepared query's failover: seconds from its only local instance turning critical to the first
    execute answered by dc2, and the execute latency failed over vs answered locally (the peer)."""
    http_json("PUT", f"{a.url}/v1/catalog/register", {"Node": "q1", "Address": "127.0.0.41", "Service": {
        "Service": "pq", "Port": 1}, "Check": {"CheckID": "pq-h", "Name": "h", "ServiceID": "pq", "Status": "passing"}})
    http_json("PUT", f"{b.url}/v1/catalog/register", {"Node": "q2", "Address": "127.0.0.42",
                                                       "Service": {"Service": "pq", "Port": 2}})
    http_json("POST", f"{a.url}/v1/query", {"Name": "pq", "Service": {"Service": "pq", "OnlyPassing": True,
                                                                        "Failover": {"Datacenters": ["dc2"]}}})

    def status(s: str) -> None:
        http_json("PUT", f"{a.url}/v1/catalog/register", {"Node": "q1", "Address": "127.0.0.41", "Service": {
            "Service": "pq", "Port": 1}, "Check": {"CheckID": "pq-h", "Name": "h", "ServiceID": "pq", "Status": s}})

    def latency(n: int = 200) -> float:
        t = time.monotonic()
        for _ in range(n):
            http_json("GET", f"{a.url}/v1/query/pq/execute")
        return (time.monotonic() - t) / n * 1000

    switch, local, remote = [], [], []
    for _ in range(rounds):
        status("passing")
        local.append(latency())
        t = time.monotonic()
        status("critical")
        wait_for(lambda: http_json("GET", f"{a.url}/v1/query/pq/execute")["Datacenter"] == "dc2", 30, interval=0.001,
                 message="the query answered by dc2")
        switch.append(time.monotonic() - t)
        remote.append(latency())
    return {"critical_to_dc2_answer_s": statistics.median(switch), "execute_local_ms": statistics.median(local),
            "execute_failed_over_ms": statistics.median(remote),
            "ratio_failed_over_vs_local": statistics.median(remote) / statistics.median(local)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--intentions", type=int, default=1000)
    ap.add_argument("--gateways", action="store_true", help="also measure traffic through two mesh gateways")
    ap.add_argument("--failover", action="store_true", help="also measure cross-datacenter failover time (a "
                    "sidecar's discovery chain through mesh gateways, and a prepared query)")
    ap.add_argument("--only-failover", action="store_true", help="measure only the failover figures")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = start(Path(tmp))
        try:
            if args.only_failover:
                load = os.getloadavg()[0]
                fo = failover_arms(Path(tmp), a, b, args)
                report("federation_failover", {"rounds": args.rounds, "load_1m_before": load,
                                               "load_1m_after": os.getloadavg()[0], "failover": fo})
                return
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
            failover = failover_arms(Path(tmp), a, b, args) if args.failover else None
            report("federation", {
                "connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                "load_1m_before": load, "load_1m_after": os.getloadavg()[0],
                "local": {k: local.median(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k")},
                "cross_dc": {k: cross.median(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k")},
                "ratio_rps_cross_vs_local": cross.median("rps") / local.median("rps"),
                "ratio_p50_cross_vs_local": cross.median("p50_ms") / local.median("p50_ms"),
                "replication": lag, "gateways": gateways, "failover": failover,
            })
        finally:
            b.stop()
            a.stop()


if __name__ == "__main__":
    main()
