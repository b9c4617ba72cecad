"""k8s-sync across two federated datacenters: two Kubernetes clusters (two test API servers, driven with kubectl),
two Proconsul datacenters joined over the WAN (dc1 primary), one syncer per cluster, mesh gateways in both.

Cluster A's Service `api` becomes catalog service `api` in dc1 (syncer A, to-consul; it mirrors dc2 into cluster A). Syncer B mirrors dc1's catalog
into cluster B through dc2's agent (`--to-k8s-datacenter dc1`, i.e. `?dc=dc1`): an ExternalName Service
`api` → `api.service.dc1.mesh`, which dc2's DNS resolves to cluster A's endpoint (what cluster B's kube-dns does
with a `mesh` stub domain pointing at Proconsul). And mesh traffic crosses: a client on cluster B's side (service
`web` in dc2, with a sidecar whose upstream is `api` in dc1) reaches cluster A's pod through both datacenters'
mesh gateways and api's sidecar, which neither gateway can read. api's sidecar is registered the way
consul-k8s's connect-inject registers a pod's (a connect-proxy for `api`, its local service the pod's address).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent))

from kube import KubeApi, start_test_apiserver  # noqa: E402
from support import AgentProcess, free_port, wait_for  # noqa: E402
from support_federation import Gateway  # noqa: E402
from support_mesh import Backends, ProxyProcess, http_get, wait_passing  # noqa: E402
from syncer_process import SyncerProcess, apply, endpoint_slice, instances, service  # noqa: E402

pytestmark = [pytest.mark.xdist_group("k8s-federation"),
              pytest.mark.skipif(bool(os.environ.get("PROCONSUL_K8S_KUBECONFIG")),
                                 reason="runs two test API servers as the two clusters")]


class World:
    """Everything of the scenario, started in order and stopped in reverse."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        conf = tmp / "fed.json"
        conf.write_text(json.dumps({"primary_datacenter": "dc1", "gossip_wan": {
            "probe_interval": "200ms", "probe_timeout": "100ms"}, "enable_debug": True}))
        self.tmp = tmp
        self.dc1 = AgentProcess(tmp / "dc1", args=["--node", "a", "--datacenter", "dc1", "--config-file", str(conf)])
        self.dc2 = AgentProcess(tmp / "dc2", args=["--node", "b", "--datacenter", "dc2", "--config-file", str(conf),
                                                   "--retry-join-wan", f"127.0.0.1:{self.dc1.serf_wan_port}"])
        self.backends = Backends()
        self.api_port = self.backends.http("api")  # cluster A's pod
        self.upstream = free_port()  # web's local bind port for api in dc1
        self.stoppable: list[object] = []
        self.sync_b_eps: SyncerProcess | None = None  # the endpoints-mode syncer, once its test started it

    def start(self) -> None:
        dc1, dc2, tmp = self.dc1, self.dc2, self.tmp
        dc1.start()
        dc2.start()
        self.stoppable += [dc1, dc2]
        wait_for(lambda: "dc1" in dc2.get("/v1/catalog/datacenters")[1], 15, message="dc2 to see dc1 on the WAN")
        roots = dc1.get("/v1/connect/ca/roots")[1]
        wait_for(lambda: dc2.get("/v1/connect/ca/roots")[1]["ActiveRootID"] == roots["ActiveRootID"], 15,
                 message="dc2 to follow dc1's CA")
        self.kube_a = start_test_apiserver(_mkdir(tmp / "cluster-a"))
        self.kube_b = start_test_apiserver(_mkdir(tmp / "cluster-b"))
        self.stoppable += [self.kube_a, self.kube_b]
        self.sync_a = SyncerProcess(tmp, self.kube_a, dc1, "--consul-k8s-tag", "k8s-cluster-a",
                                    "--consul-node-name", "k8s-sync-cluster-a", "--to-k8s-datacenter", "dc2")
        self.sync_b = SyncerProcess(tmp, self.kube_b, dc2, "--consul-k8s-tag", "k8s-cluster-b",
                                    "--consul-node-name", "k8s-sync-cluster-b", "--to-k8s-datacenter", "dc1")
        for s in (self.sync_a, self.sync_b):
            self.stoppable.append(s)
            s.start()
        # The mesh: api's sidecar in dc1 (as connect-inject registers a pod's), web and its sidecar in dc2,
        # a mesh gateway in each datacenter; web's upstream goes through the local gateway.
        sidecar = {"Kind": "connect-proxy", "ID": "api-sidecar-proxy", "Name": "api-sidecar-proxy",
                   "Port": free_port(), "Proxy": {"DestinationServiceName": "api", "DestinationServiceID": "api",
                                                  "LocalServiceAddress": "127.0.0.1",
                                                  "LocalServicePort": self.api_port}}
        assert dc1.put("/v1/agent/service/register", sidecar)[0] == 200
        assert dc2.put("/v1/agent/service/register", {"Name": "web", "Port": free_port(), "Connect": {
            "SidecarService": {"Proxy": {"Upstreams": [{
                "DestinationName": "api", "Datacenter": "dc1", "LocalBindPort": self.upstream,
                "MeshGateway": {"Mode": "local"}}]}}}})[0] == 200
        self.gw1 = Gateway(dc1, tmp, "gw-dc1")
        self.gw2 = Gateway(dc2, tmp, "gw-dc2")
        for proc in (self.gw1, self.gw2, ProxyProcess(dc1, tmp, proxy_id="api-sidecar-proxy"),
                     ProxyProcess(dc2, tmp, sidecar_for="web")):
            self.stoppable.append(proc)
            proc.start()
        wait_passing(dc1, "api")
        for dc in (dc1, dc2):
            wait_for(lambda dc=dc: dc.get("/v1/health/service/mesh-gateway?passing")[1], 15,
                     message="a passing mesh gateway in each datacenter")

    def stop(self) -> None:
        for p in reversed(self.stoppable):
            p.stop()  # type: ignore[attr-defined]
        self.backends.close()


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("k8s-federation"))
    try:
        w.start()
        yield w
    finally:
        w.stop()


