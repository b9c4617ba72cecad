"""/v1/internal/ui/*: the aggregated reads the UI's pages use, checked against the public API."""

from __future__ import annotations

import gzip
import json
import time
import urllib.parse
import urllib.request

import pytest
from support import AgentProcess, wait_for


def register(agent: AgentProcess, body: dict) -> None:
    assert agent.put("/v1/agent/service/register", body)[0] == 200


@pytest.fixture(scope="module")
def agent(ui_agent: AgentProcess) -> AgentProcess:
    wait_for(lambda: ui_agent.get("/v1/connect/ca/roots")[1]["Roots"], message="the CA")
    register(ui_agent, {"Name": "shop", "ID": "shop-1", "Port": 80, "Tags": ["v1"], "Check": {"TTL": "60s"}})
    register(ui_agent, {"Name": "shop", "ID": "shop-2", "Port": 81, "Tags": ["v2"], "Check": {"TTL": "60s"}})
    register(ui_agent, {"Name": "cart", "Port": 82, "Check": {"TTL": "60s"}})
    register(ui_agent, {"Name": "shop-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000, "Proxy": {
        "DestinationServiceName": "shop", "Upstreams": [{"DestinationName": "cart", "LocalBindPort": 9000},
                                                        {"DestinationName": "ledger", "LocalBindPort": 9001}]}})
    ui_agent.put("/v1/agent/check/pass/service:shop-1")
    ui_agent.put("/v1/agent/check/warn/service:shop-2")
    wait_for(lambda: len(ui_agent.get("/v1/health/service/shop")[1]) == 2, message="shop registered")
    return ui_agent


def summaries(agent: AgentProcess) -> dict[str, dict]:
    return {s["Name"]: s for s in agent.get("/v1/internal/ui/services")[1]}


def test_services_summaries_match_the_public_api(agent: AgentProcess) -> None:
    s = wait_for(lambda: (x := summaries(agent)) and x["shop"]["ChecksWarning"] == 1 and x, message="counts")
    shop = s["shop"]
    assert shop["InstanceCount"] == 2 and set(shop["Tags"]) == {"v1", "v2"} and shop["Kind"] == ""
    health = agent.get("/v1/health/service/shop")[1]
    statuses = [c["Status"] for e in health for c in e["Checks"]]
    assert shop["ChecksPassing"] == statuses.count("passing") and shop["ChecksWarning"] == statuses.count("warning")
    assert shop["ChecksCritical"] == statuses.count("critical") == 0
    assert shop["InstancesPassing"] == 1 and shop["InstancesWarning"] == 1
    assert shop["ConnectedWithProxy"] is True and s["cart"]["ConnectedWithProxy"] is False
    assert s["shop-sidecar-proxy"]["Kind"] == "connect-proxy"
    assert set(s) == set(agent.get("/v1/catalog/services")[1])


def test_services_is_a_blocking_gzipped_read(agent: AgentProcess) -> None:
    status, _, headers = agent.request("GET", "/v1/internal/ui/services")
    index = int(headers["X-Consul-Index"])
    req = urllib.request.Request(f"{agent.url}/v1/internal/ui/services?index={index}&wait=30s",
                                 headers={"Accept-Encoding": "gzip"})
    import threading

    timer = threading.Timer(0.3, lambda: register(agent, {"Name": "late", "Port": 90}))
    timer.start()
    with urllib.request.urlopen(req, timeout=40) as r:
        body, h = r.read(), dict(r.headers)
    timer.join()
    assert h["Content-Encoding"] == "gzip" and int(h["X-Consul-Index"]) > index
    assert "late" in {x["Name"] for x in json.loads(gzip.decompress(body))}


def test_nodes_and_node(agent: AgentProcess) -> None:
    nodes = agent.get("/v1/internal/ui/nodes")[1]
    assert [n["Node"] for n in nodes] == ["dev"]
    dev = nodes[0]
    assert {"shop-1", "shop-2", "cart"} <= {s["ID"] for s in dev["Services"]}
    assert "serfHealth" in {c["CheckID"] for c in dev["Checks"]}
    assert agent.get("/v1/internal/ui/node/dev")[1]["Node"] == "dev"
    status, body = agent.get("/v1/internal/ui/node/nope")
    assert status == 404 and "nope" in body


def authorize(agent: AgentProcess, src: str, dst: str) -> bool:
    td = agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    body = {"Target": dst, "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/{src}"}
    status, out, _ = agent.request("POST", "/v1/agent/connect/authorize", body)
    assert status == 200
    return out["Authorized"]


