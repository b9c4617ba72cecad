"""k8s-sync from cluster A to cluster B: through one datacenter, or across two federated ones.

Two Kubernetes API test servers (clusters A and B); syncer A writes cluster A's Services into dc1 (to-consul only),
syncer B mirrors dc1's catalog into cluster B as ExternalName Services (to-k8s only). The arms differ only in where
syncer B's agent is:

- "two datacenters": dc2's agent, WAN-federated with dc1; syncer B reads dc1 with `--to-k8s-datacenter dc1`
  (blocking queries forwarded over the WAN);
- "one datacenter" (the peer): dc1's agent itself, as in a single-datacenter setup.

Measured per round: seconds from the start of `kubectl apply` of N Services (+ EndpointSlices) in cluster A until
all N are Services in cluster B; the median of single-Service latencies (one more Service applied, until it is in
cluster B); seconds from `kubectl delete` of them all until cluster B has none; CPU seconds of both syncers and
the agent(s) per 1,000 Services carried (create + delete).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import REPO, AgentProcess, Arm, alternate, cpu_seconds, loadavg, report, wait_for

sys.path.insert(0, str(REPO / "tests" / "k8s"))
from kube import KubeApi, kubectl_binary, start_test_apiserver  # noqa: E402
from syncer_process import SyncerProcess  # noqa: E402

MIRRORED = "labelSelector=synced-from-consul%3Dtrue"


def manifests(names: list[str]) -> str:
    docs = []
    for i, name in enumerate(names):
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
                     "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-a", "namespace": "bench",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                     "endpoints": [{"addresses": [f"10.{i // 250}.{i % 250}.{j + 1}"], "conditions": {"ready": True}}
                                   for j in range(2)]})
    return "\n---\n".join(json.dumps(d) for d in docs)


def mirrored(kube: KubeApi) -> set[str]:
    """Names of the Services syncer B wrote in cluster B (one small list straight from the API server)."""
    with urllib.request.urlopen(f"{kube.url}/api/v1/namespaces/default/services?{MIRRORED}", timeout=10) as r:
        return {i["metadata"]["name"] for i in json.loads(r.read())["items"]}


def until(cond: object, t0: float, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError("timed out")


def kubectl(kube: KubeApi, *args: str, input: str | None = None) -> None:
    res = subprocess.run([kubectl_binary(), "--kubeconfig", str(kube.kubeconfig), *args], capture_output=True,
                         text=True, input=input, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def run(services: int, singles: int, federated: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        conf = tmp / "wan.json"
        conf.write_text(json.dumps({"gossip_wan": {"probe_interval": "200ms", "probe_timeout": "100ms"}}))
        dc1 = AgentProcess(tmp / "dc1", args=["--node", "a", "--datacenter", "dc1", "--config-file", str(conf)])
        agents = [dc1]
        if federated:
            agents.append(AgentProcess(tmp / "dc2", args=["--node", "b", "--datacenter", "dc2", "--config-file",
                                                          str(conf), "--retry-join-wan",
                                                          f"127.0.0.1:{dc1.serf_wan_port}"]))
        procs: list[object] = []
        try:
            for a in agents:
                a.start()
                procs.append(a)
            kube_a = start_test_apiserver(_dir(tmp / "a"), bookmark_interval=30)
            procs.append(kube_a)
            kube_b = start_test_apiserver(_dir(tmp / "b"), bookmark_interval=30)
            procs.append(kube_b)
            kubectl(kube_a, "apply", "-f", "-", input='{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bench"}}')
            if federated:
                wait_for(lambda: "dc1" in agents[1].get("/v1/catalog/datacenters")[1], 20, message="the WAN")
            extra = ["--to-k8s-datacenter", "dc1"] if federated else []
            sync_a = SyncerProcess(tmp, kube_a, dc1, "--to-k8s=false", "--k8s-source-namespace", "bench",
                                   "--consul-node-name", "sync-a", "--consul-k8s-tag", "k8s-a", "--log-level", "info")
            sync_b = SyncerProcess(tmp, kube_b, agents[-1], "--to-consul=false", "--consul-node-name", "sync-b",
                                   "--consul-k8s-tag", "k8s-b", "--log-level", "info", *extra)
            for s in (sync_a, sync_b):
                procs.append(s)
                s.start(timeout=30)
            pids = [p.proc.pid for p in (*agents, sync_a, sync_b)]  # type: ignore[union-attr]
            names = [f"svc-{i:04d}" for i in range(services)]
            path = tmp / "bench.json"
            path.write_text(manifests(names))
            cpu0 = cpu_seconds(pids)
            t0 = time.monotonic()
            kubectl(kube_a, "apply", "-f", str(path))
            t_all = until(lambda: len(mirrored(kube_b)) >= services, t0)
            single = []
            for i in range(singles):
                name = f"one-{i}"
                t1 = time.monotonic()
                kubectl(kube_a, "apply", "-f", "-", input=manifests([name]))
                single.append(until(lambda n=name: n in mirrored(kube_b), t1))
            t2 = time.monotonic()
            kubectl(kube_a, "delete", "svc", "-n", "bench", "--all", "--wait=false")
            t_gone = until(lambda: not mirrored(kube_b), t2)
            cpu = cpu_seconds(pids) - cpu0
            return {"all_in_b_s": t_all, "single_in_b_s": statistics.median(single), "all_gone_s": t_gone,
                    "cpu_s_per_1k": cpu * 1000 / (services + singles), "load1": loadavg()[0]}
        finally:
            for p in reversed(procs):
                p.stop()  # type: ignore[attr-defined]


def _dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=300)
    ap.add_argument("--singles", type=int, default=5, help="single-Service latencies measured per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load = loadavg()
    arms = [Arm("two datacenters", lambda: run(args.services, args.singles, True)),
            Arm("one datacenter", lambda: run(args.services, args.singles, False))]
    alternate(arms, args.rounds)
    med = {a.name: {k: a.median(k) for k in a.results[0]} for a in arms}
    two, one = med["two datacenters"], med["one datacenter"]
    report("k8s_sync_federation", {
        "services": args.services, "rounds": args.rounds, "load_before": load, "load_after": loadavg(),
        "median": med, "ratios": {k: two[k] / one[k] for k in ("all_in_b_s", "single_in_b_s", "all_gone_s",
                                                                 "cpu_s_per_1k") if one[k]}})


if __name__ == "__main__":
    main()
