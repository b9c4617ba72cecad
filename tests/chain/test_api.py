"""Traffic-management config entries and /v1/discovery-chain against a real dev agent, read with py-consul."""

from __future__ import annotations

import threading
import time
from typing import Any

import consul
import pytest
from support import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    wait_for(lambda: shared_dev_agent.get("/v1/connect/ca/roots")[1]["Roots"], message="the CA to bootstrap")
    return shared_dev_agent


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> consul.Consul:
    host, port = agent.addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def put(agent: AgentProcess, entry: dict[str, Any]) -> tuple[int, Any]:
    status, body, _ = agent.request("PUT", "/v1/config", entry)
    return status, body


def test_chain_in_consuls_shape(agent: AgentProcess, client: consul.Consul) -> None:
    for e in [{"Kind": "service-defaults", "Name": n, "Protocol": "http"} for n in ("shop", "shop-admin")] + [
        {"kind": "service-resolver", "name": "shop", "default_subset": "v1",
         "subsets": {"v1": {"filter": "Service.Meta.version == v1"}, "v2": {"filter": "Service.Meta.version == v2"}}},
        {"Kind": "service-splitter", "Name": "shop", "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                                {"Weight": 10, "ServiceSubset": "v2"}]},
        {"Kind": "service-router", "Name": "shop", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "shop-admin"}}]},
    ]:
        assert put(agent, e) == (200, True), e
    chain = client.discovery_chain.get("shop")["Chain"]
    td = agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    assert chain["ServiceName"] == "shop" and chain["Protocol"] == "http" and chain["Datacenter"] == "dc1"
    assert chain["StartNode"] == "router:shop.default.default"
    assert set(chain["Nodes"]) == {"router:shop.default.default", "splitter:shop.default.default",
                                   "resolver:shop-admin.default.default.dc1", "resolver:v1.shop.default.default.dc1",
                                   "resolver:v2.shop.default.default.dc1"}
    assert chain["Targets"]["v2.shop.default.default.dc1"]["SNI"] == f"v2.shop.default.dc1.internal.{td}"
    stored = agent.get("/v1/config/service-resolver/shop")[1]
    assert stored["DefaultSubset"] == "v1" and "Subsets" in stored, "snake_case input stored in Consul's names"
    over = client.discovery_chain.get("shop", override_connect_timeout="7s", override_protocol="http")["Chain"]
    assert over["Targets"]["v1.shop.default.default.dc1"]["ConnectTimeout"] == "7s" and over["CustomizationHash"]


@pytest.mark.parametrize("entry,field", [
    ({"Kind": "service-splitter", "Name": "x", "Splits": [{"Weight": 50}]}, "Splits"),
    ({"Kind": "service-router", "Name": "x", "Routes": [{"Match": {"HTTP": {"PathPrefx": "/"}}}]},
     "Routes[0].Match.HTTP"),
    ({"Kind": "service-resolver", "Name": "x", "Subsets": {"V1": {}}}, "Subsets['V1']"),
    ({"Kind": "service-router", "Name": "tcp-only", "Routes": []}, "Protocol"),
])
def test_bad_entries_are_400_naming_the_field_and_not_stored(agent: AgentProcess, entry: dict[str, Any],
                                                             field: str) -> None:
    status, body = put(agent, entry)
    assert status == 400 and field in body and entry["Kind"] in body, body
    assert agent.get(f"/v1/config/{entry['Kind']}/{entry['Name']}")[0] == 404


def test_writes_that_would_break_a_chain_are_refused(agent: AgentProcess) -> None:
    assert put(agent, {"Kind": "service-defaults", "Name": "cart", "Protocol": "http"})[0] == 200
    assert put(agent, {"Kind": "service-resolver", "Name": "cart", "Subsets": {"v2": {}}})[0] == 200
    assert put(agent, {"Kind": "service-router", "Name": "cart",
                       "Routes": [{"Destination": {"ServiceSubset": "v2"}}]})[0] == 200
    status, body = put(agent, {"Kind": "service-resolver", "Name": "cart"})
    assert status == 400 and "does not have a subset named 'v2'" in body, body
    status, body = put(agent, {"Kind": "service-defaults", "Name": "cart", "Protocol": "tcp"})
    assert status == 400 and "does not permit routes" in body, body
    status, body, _ = agent.request("DELETE", "/v1/config/service-resolver/cart")
    assert status == 400 and "subset" in body
    assert agent.get("/v1/config/service-resolver/cart")[1]["Subsets"] == {"v2": {}}, "nothing changed"


def test_blocking_query_wakes_on_a_change(agent: AgentProcess) -> None:
    status, _, headers = agent.request("GET", "/v1/discovery-chain/inventory")
    index = int(headers["X-Consul-Index"])
    timer = threading.Timer(0.3, lambda: put(agent, {"Kind": "service-resolver", "Name": "inventory",
                                                     "ConnectTimeout": "3s"}))
    timer.start()
    t0 = time.monotonic()
    status, body, headers = agent.request("GET", f"/v1/discovery-chain/inventory?index={index}&wait=20s")
    timer.join()
    assert status == 200 and time.monotonic() - t0 < 10 and int(headers["X-Consul-Index"]) > index
    assert body["Chain"]["Targets"]["inventory.default.default.dc1"]["ConnectTimeout"] == "3s"
    status, body, _ = agent.request("POST", "/v1/discovery-chain/inventory", {"OverrideProtocol": "udp"})
    assert status == 400 and "OverrideProtocol" in body


def test_hcl_entries_through_the_cli(agent: AgentProcess, tmp_path: Any) -> None:
    """`proconsul config write` with HCL as Consul's docs write it: quoted map keys ("*"), one-element lists."""
    from support import run

    (tmp_path / "d.hcl").write_text('Kind = "service-defaults"\nName = "hclsvc"\nProtocol = "http"\n')
    (tmp_path / "r.hcl").write_text('''Kind = "service-resolver"
Name = "hclsvc"
Subsets = { v1 = { Filter = "Service.Meta.version == v1" } }
Failover = { "*" = { Service = "hclsvc-backup" } }
LoadBalancer = { Policy = "maglev", HashPolicies = [{ Field = "cookie", FieldValue = "id" }] }
''')
    (tmp_path / "bad.hcl").write_text('Kind = "service-splitter"\nName = "hclsvc"\nSplits = [{ Weight = 50 }]\n')
    for f in ("d.hcl", "r.hcl"):
        res = run(agent, "config", "write", str(tmp_path / f))
        assert res.returncode == 0, res.stderr
    assert agent.get("/v1/config/service-resolver/hclsvc")[1]["Failover"] == {"*": {"Service": "hclsvc-backup"}}
    res = run(agent, "config", "write", str(tmp_path / "bad.hcl"))
    assert res.returncode == 1 and "Splits" in res.stderr and "Traceback" not in res.stderr