def dig(agent: AgentProcess, name: str, rtype: str = "A") -> list[str]:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+short", "+tries=1", "+time=2",
                          name, rtype], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def external_name(kube: KubeApi, name: str) -> str | None:
    res = kube.kubectl("get", "svc", name, "-o", "jsonpath={.spec.type} {.spec.externalName}")
    return res.stdout if res.returncode == 0 else None


def test_a_service_of_cluster_a_is_found_by_name_from_cluster_b(world: World) -> None:
    apply(world.kube_a, "default", service("api", ports=[{"name": "http", "port": 80, "targetPort": world.api_port}]),
          endpoint_slice("api", {"127.0.0.1": True}, port=world.api_port))
    # Cluster A → dc1's catalog, on syncer A's node with its tag.
    wait_for(lambda: [(i["Node"], i["Address"], i["Port"], i["Status"]) for i in instances(world.dc1, "api").values()]
             == [("k8s-sync-cluster-a", "127.0.0.1", world.api_port, "passing")], 15, message="api in dc1")
    assert instances(world.dc1, "api").popitem()[1]["Tags"] == ["k8s-cluster-a"]
    # dc1's catalog → cluster B, through dc2's agent: a Service named `api` whose target names dc1.
    wait_for(lambda: external_name(world.kube_b, "api") == "ExternalName api.service.dc1.mesh", 15,
             message="the ExternalName Service in cluster B")
    labels = world.kube_b.kubectl("get", "svc", "api", "-o", "jsonpath={.metadata.labels}", check=True).stdout
    assert json.loads(labels) == {"synced-from-consul": "true", "proconsul.io/k8s-sync-node": "k8s-sync-cluster-b"}
    # The target resolves in dc2's DNS (kube-dns in cluster B forwards `mesh` there) to cluster A's endpoint,
    # and a request to what SRV names reaches the pod.
    assert dig(world.dc2, "api.service.dc1.mesh") == ["127.0.0.1"]
    srv = dig(world.dc2, "api.service.dc1.mesh", "SRV")
    assert srv[2] == str(world.api_port), srv
    status, body = http_get(int(srv[2]), "/by-name")
    assert status == 200 and body["backend"] == "api" and body["path"] == "/by-name"
    # Cluster B never gets its own datacenter's services from this syncer, only dc1's.
    b_only = {"Node": "ext-b", "Address": "10.20.0.1", "Service": {"Service": "only-in-dc2", "Port": 1}}
    assert world.dc2.put("/v1/catalog/register", b_only)[0] == 200
    wait_for(lambda: external_name(world.kube_b, "api-sidecar-proxy") is not None, 10,
             message="dc1's other services in cluster B")
    assert external_name(world.kube_b, "only-in-dc2") is None


def test_and_the_other_way_round_without_echoes(world: World) -> None:
    """Syncer A mirrors dc2 into cluster A the same way; neither syncer writes a mirrored Service back."""
    apply(world.kube_b, "default", service("pay"), endpoint_slice("pay", {"10.40.0.1": True}))
    wait_for(lambda: [i["Node"] for i in instances(world.dc2, "pay").values()] == ["k8s-sync-cluster-b"], 15,
             message="cluster B's Service in dc2")
    wait_for(lambda: external_name(world.kube_a, "pay") == "ExternalName pay.service.dc2.mesh", 15,
             message="it in cluster A")
    assert dig(world.dc1, "pay.service.dc2.mesh") == ["10.40.0.1"]
    assert instances(world.dc2, "api") == {} and instances(world.dc1, "pay") == {}
    assert world.sync_a.metrics()["consul_sync_catalog_to_consul_register"] == 1  # api only, never pay


