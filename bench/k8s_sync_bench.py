"""k8s-sync at scale: N Services × M endpoints applied with `kubectl apply` to the Kubernetes API test server.

Arm "k8s-sync": a fresh dev agent and a running syncer; `kubectl apply -f` of every Service and
EndpointSlice; measured: seconds from the start of `kubectl apply` until every instance is passing in the
catalog (goal < 10 s for 1,000 × 10), Raft writes used (the agent's applied index; goal ≤ 1 per 64
instances), Raft writes during a quiet window afterwards, scaled to a minute (goal 0), and CPU seconds per
1,000 instances of the syncer and the agent.

Arm "consul-k8s pattern": no consul-k8s binary can run here, so its write pattern is replayed against a
fresh agent of the same build: one /v1/catalog/register per instance (service and readiness check, one
Raft write each), as consul-k8s's syncer does, then its periodic resync — every instance registered again
each 30 s (`-consul-write-interval`) — whose rate at rest is reported from one replayed resync cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import REPO, AgentProcess, report

sys.path.insert(0, str(REPO / "tests" / "k8s"))
from kube import kubectl_binary, start_test_apiserver  # noqa: E402
from syncer_process import SyncerProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
NODE = "k8s-sync"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def manifests(services: int, endpoints: int) -> str:
    docs = []
    for i in range(services):
        name = f"svc-{i:04d}"
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
                     "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-a", "namespace": "bench",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                     "endpoints": [{"addresses": [f"10.{i // 250}.{i % 250}.{j + 1}"], "conditions": {"ready": True}}
                                   for j in range(endpoints)]})
    return "\n---\n".join(json.dumps(d) for d in docs)


def applied_index(agent: AgentProcess) -> int:
    """The agent's Raft applied index (every Raft write, whoever made it)."""
    _, body = agent.get("/v1/agent/self")
    return int(body["Stats"]["raft"]["applied_index"])


def passing(agent: AgentProcess) -> int:
    _, checks = agent.get(f"/v1/health/node/{NODE}")
    return sum(1 for c in checks or [] if c["Status"] == "passing" and c["ServiceID"])


def wait_all_passing(agent: AgentProcess, total: int, t0: float, quiet: float = 0.3) -> float:
    """Seconds from t0 until the write that made every instance passing was applied.

    Polls only the agent's applied Raft index (a small answer); once it has been still for `quiet` seconds the
    (large) health answer is read once to confirm; the time is that of the last index change.
    """
    last_index, last_change = applied_index(agent), time.monotonic()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.02)
        idx = applied_index(agent)
        if idx != last_index:
            last_index, last_change = idx, time.monotonic()
        elif time.monotonic() - last_change >= quiet and passing(agent) >= total:
            return last_change - t0
    raise AssertionError(f"not all {total} instances passing after 300 s")


