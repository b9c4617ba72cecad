"""The HTTP API against a real dev agent: Consul's shapes, status codes, headers, blocking queries,
and bad input that always gets a clear 4xx and never a 500."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from support import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    return shared_dev_agent


def test_headers_on_reads(agent: AgentProcess) -> None:
    status, body, headers = agent.request("GET", "/v1/catalog/nodes")
    assert status == 200 and "dev" in [n["Node"] for n in body]  # other tests add nodes
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true" and headers["X-Consul-LastContact"] == "0"
    _, _, h = agent.request("GET", "/v1/kv/never-written-key-x")
    assert int(h["X-Consul-Index"]) >= 1, "X-Consul-Index is never 0"


def test_agent_service_lifecycle_and_shapes(agent: AgentProcess) -> None:
    svc = {"ID": "api-1", "Name": "api", "Tags": ["v1"], "Port": 9000, "Address": "10.0.0.9",
           "Meta": {"team": "x"}, "Weights": {"Passing": 3, "Warning": 1}, "EnableTagOverride": True,
           "TaggedAddresses": {"lan": {"Address": "10.0.0.9", "Port": 9000}},
           "Checks": [{"TTL": "30s", "Status": "passing"}, {"TTL": "30s", "CheckID": "api-extra", "Name": "extra"}]}
    assert agent.put("/v1/agent/service/register", svc)[0] == 200
    status, got = agent.get("/v1/agent/service/api-1")
    assert status == 200
    for k in ("ID", "Service", "Tags", "Port", "Address", "Meta", "Weights", "EnableTagOverride", "ContentHash"):
        assert k in got, k
    assert got["Service"] == "api" and got["Weights"] == {"Passing": 3, "Warning": 1}
    checks = agent.get("/v1/agent/checks")[1]
    assert checks["service:api-1:1"]["Status"] == "passing" and checks["api-extra"]["Status"] == "critical"

    def in_catalog():
        entries = agent.get("/v1/health/service/api")[1]
        return entries and {c["CheckID"] for c in entries[0]["Checks"]} >= {"service:api-1:1", "api-extra"}

    wait_for(in_catalog, message="anti-entropy to sync api-1")
    entry = agent.get("/v1/health/service/api")[1][0]
    assert set(entry) == {"Node", "Service", "Checks"}
    assert agent.get("/v1/health/service/api?passing")[1] == []  # api-extra is critical
    agent.put("/v1/agent/check/pass/api-extra?note=ok")
    wait_for(lambda: len(agent.get("/v1/health/service/api?passing")[1]) == 1, message="api passing")
    sn = agent.get("/v1/catalog/service/api")[1][0]
    assert sn["ServiceAddress"] == "10.0.0.9" and sn["ServicePort"] == 9000 and sn["ServiceMeta"] == {"team": "x"}
    assert agent.get("/v1/agent/health/service/id/api-1")[0] == 200
    agent.put("/v1/agent/check/warn/api-extra")
    assert agent.get("/v1/agent/health/service/name/api")[0] == 429
    agent.put("/v1/agent/service/maintenance/api-1?enable=true&reason=upgrade")
    assert agent.get("/v1/agent/checks")[1]["_service_maintenance:api-1"]["Notes"] == "upgrade"
    assert agent.get("/v1/agent/health/service/id/api-1")[0] == 503
    agent.put("/v1/agent/service/maintenance/api-1?enable=false")
    assert agent.put("/v1/agent/service/deregister/api-1")[0] == 200
    wait_for(lambda: agent.get("/v1/health/service/api")[1] == [], message="api gone from the catalog")
    status, text = agent.put("/v1/agent/service/deregister/api-1")
    assert status == 404 and "Unknown service ID" in text


def test_ttl_check_goes_critical_by_itself(agent: AgentProcess) -> None:
    agent.put("/v1/agent/check/register", {"Name": "short-ttl", "TTL": "1s", "Status": "passing"})
    assert agent.get("/v1/agent/checks")[1]["short-ttl"]["Status"] == "passing"
    wait_for(lambda: agent.get("/v1/agent/checks")[1]["short-ttl"]["Status"] == "critical", 5,
             message="TTL expiry")
    assert agent.get("/v1/agent/checks")[1]["short-ttl"]["Output"] == "TTL expired"
    agent.put("/v1/agent/check/deregister/short-ttl")


def test_catalog_register_deregister(agent: AgentProcess) -> None:
    body = {"Node": "ext-1", "Address": "192.0.2.1", "NodeMeta": {"env": "prod"},
            "Service": {"Service": "ext", "Port": 443, "Tags": ["a"]},
            "Check": {"CheckID": "ext-ok", "Name": "ok", "Status": "passing", "ServiceID": "ext"}}
    assert agent.put("/v1/catalog/register", body) == (200, True)
    assert [n["Node"] for n in agent.get("/v1/catalog/nodes?node-meta=env:prod")[1]] == ["ext-1"]
    assert agent.get("/v1/catalog/services")[1]["ext"] == ["a"]
    assert agent.get("/v1/catalog/node/ext-1")[1]["Services"]["ext"]["Port"] == 443
    assert agent.get("/v1/catalog/node-services/ext-1")[1]["Services"][0]["ID"] == "ext"
    assert agent.get("/v1/catalog/node-services/nope")[0] == 404
    assert agent.get("/v1/health/checks/ext")[1][0]["CheckID"] == "ext-ok"
    assert [c["CheckID"] for c in agent.get("/v1/health/state/passing")[1]] != []
    assert agent.get("/v1/catalog/service/ext?tag=a")[1] and agent.get("/v1/catalog/service/ext?tag=zz")[1] == []
    assert agent.put("/v1/catalog/deregister", {"Node": "ext-1"}) == (200, True)
    assert agent.get("/v1/catalog/node/ext-1")[1] is None


def test_kv_endpoints(agent: AgentProcess) -> None:
    assert agent.put("/v1/kv/kvt/a?flags=7", raw=b"hello") == (200, True)
    entry = agent.get("/v1/kv/kvt/a")[1][0]
    assert base64.b64decode(entry["Value"]) == b"hello" and entry["Flags"] == 7 and "Session" not in entry
    status, raw, headers = agent.request("GET", "/v1/kv/kvt/a?raw")
    assert raw == "hello"
    assert agent.put(f"/v1/kv/kvt/a?cas={entry['ModifyIndex'] + 1}", raw=b"x") == (200, False)
    assert agent.put(f"/v1/kv/kvt/a?cas={entry['ModifyIndex']}", raw=b"y") == (200, True)
    agent.put("/v1/kv/kvt/b/c", raw=b"")
    assert agent.get("/v1/kv/kvt/?keys&separator=/")[1] == ["kvt/a", "kvt/b/"]
    assert [e["Key"] for e in agent.get("/v1/kv/kvt?recurse")[1]] == ["kvt/a", "kvt/b/c"]
    assert agent.request("DELETE", "/v1/kv/kvt?recurse")[1] is True
    assert agent.get("/v1/kv/kvt/a")[0] == 404
    status, text = agent.put("/v1/kv/big", raw=b"x" * (512 * 1024 + 1))
    assert status == 413 and "too large" in text


def test_blocking_query_returns_on_change_and_waits_otherwise(agent: AgentProcess) -> None:
    agent.put("/v1/kv/block/k", raw=b"1")
    _, _, h = agent.request("GET", "/v1/kv/block/k")
    index = int(h["X-Consul-Index"])
    t0 = time.monotonic()
    _, _, h2 = agent.request("GET", f"/v1/kv/block/k?index={index}&wait=1s")
    waited = time.monotonic() - t0
    assert 1.0 <= waited < 1.0 + 1 / 16 + 0.5, "waits the full wait, plus at most wait/16 jitter"
    assert int(h2["X-Consul-Index"]) == index
    timer = threading.Timer(0.3, lambda: agent.put("/v1/kv/block/k", raw=b"2"))
    timer.start()
    t0 = time.monotonic()
    _, body, h3 = agent.request("GET", f"/v1/kv/block/k?index={index}&wait=30s")
    timer.join()
    assert time.monotonic() - t0 < 5 and int(h3["X-Consul-Index"]) > index
    assert base64.b64decode(body[0]["Value"]) == b"2"
    # A write to another key does not wake a watcher of this one.
    _, _, h4 = agent.request("GET", "/v1/kv/block/k")
    idx4 = int(h4["X-Consul-Index"])
    timer = threading.Timer(0.2, lambda: agent.put("/v1/kv/block/other", raw=b"x"))
    timer.start()
    t0 = time.monotonic()
    agent.request("GET", f"/v1/kv/block/k?index={idx4}&wait=1s")
    timer.join()
    assert time.monotonic() - t0 >= 1.0


def test_health_blocking_query(agent: AgentProcess) -> None:
    agent.put("/v1/catalog/register", {"Node": "bq", "Address": "192.0.2.7", "Service": {"Service": "bq"}})
    _, _, h = agent.request("GET", "/v1/health/service/bq")
    index = int(h["X-Consul-Index"])
    timer = threading.Timer(0.3, lambda: agent.put("/v1/catalog/register", {
        "Node": "bq", "Address": "192.0.2.7", "SkipNodeUpdate": True,
        "Checks": [{"CheckID": "bq", "ServiceID": "bq", "Status": "critical"}]}))
    timer.start()
    _, body, h2 = agent.request("GET", f"/v1/health/service/bq?index={index}&wait=20s")
    timer.join()
    assert int(h2["X-Consul-Index"]) > index and body[0]["Checks"][0]["Status"] == "critical"


def test_sessions(agent: AgentProcess) -> None:
    status, out = agent.put("/v1/session/create", {"Name": "lock", "TTL": "15s", "LockDelay": "1s"})
    assert status == 200
    sid = out["ID"]
    assert agent.get(f"/v1/session/info/{sid}")[1][0]["Name"] == "lock"
    assert agent.put(f"/v1/session/renew/{sid}")[1][0]["ID"] == sid
    assert agent.put(f"/v1/kv/locked?acquire={sid}", raw=b"me") == (200, True)
    assert agent.get("/v1/kv/locked")[1][0]["Session"] == sid
    assert any(s["ID"] == sid for s in agent.get("/v1/session/list")[1])
    assert any(s["ID"] == sid for s in agent.get("/v1/session/node/dev")[1])
    assert agent.put(f"/v1/kv/locked?release={sid}", raw=b"") == (200, True)
    assert agent.put(f"/v1/session/destroy/{sid}") == (200, True)
    assert agent.put(f"/v1/session/renew/{sid}")[0] == 404
    status, text = agent.put("/v1/session/create", {"TTL": "5s"})
    assert status == 400 and "Invalid Session TTL" in text


def test_txn_status_events(agent: AgentProcess) -> None:
    ops = [{"KV": {"Verb": "set", "Key": "txn/a", "Value": base64.b64encode(b"1").decode()}},
           {"KV": {"Verb": "get", "Key": "txn/a"}}]
    status, out = agent.put("/v1/txn", ops)
    assert status == 200 and out["Errors"] is None and len(out["Results"]) == 2
    status, out = agent.put("/v1/txn", [{"KV": {"Verb": "cas", "Key": "txn/a", "Index": 1, "Value": ""}}])
    assert status == 409 and out["Errors"][0]["OpIndex"] == 0
    assert agent.get("/v1/status/leader")[1].endswith(f":{agent.server_port}")
    assert agent.get("/v1/status/peers")[1] == [agent.get("/v1/status/leader")[1]]
    status, ev = agent.put("/v1/event/fire/deploy", raw=b"v2")
    assert status == 200 and ev["Name"] == "deploy"
    assert [e["ID"] for e in agent.get("/v1/event/list?name=deploy")[1]] == [ev["ID"]]
    assert agent.get("/v1/agent/self")[1]["Config"]["NodeName"] == "dev"
    assert agent.get("/v1/agent/members")[1][0]["Status"] == 1
    assert agent.get("/v1/catalog/datacenters")[1] == ["dc1"]


BAD_BODIES = [b"", b"{", b"[]", b"null", b"42", b'"s"', b'{"Name": 5}', b'{"Name": ""}', b'{"Name": "x", "Port": "80"}',
              b'{"Name": "x", "Tags": "a"}', b'{"Name": "x", "Check": {"HTTP": "x", "TTL": "1s"}}',
              b'{"Name": "x", "Check": {"Interval": "10s"}}', b'{"Name": "x", "Check": {"TCP": "h", "Interval": "x"}}',
              b'{"Node": 1}', b'{"Node": "n"}', b'{"Service": []}', b"\xff\xfe", b'{"Name":"x","Meta":{"a":1}}',
              b'[{"KV": {"Verb": "nope"}}]', b'[{"KV": {"Verb": "set", "Key": "k", "Value": "!!"}}]',
              b'{"TTL": "1s", "ServiceID": "no-such"}', b'{"LockDelay": true}', b'{"Behavior": "explode"}']
PUT_PATHS = ["/v1/agent/service/register", "/v1/agent/check/register", "/v1/catalog/register",
             "/v1/catalog/deregister", "/v1/txn", "/v1/session/create", "/v1/agent/check/update/nope", "/v1/config",
             "/v1/snapshot"]


def test_bad_input_is_a_clear_4xx_never_a_500(agent: AgentProcess) -> None:
    for path in PUT_PATHS:
        for body in BAD_BODIES:
            status, text, _ = agent.request("PUT", path, raw=body)
            assert status < 500, (path, body, status, text)  # some bodies are valid for some endpoints
            if status == 400:
                assert isinstance(text, str) and text.strip() and "\n" not in text.strip(), (path, body, text)
    for path in ["/v1/kv/x?index=abc", "/v1/kv/x?wait=forever", "/v1/kv/x?stale&consistent", "/v1/catalog/nodes?dc=dc9",
                 "/v1/health/state/sideways", "/v1/catalog/nodes?filter=Node%20%3D%3D", "/v1/kv/x?cas=-1"]:
        status, text, _ = agent.request("GET" if "cas" not in path else "PUT", path)
        assert 400 <= status <= 500 and status != 500 or "No path to datacenter" in text, (path, status, text)
    assert "Traceback" not in agent.log()


def test_unknown_paths_and_wrong_methods(agent: AgentProcess) -> None:
    assert agent.request("GET", "/v1/nope")[0] == 404
    assert agent.request("POST", "/v1/kv/x")[0] == 405
    assert agent.request("DELETE", "/v1/catalog/nodes")[0] == 405


def test_error_messages_name_the_field(agent: AgentProcess) -> None:
    status, text = agent.put("/v1/agent/service/register", {"Name": "x", "Port": "80"})
    assert status == 400 and "Service.Port" in text
    status, text = agent.put("/v1/agent/check/register", {"Name": "c", "HTTP": "http://x", "TTL": "1s"})
    assert status == 400 and "more than one check type" in text
    status, text = agent.put("/v1/agent/service/register", {"Name": "x", "Check": {"TCP": "h:1", "Interval": "soon"}})
    assert status == 400 and "Interval" in text
    status, text, _ = agent.request("GET", "/v1/kv/x?index=abc")
    assert status == 400 and "Invalid index" in text
    status, text = agent.put("/v1/catalog/register", json.loads('{"Node": "n"}'))
    assert status == 400 and "address" in text.lower()


def test_txn_catalog_operations(agent: AgentProcess) -> None:
    ops = [{"Node": {"Verb": "set", "Node": {"Node": "ext", "Address": "10.9.0.1", "Meta": {"k": "v"}}}},
           {"Service": {"Verb": "set", "Node": "ext", "Service": {"ID": "db-1", "Service": "db", "Port": 5432,
                                                                   "Tags": ["primary"]}}},
           {"Check": {"Verb": "set", "Check": {"Node": "ext", "CheckID": "db-1/ok", "Name": "ok",
                                                "ServiceID": "db-1", "Status": "passing"}}}]
    status, out = agent.put("/v1/txn", ops)
    assert status == 200 and out["Errors"] is None, out
    assert out["Results"][1]["Service"]["Port"] == 5432 and out["Results"][2]["Check"]["ServiceName"] == "db"
    health = agent.get("/v1/health/service/db?passing")[1]
    assert [(h["Node"]["Node"], h["Service"]["ID"]) for h in health] == [("ext", "db-1")]
    status, out = agent.put("/v1/txn", [{"Service": {"Verb": "set", "Node": "nowhere",
                                                     "Service": {"Service": "x"}}}])
    assert status == 409 and "Missing node registration" in out["Errors"][0]["What"]
    status, text = agent.put("/v1/txn", [{"Service": {"Verb": "set", "Node": "ext", "Service": {"Port": "80"}}}])
    assert status == 400 and "Txn[0].Service.Service.Port must be a non-negative number" in text
    status, out = agent.put("/v1/txn", [{"Service": {"Verb": "delete", "Node": "ext", "Service": {"ID": "db-1"}}}])
    assert status == 200 and agent.get("/v1/health/service/db")[1] == []


def test_a_node_with_serf_health_that_no_member_has_is_reaped_and_an_external_node_kept(agent: AgentProcess) -> None:
    # Consul's reconcileReaped: serfHealth is the pool's check, so a node carrying it that the pool does not
    # know (reaped after reconnect_timeout) is deregistered by the leader; a node without it is the catalog API's.
    ghost = {"Node": "reap-ghost", "Address": "10.9.9.9",
             "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}}
    external = {"Node": "reap-external", "Address": "10.9.9.8", "Service": {"Service": "reap-ext", "Port": 1}}
    assert agent.put("/v1/catalog/register", ghost)[0] == 200
    assert agent.put("/v1/catalog/register", external)[0] == 200

    def nodes() -> set[str]:
        return {n["Node"] for n in agent.get("/v1/catalog/nodes")[1]}

    wait_for(lambda: "reap-ghost" not in nodes(), timeout=20.0, message="the leader reaps reap-ghost")
    assert {"reap-external", "dev"} <= nodes()
    agent.put("/v1/catalog/deregister", {"Node": "reap-external"})