def test_mesh_traffic_from_cluster_b_reaches_cluster_a_through_both_gateways(world: World) -> None:
    marker = "/k8s-cross-dc-7e51a0"
    status, body = wait_for(lambda: http_get(world.upstream, marker), 20,
                            message="api in dc1 from web's sidecar in dc2, through the gateways")
    assert status == 200 and body["backend"] == "api" and body["path"] == marker
    for gw in (world.gw1, world.gw2):
        seen = gw.capture.read_bytes()
        assert seen[:1] == b"\x16" and marker.encode() not in seen and b'"backend"' not in seen


def slice_endpoints(kube: KubeApi, ns: str, name: str) -> list[str]:
    out = kube.kubectl("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={name}", "-o", "json",
                       check=True)
    return sorted(f"{a}:{sl['ports'][0]['port']}" for sl in json.loads(out.stdout)["items"]
                  for e in sl.get("endpoints") or [] for a in e["addresses"])


def test_endpoints_mode_mirrors_the_other_datacenters_healthy_instances(world: World) -> None:
    """The ClusterIP flavour (beyond consul-k8s): cluster B's kube-proxy gets dc1's passing instances of `api`,
    followed by blocking queries through dc2's agent (`/v1/health/service/api?passing&dc=dc1`)."""
    apply(world.kube_b, "default", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "from-dc1"}})
    world.sync_b_eps = SyncerProcess(world.tmp, world.kube_b, world.dc2, "--to-consul=false", "--to-k8s-mode",
                                     "endpoints", "--to-k8s-datacenter", "dc1", "--k8s-write-namespace", "from-dc1",
                                     "--consul-k8s-tag", "k8s-cluster-b", "--consul-node-name", "k8s-sync-cluster-b-eps")
    world.stoppable.append(world.sync_b_eps)
    world.sync_b_eps.start()
    wait_for(lambda: world.kube_b.kubectl("get", "svc", "-n", "from-dc1", "api", "-o",
                                          "jsonpath={.spec.type}").stdout == "ClusterIP", 15,
             message="a ClusterIP Service api in cluster B")
    wait_for(lambda: slice_endpoints(world.kube_b, "from-dc1", "api") == [f"127.0.0.1:{world.api_port}"], 10,
             message="its EndpointSlice listing cluster A's endpoint")


def test_a_wan_cut_removes_nothing_from_cluster_b_and_changes_arrive_after_it(world: World) -> None:
    """While dc1 cannot be reached from dc2, syncer B keeps what it mirrored (an unreachable catalog is not an
    empty one); a Service created in cluster A during the cut reaches cluster B once the WAN heals."""
    log_start = len(world.sync_b.log())
    world.dc1.put("/v1/agent/debug/partition", {"Block": ["dc2"]})
    world.dc2.put("/v1/agent/debug/partition", {"Block": ["dc1"]})
    try:
        wait_for(lambda: any(words in world.sync_b.log()[log_start:] for words in (
            "Remote DC has no server currently reachable", "No path to datacenter")), 15,
            message="syncer B to find dc1 unreachable")
        late = "late"
        apply(world.kube_a, "default", service(late), endpoint_slice(late, {"10.30.0.1": True}))
        wait_for(lambda: instances(world.dc1, late), 10, message="the new Service in dc1 (syncer A is local)")
        assert external_name(world.kube_b, "api") == "ExternalName api.service.dc1.mesh"
        assert external_name(world.kube_b, late) is None
        assert world.sync_b.metrics()["consul_sync_catalog_to_k8s_deregister"] == 0
    finally:
        world.dc1.put("/v1/agent/debug/partition", {"Block": []})
        world.dc2.put("/v1/agent/debug/partition", {"Block": []})
    wait_for(lambda: external_name(world.kube_b, late) == "ExternalName late.service.dc1.mesh", 20,
             message="the Service created during the cut to reach cluster B after it")
    assert external_name(world.kube_b, "api") == "ExternalName api.service.dc1.mesh"


def test_readiness_and_deletion_in_cluster_a_follow_into_dc1_and_cluster_b(world: World) -> None:
    apply(world.kube_a, "default", endpoint_slice("api", {"127.0.0.1": False}, port=world.api_port))
    wait_for(lambda: [i["Status"] for i in instances(world.dc1, "api").values()] == ["critical"], 10,
             message="api's instance in dc1 to turn critical")
    wait_for(lambda: dig(world.dc2, "api.service.dc1.mesh") == [], 10, message="dc2's DNS to drop it")
    if world.sync_b_eps is not None:
        wait_for(lambda: slice_endpoints(world.kube_b, "from-dc1", "api") == [], 10,
                 message="the unready endpoint to leave cluster B's EndpointSlice")
    world.kube_a.kubectl("delete", "svc", "api", check=True)
    wait_for(lambda: not instances(world.dc1, "api"), 10, message="api to leave dc1")
    wait_for(lambda: external_name(world.kube_b, "api") is None, 10, message="the Service to leave cluster B")