def syncer_arm(workdir: Path, services: int, endpoints: int, rest: float) -> dict[str, float]:
    total = services * endpoints
    kube = start_test_apiserver(workdir, bookmark_interval=30)
    agent = AgentProcess(workdir / "agent", dev=True)
    agent.start()
    syncer = None
    try:
        kube.kubectl("apply", "-f", "-", input='{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bench"}}',
                     check=True)
        syncer = SyncerProcess(workdir, kube, agent, "--to-k8s=false", "--log-level", "info").start(timeout=30)
        path = workdir / "bench.json"
        path.write_text(manifests(services, endpoints))
        idx0 = applied_index(agent)
        cpu0 = {"syncer": cpu_seconds(syncer.proc.pid), "agent": cpu_seconds(agent.proc.pid),
                "apiserver": cpu_seconds(kube.proc.pid)}
        t0 = time.monotonic()
        res = subprocess.run([kubectl_binary(), "--kubeconfig", str(kube.kubeconfig), "apply", "-f", str(path)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        t_applied = time.monotonic() - t0
        t_all = wait_all_passing(agent, total, t0)
        writes = applied_index(agent) - idx0
        cpu = {"syncer": cpu_seconds(syncer.proc.pid) - cpu0["syncer"], "agent": cpu_seconds(agent.proc.pid) - cpu0["agent"],
               "apiserver": cpu_seconds(kube.proc.pid) - cpu0["apiserver"]}
        idx1 = applied_index(agent)
        time.sleep(rest)
        at_rest = (applied_index(agent) - idx1) * 60 / rest
        return {"all_passing_s": t_all, "kubectl_apply_s": t_applied, "after_apply_s": t_all - t_applied,
                "raft_writes": writes,
                "instances_per_write": total / max(writes, 1), "writes_per_min_at_rest": at_rest,
                "cpu_s_per_1k": (cpu["syncer"] + cpu["agent"]) * 1000 / total,
                "syncer_cpu_s_per_1k": cpu["syncer"] * 1000 / total, "agent_cpu_s_per_1k": cpu["agent"] * 1000 / total,
                "apiserver_cpu_s": cpu["apiserver"]}
    finally:
        if syncer is not None:
            syncer.stop()
        agent.stop()
        kube.stop()


async def register_all(addr: str, services: int, endpoints: int) -> None:
    """consul-k8s's pattern: one catalog registration (service + check) per instance, one after another."""
    async with aiohttp.ClientSession() as http:
        for i in range(services):
            for j in range(endpoints):
                ip = f"10.{i // 250}.{i % 250}.{j + 1}"
                sid = f"svc-{i:04d}-{ip}"
                body = {"Node": NODE, "Address": "127.0.0.1", "SkipNodeUpdate": True,
                        "NodeMeta": {"external-source": "kubernetes"},
                        "Service": {"ID": sid, "Service": f"svc-{i:04d}", "Tags": ["k8s"], "Address": ip, "Port": 8080,
                                    "Meta": {"external-source": "kubernetes", "external-k8s-ns": "bench"}},
                        "Check": {"CheckID": f"bench/{sid}", "Name": "Kubernetes Readiness Check",
                                  "Type": "kubernetes-readiness", "ServiceID": sid, "Status": "passing",
                                  "Output": "Kubernetes health checks passing"}}
                async with http.put(f"http://{addr}/v1/catalog/register", json=body) as resp:
                    assert resp.status == 200, await resp.text()


def pattern_arm(workdir: Path, services: int, endpoints: int) -> dict[str, float]:
    total = services * endpoints
    agent = AgentProcess(workdir / "agent", dev=True)
    agent.start()
    try:
        idx0 = applied_index(agent)
        cpu0 = cpu_seconds(agent.proc.pid), time.process_time()
        t0 = time.monotonic()
        asyncio.run(register_all(agent.addr, services, endpoints))
        t_all = wait_all_passing(agent, total, t0)
        writes = applied_index(agent) - idx0
        cpu = (cpu_seconds(agent.proc.pid) - cpu0[0]) + (time.process_time() - cpu0[1])
        t1, idx1 = time.monotonic(), applied_index(agent)
        asyncio.run(register_all(agent.addr, services, endpoints))  # one resync cycle, every 30 s in consul-k8s
        resync_writes = applied_index(agent) - idx1
        return {"all_passing_s": t_all, "raft_writes": writes, "instances_per_write": total / max(writes, 1),
                "writes_per_min_at_rest": resync_writes * 60 / 30, "resync_cycle_s": time.monotonic() - t1,
                "cpu_s_per_1k": cpu * 1000 / total}
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rest", type=float, default=30.0, help="seconds of quiet measured after the sync")
    ap.add_argument("--no-peer", action="store_true", help="skip the consul-k8s pattern arm")
    args = ap.parse_args()
    load = os.getloadavg()
    arms: dict[str, list[dict[str, float]]] = {"k8s-sync": [], "consul-k8s pattern": []}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            res = syncer_arm(Path(tmp), args.services, args.endpoints, args.rest)
        arms["k8s-sync"].append(res)
        print(f"  round {r + 1} k8s-sync            " + "  ".join(f"{k}={v:,.3g}" for k, v in res.items()), flush=True)
        if not args.no_peer:
            with tempfile.TemporaryDirectory() as tmp:
                res = pattern_arm(Path(tmp), args.services, args.endpoints)
            arms["consul-k8s pattern"].append(res)
            print(f"  round {r + 1} consul-k8s pattern  " + "  ".join(f"{k}={v:,.3g}" for k, v in res.items()),
                  flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in arms.items() if rs}
    out = {"services": args.services, "endpoints": args.endpoints, "instances": args.services * args.endpoints,
           "rounds": args.rounds, "load_before": [round(x, 2) for x in load],
           "load_after": [round(x, 2) for x in os.getloadavg()], "median": med}
    if "consul-k8s pattern" in med:
        a, b = med["k8s-sync"], med["consul-k8s pattern"]
        out["ratios"] = {"all_passing_time_vs_pattern": a["all_passing_s"] / b["all_passing_s"],
                         "raft_writes_vs_pattern": a["raft_writes"] / b["raft_writes"],
                         "cpu_per_1k_vs_pattern": a["cpu_s_per_1k"] / b["cpu_s_per_1k"]}
    report("k8s_sync", out)


if __name__ == "__main__":
    main()
