"""Catalog writes through Raft: three Proconsul servers vs three etcd servers (PERFORMANCE.md §1).

Both clusters run as three processes on 127.0.0.1 with data on disk and fsync on. The same wrk
Lua script shape writes 1,000 distinct keys with 20-byte values (Proconsul: PUT /v1/kv/<key>;
etcd: POST /v3/kv/put on its JSON gateway) at 1 and 16 connections to the leader and 64 through a
follower, 8 s per arm, arms alternating. Goal: ≥ 1.0× etcd's writes/s at 16 and 64, p99 ≤ etcd's,
and CPU per write ≤ etcd's: every arm also reports CPU seconds per 1,000 writes, summed over its
three servers. `--cpus N` pins all six servers and wrk to the first N cores (a small machine).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import tempfile
import time
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
    loadavg,
    metered_wrk,
    need,
    pin,
    pinned,
    report,
    wait_for,
)

KEYS = 1000
VALUE = b"v" * 20


def lua_script(path: Path, kind: str) -> str:
    if kind == "etcd":
        bodies = [json.dumps({"key": base64.b64encode(f"bench/key{i}".encode()).decode(),
                              "value": base64.b64encode(VALUE).decode()}) for i in range(KEYS)]
        table = ",\n".join(f"  [[{b}]]" for b in bodies)
        body = f"""local bodies = {{
{table}
}}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v3/kv/put", {{["Content-Type"] = "application/json"}}, bodies[(n % {KEYS}) + 1])
end
"""
    else:
        body = f"""local n = 0
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/kv/bench/key" .. (n % {KEYS}), nil, "{VALUE.decode()}")
end
"""
    path.write_text(body)
    return str(path)


class Etcd:
    def __init__(self, root: Path, cpus: int | None = None) -> None:
        need("etcd", "etcd-server")
        self.members = [(f"e{i}", free_port(), free_port()) for i in range(3)]
        cluster = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, _, peer in self.members)
        self.procs = []
        for name, client, peer in self.members:
            d = root / name
            self.procs.append(Background(pinned([
                "etcd", "--name", name, "--data-dir", str(d),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "bench"], cpus)))
        wait_for(self.leader, 30, 0.2, "etcd leader")
        self.pids = [p.proc.pid for p in self.procs]

    def status(self, client: int) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{client}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def leader(self) -> int | None:
        for _, client, _ in self.members:
            try:
                st = self.status(client)
            except OSError:
                return None
            if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                return client
        return None

    def follower(self) -> int:
        lead = self.leader()
        return next(c for _, c, _ in self.members if c != lead)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


class Proconsul:
    def __init__(self, root: Path, cpus: int | None = None, env: dict[str, str] | None = None) -> None:
        self.servers = [AgentProcess(root / f"p{i}", dev=False, env=env) for i in range(3)]
        serf = [free_port() for _ in self.servers]
        for i, s in enumerate(self.servers):
            s.extra_args = ["--server", "--bootstrap-expect", "3", "--node", f"p{i}", "--data-dir",
                            str(root / f"p{i}" / "data"), "--serf-lan-port", str(serf[i]), "--log-level", "warn"]
            for j in range(3):
                if j != i:
                    s.extra_args += ["--retry-join", f"127.0.0.1:{serf[j]}"]
        for s in self.servers:
            s.workdir.mkdir(parents=True, exist_ok=True)
            s.start_background()
        self.pids = [s.proc.pid for s in self.servers]  # type: ignore[union-attr]
        pin(self.pids, cpus)
        for s in self.servers:
            s.wait_ready(60)

    def leader(self) -> AgentProcess:
        addr = self.servers[0].get("/v1/status/leader")[1]
        return next(s for s in self.servers if addr.endswith(f":{s.server_port}"))

    def follower(self) -> AgentProcess:
        lead = self.leader()
        return next(s for s in self.servers if s is not lead)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="1,16,64")
    ap.add_argument("--cpus", type=int, default=None, help="pin every server and wrk to the first N cores")
    add_baseline_options(ap)
    args = ap.parse_args()
    need("wrk", "wrk")
    root = Path(tempfile.mkdtemp(prefix="raftbench-"))
    etcd = Etcd(root / "etcd", args.cpus)
    load = [loadavg()]
    try:
        try:
            pc = Proconsul(root / "proconsul", args.cpus)
            label, env = baseline(args, root) or ("", None)
            base = Proconsul(root / "base", args.cpus, env) if env else None
        except Exception as e:  # clustering not available: still measure the peer, and say why
            print(f"Proconsul arm unavailable: {e}")
            pc = None
        results = {}
        for conns in [int(c) for c in args.connections.split(",")]:
            via_follower = conns >= 64
            arms = [Arm(f"etcd c={conns}", lambda c=conns, f=via_follower: metered_wrk(
                f"http://127.0.0.1:{etcd.follower() if f else etcd.leader()}", etcd.pids, c, args.duration,
                script=lua_script(root / "etcd.lua", "etcd"), cpus=args.cpus))]
            if pc is not None:
                arms.append(Arm(f"proconsul c={conns}", lambda c=conns, f=via_follower: metered_wrk(
                    (pc.follower() if f else pc.leader()).url, pc.pids, c, args.duration,
                    script=lua_script(root / "pc.lua", "proconsul"), cpus=args.cpus)))
            if pc is not None and base is not None:
                arms.append(Arm(f"proconsul@{label} c={conns}", lambda c=conns, f=via_follower: metered_wrk(
                    (base.follower() if f else base.leader()).url, base.pids, c, args.duration,
                    script=lua_script(root / "pc.lua", "proconsul"), cpus=args.cpus)))
            alternate(arms, args.rounds)
            row = {"via": "follower" if via_follower else "leader",
                   "etcd_wps": arms[0].median("rps"), "etcd_p50_ms": arms[0].median("p50_ms"),
                   "etcd_p99_ms": arms[0].median("p99_ms"), "etcd_errors": arms[0].median("errors"),
                   "etcd_cpu_s_per_1k": arms[0].median("cpu_s_per_1k")}
            if pc is not None:
                row.update({"proconsul_wps": arms[1].median("rps"), "proconsul_p50_ms": arms[1].median("p50_ms"),
                            "proconsul_p99_ms": arms[1].median("p99_ms"), "proconsul_errors": arms[1].median("errors"),
                            "proconsul_cpu_s_per_1k": arms[1].median("cpu_s_per_1k"),
                            "ratio": arms[1].median("rps") / arms[0].median("rps"),
                            "cpu_ratio": arms[1].median("cpu_s_per_1k") / arms[0].median("cpu_s_per_1k")})
            if len(arms) > 2:
                row.update({"base_wps": arms[2].median("rps"), "base_p99_ms": arms[2].median("p99_ms"),
                            "base_cpu_s_per_1k": arms[2].median("cpu_s_per_1k"),
                            "vs_base": arms[1].median("rps") / arms[2].median("rps"),
                            "cpu_vs_base": arms[1].median("cpu_s_per_1k") / arms[2].median("cpu_s_per_1k")})
            results[f"c{conns}"] = row
            load.append(loadavg())
        report("raft_writes", {"duration_s": args.duration, "rounds": args.rounds, "pinned_cpus": args.cpus,
                               "load": load, "results": results,
                               "goal": ">= 1.0x etcd writes/s at 16 and 64, p99 <= etcd's, CPU/1k <= etcd's"})
    finally:
        etcd.stop()
        for cluster in (locals().get("pc"), locals().get("base")):
            if cluster is not None:
                cluster.stop()
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
