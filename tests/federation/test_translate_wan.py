"""`translate_wan_addrs` end to end: dc1's agent translates, dc2's does not. What dc1 says about dc2's nodes
and services (HTTP `?dc=dc2`, a prepared query's failover answer, DNS `*.dc2.mesh` through the real `dig`)
carries their WAN addresses and ports; what each says about its own datacenter is untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess, wait_for

pytestmark = pytest.mark.xdist_group("federation")

FAR = {"Node": "far", "Address": "10.0.0.5",
       "TaggedAddresses": {"lan": "10.0.0.5", "lan_ipv4": "10.0.0.5", "wan": "198.51.100.5",
                           "wan_ipv4": "198.51.100.5"}}
API = {"ID": "api-1", "Service": "api", "Address": "10.0.0.6", "Port": 8443,
       "TaggedAddresses": {"lan": {"Address": "10.0.0.6", "Port": 8443},
                           "wan": {"Address": "198.51.100.6", "Port": 9443}}}
DB = {"ID": "db-1", "Service": "db", "Port": 5432}  # no address of its own: the node's


@pytest.fixture(scope="module")
def dcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    tmp: Path = tmp_path_factory.mktemp("translate")
    (tmp / "wan.json").write_text(json.dumps({"gossip_wan": {"probe_interval": "200ms", "probe_timeout": "100ms"}}))
    (tmp / "translate.json").write_text(json.dumps({"translate_wan_addrs": True}))
    a = AgentProcess(tmp / "a", args=["--node", "a", "--datacenter", "dc1", "--config-file", str(tmp / "wan.json"),
                                      "--config-file", str(tmp / "translate.json")])
    b = AgentProcess(tmp / "b", args=["--node", "b", "--datacenter", "dc2", "--config-file", str(tmp / "wan.json"),
                                      "--retry-join-wan", f"127.0.0.1:{a.serf_wan_port}"])
    try:
        a.start()
        b.start()
        for svc in (API, DB):
            assert b.put("/v1/catalog/register", {**FAR, "Service": svc})[0] == 200
        wait_for(lambda: a.get("/v1/catalog/service/api?dc=dc2")[0] == 200
                 and a.get("/v1/catalog/service/api?dc=dc2")[1], 20, message="dc1 to reach dc2")
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_http_answers_about_another_datacenter_carry_wan_addresses(dcs: tuple[AgentProcess, AgentProcess]) -> None:
    a, b = dcs
    status, rows, headers = a.request("GET", "/v1/catalog/service/api?dc=dc2")
    assert status == 200 and headers.get("X-Consul-Translate-Addresses") == "true", headers
    (row,) = rows
    assert (row["Address"], row["ServiceAddress"], row["ServicePort"]) == ("198.51.100.5", "198.51.100.6", 9443)
    assert row["TaggedAddresses"]["lan"] == "10.0.0.5", "the lan address stays known"
    (entry,) = a.get("/v1/health/service/api?dc=dc2")[1]
    assert (entry["Node"]["Address"], entry["Service"]["Address"], entry["Service"]["Port"]) == (
        "198.51.100.5", "198.51.100.6", 9443)
    nodes = {n["Node"]: n["Address"] for n in a.get("/v1/catalog/nodes?dc=dc2")[1]}
    assert nodes["far"] == "198.51.100.5"
    node = a.get("/v1/catalog/node/far?dc=dc2")[1]
    assert node["Node"]["Address"] == "198.51.100.5"
    assert (node["Services"]["api-1"]["Address"], node["Services"]["api-1"]["Port"]) == ("198.51.100.6", 9443)
    assert node["Services"]["db-1"]["Address"] == "", "a service without an address of its own keeps none"
    # dc2's own agent, and dc1 about itself, answer as they are.
    (mine,) = b.get("/v1/catalog/service/api")[1]
    assert (mine["Address"], mine["ServiceAddress"], mine["ServicePort"]) == ("10.0.0.5", "10.0.0.6", 8443)
    status, _, headers = b.request("GET", "/v1/catalog/service/api")
    assert "X-Consul-Translate-Addresses" not in headers, "dc2 does not translate"
    here = {n["Node"]: n["Address"] for n in a.get("/v1/catalog/nodes")[1]}
    assert here["a"] == "127.0.0.1"


def test_a_prepared_querys_failover_answer_is_translated(dcs: tuple[AgentProcess, AgentProcess]) -> None:
    a, _ = dcs
    status, made = a.request("POST", "/v1/query", {"Name": "api-anywhere", "Service": {
        "Service": "api", "Failover": {"Datacenters": ["dc2"]}}})[:2]
    assert status == 200, made
    result = a.get("/v1/query/api-anywhere/execute")[1]
    assert result["Datacenter"] == "dc2" and result["Failovers"] == 1, result
    (entry,) = result["Nodes"]
    assert (entry["Service"]["Address"], entry["Service"]["Port"], entry["Node"]["Address"]) == (
        "198.51.100.6", 9443, "198.51.100.5")


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian bind9-dnsutils)")
def test_dns_about_another_datacenter_answers_wan_addresses(dcs: tuple[AgentProcess, AgentProcess]) -> None:
    a, b = dcs

    def short(agent: AgentProcess, *args: str) -> list[str]:
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=3", "+tries=1", "+short",
                              *args], capture_output=True, text=True, timeout=20).stdout
        return sorted(x for x in out.splitlines() if x and not x.startswith(";"))

    assert short(a, "api.service.dc2.mesh", "A") == ["198.51.100.6"]
    assert short(a, "db.service.dc2.mesh", "A") == ["198.51.100.5"]
    assert short(a, "far.node.dc2.mesh", "A") == ["198.51.100.5"]
    srv = short(a, "api.service.dc2.mesh", "SRV")
    assert len(srv) == 1 and srv[0].split()[2] == "9443", srv
    # The same names asked of dc2 itself: its own addresses (and its cached answers stay its own).
    assert short(b, "api.service.dc2.mesh", "A") == ["10.0.0.6"]
    assert short(b, "far.node.dc2.mesh", "A") == ["10.0.0.5"]
    assert short(a, "api.service.dc2.mesh", "A") == ["198.51.100.6"], "after dc2 cached its own answer"
    assert short(b, "api.service.dc2.mesh", "SRV")[0].split()[2] == "8443"