def test_topology_links_carry_the_enforced_decision(agent: AgentProcess) -> None:
    status, out = agent.request("POST", "/v1/connect/intentions", {"SourceName": "shop", "DestinationName": "ledger",
                                                                   "Action": "deny"})[:2]
    assert status == 200
    agent.request("POST", "/v1/connect/intentions", {"SourceName": "web", "DestinationName": "shop",
                                                     "Action": "allow"})
    topo = agent.get("/v1/internal/ui/service-topology/shop")[1]
    ups = {u["Name"]: u for u in topo["Upstreams"]}
    downs = {d["Name"]: d for d in topo["Downstreams"]}
    assert set(ups) == {"cart", "ledger"} and set(downs) == {"web"}
    assert ups["cart"]["Source"] == "proxy-registration" and ups["cart"]["Registered"] is True
    assert ups["ledger"]["Registered"] is False and downs["web"]["Source"] == "specific-intention"
    assert ups["ledger"]["Intention"]["Allowed"] is False and ups["ledger"]["Intention"]["HasExact"] is True
    assert ups["ledger"]["Intention"]["ID"] == out["ID"]
    for name, link in ups.items():
        assert link["Intention"]["Allowed"] == authorize(agent, "shop", name), name
    assert downs["web"]["Intention"]["Allowed"] == authorize(agent, "web", "shop") is True
    cart = agent.get("/v1/internal/ui/service-topology/cart")[1]
    assert [d["Name"] for d in cart["Downstreams"]] == ["shop"] and cart["Protocol"] == "tcp"
    # shop's sidecar is registered but not running: no invented figures, and the reason
    assert all(link["Metrics"] is None for link in [*topo["Upstreams"], *topo["Downstreams"]])
    assert topo["Metrics"]["Provider"] == "proxies"
    assert [(p["ID"], p["Status"]) for p in topo["Metrics"]["Proxies"]] == [("shop-sidecar-proxy", "unreachable")]


def check(agent: AgentProcess, **q: str) -> tuple[int, object]:
    return agent.get("/v1/internal/ui/intention-check?" + urllib.parse.urlencode(q, doseq=True))


def test_intention_check_names_the_deciding_intention(agent: AgentProcess) -> None:
    agent.request("POST", "/v1/connect/intentions", {"SourceName": "*", "DestinationName": "vault", "Action": "deny"})
    status, out = check(agent, source="billing", destination="vault")
    assert status == 200 and out["Allowed"] is False and out["Intention"]["SourceName"] == "*"
    assert "precedence 8" in out["Reason"]
    public = agent.get("/v1/connect/intentions/check?source=billing&destination=vault")[1]
    assert public["Allowed"] == out["Allowed"]
    status, out = check(agent, source="billing", destination="nobody-has-rules")
    assert out["Allowed"] is True and out["Intention"] is None and "Default" in out["Reason"]


def test_intention_check_evaluates_l7_for_a_request(agent: AgentProcess) -> None:
    agent.put("/v1/config", {"Kind": "service-defaults", "Name": "books", "Protocol": "http"})
    status, body = agent.request("POST", "/v1/connect/intentions", {
        "SourceName": "web", "DestinationName": "books", "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/read", "Methods": ["GET"]}}]})[:2]
    assert status == 200, body
    out = check(agent, source="web", destination="books")[1]
    assert out["Allowed"] is False and out["NeedsRequest"] is True
    assert check(agent, source="web", destination="books", path="/read/1")[1]["Allowed"] is True
    assert check(agent, source="web", destination="books", path="/read/1", method="POST")[1]["Allowed"] is False
    topo = agent.get("/v1/internal/ui/service-topology/books")[1]
    assert topo["Protocol"] == "http" and topo["Downstreams"][0]["Intention"]["HasPermissions"] is True
    web = agent.get("/v1/internal/ui/service-topology/web")[1]
    books = next(u for u in web["Upstreams"] if u["Name"] == "books")
    assert books["Protocol"] == "http" and books["Source"] == "specific-intention"


@pytest.mark.parametrize(("query", "fragment"), [
    ({"source": "web"}, "'destination' is missing"),
    ({"source": "w*b", "destination": "x"}, "wildcard must be the whole name"),
    ({"source": "a", "destination": "b", "path": "nope"}, "must start with /"),
    ({"source": "a", "destination": "b", "path": "/", "method": "FETCH"}, "not an HTTP method"),
    ({"source": "a", "destination": "b", "header": "novalue"}, "Name:value"),
])
def test_intention_check_bad_input_is_a_400(agent: AgentProcess, query: dict, fragment: str) -> None:
    status, body = check(agent, **query)
    assert status == 400 and fragment in body


@pytest.mark.parametrize(("fmt", "text", "valid", "line"), [
    ("hcl", 'service {\n  name = "web"\n}\n', True, 0),
    ("hcl", 'service {\n  name = \n}\n', False, 2),
    ("json", '{"a": 1}', True, 0),
    ("json", '{"a": 1,}', False, 1),
])
def test_validate(agent: AgentProcess, fmt: str, text: str, valid: bool, line: int) -> None:
    status, out, _ = agent.request("POST", f"/v1/internal/ui/validate?format={fmt}", raw=text.encode())
    assert status == 200 and out["Valid"] is valid
    assert (out["Error"] == "") is valid and out["Line"] == line


def test_validate_rejects_unknown_formats(agent: AgentProcess) -> None:
    status, body, _ = agent.request("POST", "/v1/internal/ui/validate?format=toml", raw=b"a = 1")
    assert status == 400 and "format 'toml'" in body


def test_services_blocking_timeout_returns_the_same_index(agent: AgentProcess) -> None:
    _, _, headers = agent.request("GET", "/v1/internal/ui/services")
    index = headers["X-Consul-Index"]
    t0 = time.monotonic()
    status, body, h = agent.request("GET", f"/v1/internal/ui/services?index={index}&wait=1s")
    took = time.monotonic() - t0
    assert status == 200 and h["X-Consul-Index"] == index and 0.9 < took < 5, took
    assert {s["Name"] for s in body} >= {"shop", "cart"}
