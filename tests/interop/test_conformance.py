"""What a Consul user's client and habits call first, checked against Consul's documented answers — through
the unmodified py-consul client where it has the call, raw HTTP where it does not."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request

import consul
import pytest
from support import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> AgentProcess:
    a = AgentProcess(tmp_path_factory.mktemp("conformance"))
    a.start()
    yield a
    a.stop()


@pytest.fixture
def c(agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def test_empty_kv_value_reads_back_as_none(c: consul.Consul) -> None:
    assert c.kv.put("conf/empty", "")
    _, entry = c.kv.get("conf/empty")
    assert entry["Value"] is None


def test_catalog_services_filter(c: consul.Consul, agent: AgentProcess) -> None:
    c.agent.service.register("web-f", tags=["prod", "v1"], port=80)
    c.agent.service.register("api-f", tags=["dev"], port=81)
    wait_for(lambda: "web-f" in c.catalog.services()[1], message="registered")
    q = urllib.parse.quote('"prod" in ServiceTags')
    status, body = agent.get(f"/v1/catalog/services?filter={q}")
    assert status == 200 and "web-f" in body and "api-f" not in body


def test_agent_self_has_what_clients_read(c: consul.Consul, agent: AgentProcess) -> None:
    me = c.agent.self()
    assert me["Stats"]["consul"]["leader_addr"] == agent.get("/v1/status/leader")[1]
    assert me["Stats"]["raft"]["state"] == "Leader" and me["Stats"]["raft"]["protocol_version"] == "3"
    assert all(isinstance(v, str) for v in me["Stats"]["raft"].values())
    assert me["Member"]["Name"] == me["Config"]["NodeName"] and "xDS" in me and me["Meta"] == {}
    assert me["DebugConfig"]["Datacenter"] == me["Config"]["Datacenter"] == "dc1"
    host = agent.get("/v1/agent/host")[1]
    assert host["Memory"]["total"] > 0 and host["Host"]["hostname"]
    assert agent.get("/v1/agent/version")[1]["HumanVersion"] == me["Config"]["Version"]


def test_dc_on_writes_is_no_path(agent: AgentProcess) -> None:
    for method, path, body in (("PUT", "/v1/catalog/deregister?dc=dc2", {"Node": "x"}),
                               ("PUT", "/v1/kv/a?dc=dc2", None), ("GET", "/v1/kv/a?dc=dc2", None),
                               ("PUT", "/v1/catalog/register", {"Node": "n", "Address": "1.1.1.1", "Datacenter": "dc2"})):
        status, text, _ = agent.request(method, path, body)
        assert (status, text.strip()) == (500, "No path to datacenter"), (method, path)


def test_check_for_a_service_that_does_not_exist(c: consul.Consul, agent: AgentProcess) -> None:
    status, text, _ = agent.request("PUT", "/v1/agent/check/register",
                                    {"Name": "orphan", "ServiceID": "nope", "TTL": "10s"})
    assert status == 400 and 'ServiceID "nope" does not exist' in text


def test_metrics_json_and_prometheus(c: consul.Consul, agent: AgentProcess) -> None:
    c.kv.put("metrics/x", "1")
    js = agent.get("/v1/agent/metrics")[1]
    gauges = {g["Name"]: g["Value"] for g in js["Gauges"]}
    assert gauges["consul.state.kv_entries"] >= 1 and gauges["consul.raft.state.leader"] == 1
    samples = {s["Name"]: s for s in js["Samples"]}
    assert samples["consul.kvs.apply"]["Count"] >= 1 and samples["consul.raft.commitTime"]["Count"] >= 1
    status, text, headers = agent.request("GET", "/v1/agent/metrics?format=prometheus")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "# TYPE consul_raft_commitTime summary" in text and "consul_kvs_apply_count" in text
    assert agent.request("GET", "/v1/agent/metrics?format=xml")[0] == 400
    # The stream `consul debug` captures: the same summary, one JSON document per line, from the first moment.
    with urllib.request.urlopen(f"{agent.url}/v1/agent/metrics/stream", timeout=10) as stream:
        first = json.loads(stream.readline())
    assert {"Timestamp", "Gauges", "Counters", "Samples"} <= set(first)
    assert any(g["Name"] == "consul.raft.state.leader" for g in first["Gauges"])


def test_monitor_streams_log_lines(agent: AgentProcess) -> None:
    assert agent.request("GET", "/v1/agent/monitor?loglevel=loud")[0] == 400
    lines: list[str] = []
    stop = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(f"{agent.url}/v1/agent/monitor?loglevel=debug&logjson", timeout=30) as r:
            for raw in r:
                lines.append(raw.decode())
                if stop.is_set():
                    return

    t = threading.Thread(target=read, daemon=True)
    t.start()

    n = [0]

    def logged() -> bool:  # the stream may start after the first registration: register until one shows
        n[0] += 1
        assert agent.put("/v1/agent/service/register", {"Name": f"monitored-{n[0]}", "Port": 1})[0] == 200
        return any("synced service monitored-" in ln for ln in lines)

    wait_for(logged, 10, interval=0.2, message="the sync's log line in the stream")
    stop.set()
    entry = json.loads(lines[0])
    assert {"@level", "@message", "@module", "@timestamp"} <= set(entry)


def test_gateway_services_ingress_health_and_peer_answer_as_consul(agent: AgentProcess) -> None:
    assert agent.get("/v1/catalog/gateway-services/none")[1] == []
    status, body, headers = agent.request("GET", "/v1/health/service/web-f?peer=other")
    assert (status, body) == (200, []) and "X-Consul-Index" in headers
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "web-f", "Protocol": "http"})[0] == 200
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": 8080, "Protocol": "http", "Services": [{"Name": "web-f", "Hosts": ["web.example"]}]}]})[0] == 200
    assert agent.put("/v1/agent/service/register", {"Name": "ig", "Kind": "ingress-gateway", "Port": 8080})[0] == 200
    gws = agent.get("/v1/catalog/gateway-services/ig")[1]
    assert [(g["Service"]["Name"], g["GatewayKind"], g["Port"], g["Hosts"]) for g in gws] == \
        [("web-f", "ingress-gateway", 8080, ["web.example"])]
    wait_for(lambda: agent.get("/v1/health/ingress/web-f")[1], message="the gateway in health/ingress")
    assert agent.get("/v1/health/ingress/web-f")[1][0]["Service"]["Service"] == "ig"
    assert agent.get("/v1/health/ingress/other")[1] == []
