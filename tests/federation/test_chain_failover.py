"""Discovery chains that cross datacenters, end to end: two real datacenters, sidecars and mesh gateways,
once with tcp services (L4) and once in HTTP mode.

dc1 (primary) runs `api` and `web`; dc2 runs two `api` instances (meta version v1 and v2). Config entries
written in dc1 (replicated to dc2): proxy-defaults `MeshGateway { Mode = "local" }`; `api`'s resolver
with a `v2` subset and `Failover { "*" = { Datacenters = ["dc2"] } }`; `legacy`'s resolver redirecting
to `api`'s v2 subset in dc2. web's sidecar reaches dc2 through dc1's gateway then dc2's, with the
target's SNI (`[v2.]api.default.dc2.internal.<trust-domain>`) in the clear and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess, free_port, wait_for
from support_federation import Gateway, start_two, two_datacenters
from support_mesh import Backends, ProxyProcess, http_get, wait_passing

pytestmark = pytest.mark.xdist_group("federation-chain")  # its own worker: beside, not after, the others


class ChainDCs:
    def __init__(self, tmp: Path, protocol: str) -> None:
        self.protocol = protocol
        self.tmp = tmp
        self.a, self.b = two_datacenters(tmp)
        self.backends = Backends()
        self.procs: list[ProxyProcess | Gateway] = []
        self.api_up, self.legacy_up = free_port(), free_port()

    def start(self) -> None:
        a, b = self.a, self.b
        start_two(a, b)
        for kind, entry in (("proxy-defaults", {"Name": "global", "MeshGateway": {"Mode": "local"},
                                                **({"Config": {"protocol": "http"}} if self.protocol == "http" else {})}),
                            ("service-resolver", {"Name": "api", "Subsets": {
                                "v2": {"Filter": "Service.Meta.version == v2"}},
                                "Failover": {"*": {"Datacenters": ["dc2"]}}}),
                            ("service-resolver", {"Name": "legacy", "Redirect": {
                                "Service": "api", "ServiceSubset": "v2", "Datacenter": "dc2"}})):
            status, body = a.put("/v1/config", {"Kind": kind, **entry})
            assert status == 200, body
        wait_for(lambda: b.get("/v1/config/service-resolver/legacy")[0] == 200, 10,
                 message="the resolvers replicated to dc2")
        self.api_dc1 = self.register(a, "api", "api-dc1", {})
        self.register(b, "api-v1", "api-dc2-v1", {"version": "v1"}, name="api")
        self.register(b, "api-v2", "api-dc2-v2", {"version": "v2"}, name="api")
        upstreams = [{"DestinationName": "api", "LocalBindPort": self.api_up},
                     {"DestinationName": "legacy", "LocalBindPort": self.legacy_up}]
        assert a.put("/v1/agent/service/register", {"Name": "web", "Port": free_port(), "Connect": {
            "SidecarService": {"Proxy": {"Upstreams": upstreams}}}})[0] == 200
        self.gw1 = Gateway(a, self.tmp, "gw-dc1").start()
        self.gw2 = Gateway(b, self.tmp, "gw-dc2").start()
        self.procs += [self.gw1, self.gw2]
        self.api_dc1_proxy = ProxyProcess(a, self.tmp, sidecar_for="api").start()
        self.procs += [self.api_dc1_proxy, ProxyProcess(b, self.tmp, sidecar_for="api-v1").start(),
                       ProxyProcess(b, self.tmp, sidecar_for="api-v2").start()]
        self.web = ProxyProcess(a, self.tmp, sidecar_for="web").start()
        self.procs.append(self.web)
        wait_passing(a, "api")
        wait_passing(b, "api", 2)
        for agent in (a, b):
            wait_for(lambda agent=agent: agent.get("/v1/health/service/mesh-gateway?passing")[1], 15,
                     message="the gateways passing")

    def register(self, agent: AgentProcess, sid: str, backend: str, meta: dict[str, str], name: str = "") -> str:
        status, body = agent.put("/v1/agent/service/register", {
            "ID": sid, "Name": name or sid, "Port": self.backends.http(backend), "Meta": meta,
            "Connect": {"SidecarService": {}}})
        assert status == 200, body
        return sid

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.b.stop()
        self.a.stop()
        self.backends.close()


@pytest.fixture(scope="module", params=["tcp", "http"])
def dcs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainDCs]:
    """Both data paths: L4 (a target per connection) and HTTP mode (per request, kept-alive connections)."""
    d = ChainDCs(tmp_path_factory.mktemp(f"chain-failover-{request.param}"), request.param)
    try:
        d.start()
        yield d
    finally:
        d.stop()


def test_the_chain_names_targets_in_the_other_datacenter_with_their_gateway_mode(dcs: ChainDCs) -> None:
    chain = dcs.a.get("/v1/discovery-chain/api")[1]["Chain"]
    fo = chain["Nodes"]["resolver:api.default.default.dc1"]["Resolver"]["Failover"]
    assert fo["Targets"] == ["api.default.default.dc2"]
    remote = chain["Targets"]["api.default.default.dc2"]
    trust = dcs.a.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    assert remote["MeshGateway"] == {"Mode": "local"} and remote["SNI"] == f"api.default.dc2.internal.{trust}"
    legacy = dcs.a.get("/v1/discovery-chain/legacy")[1]["Chain"]
    assert legacy["StartNode"] == "resolver:v2.api.default.default.dc2"
    assert legacy["Targets"]["v2.api.default.default.dc2"]["SNI"] == f"v2.api.default.dc2.internal.{trust}"
    over = dcs.a.request("POST", "/v1/discovery-chain/api", {"OverrideMeshGateway": {"Mode": "remote"}})[1]
    assert over["Chain"]["Targets"]["api.default.default.dc2"]["MeshGateway"] == {"Mode": "remote"}
    status, body = dcs.a.request("POST", "/v1/discovery-chain/api", {"OverrideMeshGateway": {"Mode": "far"}})[:2]
    assert status == 400 and "OverrideMeshGateway.Mode" in str(body)
    # An upstream with `datacenter = "dc2"` follows the chain as seen from dc2 (Consul's compile-dc).
    there = dcs.a.get("/v1/discovery-chain/api?compile-dc=dc2")[1]["Chain"]
    assert there["Datacenter"] == "dc2" and there["StartNode"] == "resolver:api.default.default.dc2"


def test_redirect_to_a_subset_in_another_datacenter_goes_through_both_gateways(dcs: ChainDCs) -> None:
    before = dcs.gw1.capture.stat().st_size if dcs.gw1.capture.exists() else 0
    marker = "/redirected-7f3a"
    for i in range(6):  # every one of them lands on the v2 instance: the dc2 gateway applied the subset
        status, body = wait_for(lambda i=i: http_get(dcs.legacy_up, f"{marker}/{i}"), 20,
                                message="legacy → api v2 in dc2")
        assert status == 200 and body["backend"] == "api-dc2-v2"
    seen1, seen2 = dcs.gw1.capture.read_bytes()[before:], dcs.gw2.capture.read_bytes()
    assert b".api.default.dc2.internal." in seen1 and b"v2.api.default.dc2.internal." in seen2  # the SNI
    for seen in (seen1, seen2):
        assert marker.encode() not in seen and b"api-dc2" not in seen  # never plaintext


def test_failover_to_the_other_datacenter_when_the_local_instances_die(dcs: ChainDCs) -> None:
    assert http_get(dcs.api_up, "/here")[1]["backend"] == "api-dc1"  # healthy here: the local target
    before = dcs.gw1.capture.stat().st_size if dcs.gw1.capture.exists() else 0
    dcs.api_dc1_proxy.stop()  # the only dc1 instance is gone (its sidecar refuses)
    # The very next connections already land in dc2: a refused local target is a dead path, skipped at once.
    for i in range(5):
        status, body = http_get(dcs.api_up, f"/after-kill/{i}")
        assert status == 200 and body["backend"] in ("api-dc2-v1", "api-dc2-v2")
    assert b"api.default.dc2.internal." in dcs.gw1.capture.read_bytes()[before:]
    # The agent's health checks then mark it critical: the local target is empty and dc2 serves on.
    assert dcs.a.put("/v1/agent/service/maintenance/api?enable=true&reason=test")[0] == 200
    wait_for(lambda: not dcs.a.get("/v1/health/connect/api?passing")[1], 10, message="dc1's api critical")
    served = {http_get(dcs.api_up, f"/critical/{i}")[1]["backend"] for i in range(6)}
    assert served <= {"api-dc2-v1", "api-dc2-v2"} and served
    # The sidecar shows where its failover target is and the path it takes (beyond Consul: link state).
    target = dcs.web.admin("/stats")["ChainTargets"]["api.default.default.dc2"]
    assert (target["Datacenter"], target["Via"], target["Healthy"]) == ("dc2", "local mesh gateway", 1)
    assert dcs.web.admin("/stats")["UpstreamInstances"]["api"]["Healthy"] == 0
    # Connections through dc1's gateway to api in dc2 exist now (kept alive in HTTP mode): the subset
    # target through the same gateway still gets only its own (v2) instance, never a reused connection.
    assert {http_get(dcs.legacy_up, f"/v2-again/{i}")[1]["backend"] for i in range(8)} == {"api-dc2-v2"}
