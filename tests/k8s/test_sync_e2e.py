"""k8s-sync end to end: a real syncer process between the test API server (driven with kubectl) and a real
dev agent; the catalog is read back over the agent's HTTP API."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent))

from kube import KubeApi, start_test_apiserver  # noqa: E402
from support import CLI, AgentProcess, wait_for  # noqa: E402
from syncer_process import SyncerProcess, apply, endpoint_slice, instances, service  # noqa: E402

pytestmark = pytest.mark.xdist_group("k8s-sync")


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    return shared_dev_agent


@pytest.fixture
def syncers(tmp_path: Path) -> Iterator[list[SyncerProcess]]:
    started: list[SyncerProcess] = []
    yield started
    for s in started:
        s.stop()


def run_syncer(syncers: list[SyncerProcess], tmp_path: Path, kube: KubeApi, agent: AgentProcess, ns: str,
               *args: str, ready: bool = True) -> SyncerProcess:
    s = SyncerProcess(tmp_path, kube, agent, "--k8s-source-namespace", ns, "--consul-node-name", f"sync-{ns}",
                      "--consul-k8s-tag", f"k8s-{ns}", *args)
    syncers.append(s)
    return s.start(ready=ready)


def statuses(agent: AgentProcess, name: str) -> dict[str, str]:
    return {i["Address"]: i["Status"] for i in instances(agent, name).values()}


def test_create_scale_readiness_annotations_delete(kube: KubeApi, agent: AgentProcess, ns: str, tmp_path: Path,
                                                    syncers: list[SyncerProcess]) -> None:
    web = f"web-{ns}"
    apply(kube, ns, service(web, ann={"consul.hashicorp.com/service-tags": "v1"}),
          endpoint_slice(web, {"10.1.0.1": True, "10.1.0.2": False}))
    s = run_syncer(syncers, tmp_path, kube, agent, ns, "--to-k8s=false")
    wait_for(lambda: statuses(agent, web) == {"10.1.0.1": "passing", "10.1.0.2": "critical"}, 10,
             message="both endpoints, one passing")
    inst = next(iter(instances(agent, web).values()))
    assert inst["Node"] == f"sync-{ns}" and inst["Port"] == 8080 and inst["Tags"] == [f"k8s-{ns}", "v1"]
    assert inst["Meta"]["external-source"] == "kubernetes" and inst["Meta"]["external-k8s-ns"] == ns
    txns = s.metrics()["proconsul_k8s_sync_txn_total"]
    # scale up
    apply(kube, ns, endpoint_slice(web, {"10.1.0.1": True, "10.1.0.2": False, "10.1.0.3": True}))
    wait_for(lambda: len(statuses(agent, web)) == 3, 10, message="the third endpoint")
    # readiness flips
    apply(kube, ns, endpoint_slice(web, {"10.1.0.1": False, "10.1.0.2": True, "10.1.0.3": True}))
    wait_for(lambda: statuses(agent, web) == {"10.1.0.1": "critical", "10.1.0.2": "passing",
                                              "10.1.0.3": "passing"}, 10, message="readiness to flip")
    assert set(i["Address"] for i in instances(agent, web, passing=True).values()) == {"10.1.0.2", "10.1.0.3"}
    # annotation changes: tags, then a new name
    kube.kubectl("annotate", "-n", ns, "--overwrite", "svc", web, "consul.hashicorp.com/service-tags=v2,canary",
                 check=True)
    wait_for(lambda: all(i["Tags"] == [f"k8s-{ns}", "v2", "canary"] for i in instances(agent, web).values()), 10,
             message="new tags")
    kube.kubectl("annotate", "-n", ns, "svc", web, f"consul.hashicorp.com/service-name=renamed-{ns}", check=True)
    wait_for(lambda: not instances(agent, web) and len(instances(agent, f"renamed-{ns}")) == 3, 10,
             message="the rename")
    # scale down, then delete
    apply(kube, ns, endpoint_slice(web, {"10.1.0.2": True}))
    wait_for(lambda: list(statuses(agent, f"renamed-{ns}")) == ["10.1.0.2"], 10, message="scale down")
    kube.kubectl("delete", "-n", ns, "svc", web, check=True)
    wait_for(lambda: not instances(agent, f"renamed-{ns}"), 10, message="the deletion")
    m = s.metrics()
    assert m["consul_sync_catalog_to_consul_deregister"] >= 3 and m["consul_sync_catalog_to_consul_register"] >= 3
    assert m["consul_sync_catalog_status"] == 1 and s._get("/health") == (200, "ok\n")
    assert m["proconsul_k8s_sync_txn_total"] - txns <= 6  # one transaction per change, nothing more


def test_forced_410_mid_watch_relists_and_catches_up(kube: KubeApi, agent: AgentProcess, ns: str, tmp_path: Path,
                                                      syncers: list[SyncerProcess]) -> None:
    if not kube.is_test_server:
        pytest.skip("needs the test server's compaction and hold hooks")
    a, b = f"a-{ns}", f"b-{ns}"
    apply(kube, ns, service(a), endpoint_slice(a, {"10.2.0.1": True}))
    s = run_syncer(syncers, tmp_path, kube, agent, ns, "--to-k8s=false")
    wait_for(lambda: statuses(agent, a) == {"10.2.0.1": "passing"}, 10, message="service a")
    relists = s.metrics()["proconsul_k8s_sync_relist_total"]
    kube.hook("hold?on=1")  # the syncer's watches end and cannot come back…
    try:
        refused = kube.stats()["requests"].get("refused", 0)
        wait_for(lambda: kube.stats()["requests"].get("refused", 0) > refused, 10, message="a refused re-watch")
        subprocess.run(kube.kubectl_cmd("delete", "-n", ns, "svc", a), check=True, capture_output=True)
        apply(kube, ns, service(b), endpoint_slice(b, {"10.2.0.2": True}))
        kube.hook("compact")  # …and the history they would resume from is gone: 410 Expired
    finally:
        kube.hook("hold?on=0")
    wait_for(lambda: not instances(agent, a) and statuses(agent, b) == {"10.2.0.2": "passing"}, 15,
             message="the deletion and the creation made while the watch was down")
    assert s.metrics()["proconsul_k8s_sync_relist_total"] >= relists + 3  # services, slices, nodes listed again
    assert "410" in s.log() or "Expired" in s.log()


def test_restart_deregisters_nothing_valid_and_waits_for_both_lists(kube: KubeApi, agent: AgentProcess, ns: str,
                                                                    tmp_path: Path,
                                                                    syncers: list[SyncerProcess]) -> None:
    web = f"web-{ns}"
    apply(kube, ns, service(web), endpoint_slice(web, {f"10.3.0.{i}": True for i in range(1, 6)}))
    first = run_syncer(syncers, tmp_path, kube, agent, ns, "--to-k8s=false")
    wait_for(lambda: len(instances(agent, web, passing=True)) == 5, 10, message="five passing instances")
    before = {k: v["ModifyIndex"] for k, v in instances(agent, web).items()}
    assert first.stop() == 0
    if kube.is_test_server:
        kube.hook("hold?on=1")  # the restarted syncer cannot list Kubernetes for a while
    second = run_syncer(syncers, tmp_path, kube, agent, ns, "--to-k8s=false", ready=False)
    try:
        if kube.is_test_server:
            refused = kube.stats()["requests"].get("refused", 0)
            wait_for(lambda: kube.stats()["requests"].get("refused", 0) >= refused + 3, 10,
                     message="the syncer to try listing")
            assert not second.is_ready()
            assert {k: v["ModifyIndex"] for k, v in instances(agent, web).items()} == before
    finally:
        if kube.is_test_server:
            kube.hook("hold?on=0")
    wait_for(second.is_ready, 15, message="the restarted syncer to be ready")
    wait_for(lambda: second.metrics()["proconsul_k8s_sync_txn_total"] >= 1, 10, message="its liveness check")
    assert {k: v["ModifyIndex"] for k, v in instances(agent, web).items()} == before  # nothing re-registered
    m = second.metrics()
    assert m["consul_sync_catalog_to_consul_deregister"] == 0 and m["consul_sync_catalog_to_consul_register"] == 0


def test_two_syncers_with_different_tags_share_a_datacenter(kube: KubeApi, agent: AgentProcess, ns: str,
                                                            tmp_path: Path, syncers: list[SyncerProcess]) -> None:
    other = f"{ns}-b"
    apply(kube, "default", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        apply(kube, ns, service("shared"), endpoint_slice("shared", {"10.4.0.1": True}))
        apply(kube, other, service("shared"), endpoint_slice("shared", {"10.4.1.1": True}))
        run_syncer(syncers, tmp_path, kube, agent, ns, "--to-k8s=false")
        run_syncer(syncers, tmp_path, kube, agent, other, "--to-k8s=false")
        wait_for(lambda: {(i["Node"], i["Address"]) for i in instances(agent, "shared").values()} >=
                 {(f"sync-{ns}", "10.4.0.1"), (f"sync-{other}", "10.4.1.1")}, 10, message="both clusters' instance")
        kube.kubectl("delete", "-n", ns, "svc", "shared", check=True)
        wait_for(lambda: (f"sync-{ns}", "10.4.0.1") not in {(i["Node"], i["Address"]) for i in
                                                             instances(agent, "shared").values()}, 10,
                 message="the first syncer's instance to go")
        assert (f"sync-{other}", "10.4.1.1") in {(i["Node"], i["Address"]) for i in instances(agent, "shared").values()}
        # A third syncer on a node that a live syncer owns refuses to start, whatever its tag.
        intruder = SyncerProcess(tmp_path, kube, agent, "--consul-node-name", f"sync-{ns}", "--consul-k8s-tag",
                                 "k8s-intruder", "--to-k8s=false")
        proc = subprocess.run(intruder.cmd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"Consul node 'sync-{ns}' is owned by a live syncer" in proc.stderr
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false")


def test_liveness_check_turns_critical_when_the_session_ends_and_purge(kube: KubeApi, agent: AgentProcess, ns: str,
                                                                         tmp_path: Path,
                                                                         syncers: list[SyncerProcess]) -> None:
    web = f"web-{ns}"
    apply(kube, ns, service(web), endpoint_slice(web, {"10.5.0.1": True}))
    s = run_syncer(syncers, tmp_path, kube, agent, ns, "--k8s-write-namespace", ns)
    wait_for(lambda: statuses(agent, web) == {"10.5.0.1": "passing"}, 10, message="the instance")
    agent.put("/v1/catalog/register", {"Node": f"ext-{ns}", "Address": "10.6.0.1",
                                        "Service": {"Service": f"db-{ns}", "Port": 5432}})
    wait_for(lambda: kube.kubectl("get", "-n", ns, "svc", f"db-{ns}").returncode == 0, 10,
             message="the catalog service mirrored into Kubernetes")
    purge_args = ["k8s-sync", "purge", "--kubeconfig", str(kube.kubeconfig), "--http-addr", agent.addr,
                  "--consul-node-name", f"sync-{ns}", "--consul-k8s-tag", f"k8s-{ns}", "--k8s-write-namespace", ns]
    live = subprocess.run([*CLI, *purge_args], capture_output=True, text=True, timeout=60)
    assert live.returncode == 1 and "a live syncer owns Consul node" in live.stderr
    s.stop(signal.SIGKILL)  # dies without a word: its session still stands until its TTL runs out
    sessions = [x["ID"] for x in agent.get(f"/v1/session/node/sync-{ns}")[1]]
    for sid in sessions:  # what the leader does when the TTL runs out (the slow test waits for the real thing)
        agent.put(f"/v1/session/destroy/{sid}")
    wait_for(lambda: statuses(agent, web) == {"10.5.0.1": "critical"}, 10, message="the instance to turn critical")
    owned = f"proconsul.io/k8s-sync-node=sync-{ns}"
    written = kube.kubectl("get", "-n", ns, "svc", "-l", owned, "-o", "name", check=True).stdout.split()
    assert f"service/db-{ns}" in written  # and whatever other tests' services the shared agent holds
    done = subprocess.run([*CLI, *purge_args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"Purged 1 catalog instance(s) from node sync-{ns} and {len(written)} Kubernetes "
                                   f"object(s) from namespace {ns}")
    assert instances(agent, web) == {} and agent.get(f"/v1/catalog/node/sync-{ns}")[1] is None
    assert kube.kubectl("get", "-n", ns, "svc", "-l", owned, "-o", "name", check=True).stdout == ""


def test_two_kubernetes_clusters_through_one_datacenter(kube: KubeApi, agent: AgentProcess, ns: str,
                                                        tmp_path: Path, syncers: list[SyncerProcess]) -> None:
    if not kube.is_test_server:
        pytest.skip("starts a second test API server as the second cluster")
    cluster_b = start_test_apiserver(tmp_path)
    try:
        api = f"api-{ns}"
        apply(kube, ns, service(api), endpoint_slice(api, {"10.7.0.1": True, "10.7.0.2": True}))
        a = SyncerProcess(tmp_path, kube, agent, "--k8s-source-namespace", ns, "--consul-node-name", f"a-{ns}",
                          "--consul-k8s-tag", "k8s-cluster-a", "--to-k8s=false")
        b = SyncerProcess(tmp_path, cluster_b, agent, "--consul-node-name", f"b-{ns}", "--consul-k8s-tag",
                          "k8s-cluster-b", "--to-k8s-mode", "endpoints", "--k8s-write-namespace", "default")
        syncers.extend([a.start(), b.start()])
        wait_for(lambda: cluster_b.kubectl("get", "svc", api).returncode == 0, 15,
                 message="cluster A's Service to appear in cluster B")
        svc = cluster_b.kubectl("get", "svc", api, "-o", "jsonpath={.spec.type} {.spec.ports[0].port}",
                                check=True).stdout
        assert svc == "ClusterIP 8080"

        def slice_ips() -> list[str]:
            out = cluster_b.kubectl("get", "endpointslices", "-l", f"kubernetes.io/service-name={api}", "-o",
                                    "jsonpath={.items[*].endpoints[*].addresses[0]}").stdout
            return sorted(out.split())

        wait_for(lambda: slice_ips() == ["10.7.0.1", "10.7.0.2"], 10, message="both endpoints in cluster B")
        apply(kube, ns, endpoint_slice(api, {"10.7.0.1": True, "10.7.0.2": False}))
        wait_for(lambda: slice_ips() == ["10.7.0.1"], 10, message="the unready endpoint to leave cluster B")
        kube.kubectl("delete", "-n", ns, "svc", api, check=True)
        wait_for(lambda: cluster_b.kubectl("get", "svc", api).returncode == 1, 10,
                 message="the Service to leave cluster B")
        # Cluster B never mirrors its own exports back, and cluster A (to-k8s off) wrote nothing.
        assert "k8s-cluster-b" not in str(agent.get("/v1/catalog/services")[1])
    finally:
        cluster_b.stop()


def test_bad_flags_are_one_line_errors(kube: KubeApi, agent: AgentProcess) -> None:
    module = [sys.executable, "-m", "proconsul.k8s_sync"]
    for cmd, args, words in (
            (module, ["--node-port-sync-type", "Sideways"], "--node-port-sync-type 'Sideways' must be one of"),
            (module, ["--to-consul=maybe"], "-to-consul takes true or false"),
            (module, ["--session-ttl", "1s"], "-session-ttl '1s' must be between 10s and 24h"),
            (module, ["--kubeconfig", "/nonexistent", "--listen", "off"],
             "cannot load Kubernetes configuration from /nonexistent"),
            (module, ["--to-k8s-datacenter", "dc1.mesh"], "--to-k8s-datacenter 'dc1.mesh' must be a datacenter name"),
            (module, ["--http-addr", "127.0.0.1:1", "--listen", "off"], "agent at http://127.0.0.1:1 unreachable"),
            ([*CLI, "k8s-sync"], ["-bogus"], "unrecognized arguments: --bogus")):  # Consul's one-dash spelling
        res = subprocess.run([*cmd, "--kubeconfig", str(kube.kubeconfig), *args], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 1 and res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res
        assert words in res.stderr, res.stderr


def test_a_listen_address_in_use_stops_it_before_it_claims_its_node(kube: KubeApi, agent: AgentProcess,
                                                                    ns: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        res = subprocess.run([sys.executable, "-m", "proconsul.k8s_sync", "--kubeconfig", str(kube.kubeconfig),
                              "--http-addr", agent.addr, "--listen", listen, "--consul-node-name", f"sync-{ns}",
                              "--to-k8s=false"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"Error: --listen {listen}: ") and "in use" in res.stderr, res.stderr
    # Nothing was claimed: the node is free for the next start at once (not after the session's TTL).
    assert agent.get(f"/v1/kv/proconsul/k8s-sync/sync-{ns}/owner")[0] == 404
    assert agent.get(f"/v1/session/node/sync-{ns}")[1] in ([], None)


@pytest.mark.slow
def test_a_killed_syncers_instances_turn_critical_when_its_session_ttl_runs_out(
        kube: KubeApi, agent: AgentProcess, ns: str, tmp_path: Path, syncers: list[SyncerProcess]) -> None:
    web = f"web-{ns}"
    apply(kube, ns, service(web), endpoint_slice(web, {"10.8.0.1": True}))
    s = run_syncer(syncers, tmp_path, kube, agent, ns, "--to-k8s=false", "--session-ttl", "10s")
    wait_for(lambda: statuses(agent, web) == {"10.8.0.1": "passing"}, 10, message="the instance")
    s.stop(signal.SIGKILL)
    # Consul's rule: a session is invalidated after twice its TTL without renewal (here 20 s).
    wait_for(lambda: statuses(agent, web) == {"10.8.0.1": "critical"}, 40, interval=0.5,
             message="the TTL to run out and the liveness check to turn critical")
