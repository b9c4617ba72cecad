"""The unmodified py-consul client against a real Proconsul dev agent."""

from __future__ import annotations

import base64
import threading
import time

import consul
import pytest
from support import AgentProcess, wait_for


@pytest.fixture(scope="module")
def c(shared_dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=shared_dev_agent.http_port)


def test_kv(c: consul.Consul) -> None:
    assert c.kv.put("pykv/a", "1", flags=5) is True
    index, data = c.kv.get("pykv/a")
    assert data["Value"] == b"1" and data["Flags"] == 5 and int(index) > 0
    assert c.kv.put("pykv/a", "2", cas=data["ModifyIndex"] + 1000) is False
    assert c.kv.put("pykv/a", "2", cas=data["ModifyIndex"]) is True
    c.kv.put("pykv/b/c", "3")
    _, keys = c.kv.get("pykv/", keys=True, separator="/")
    assert keys == ["pykv/a", "pykv/b/"]
    _, items = c.kv.get("pykv/", recurse=True)
    assert [i["Key"] for i in items] == ["pykv/a", "pykv/b/c"]
    assert c.kv.get("pykv/missing") [1] is None
    assert c.kv.delete("pykv/", recurse=True) is True
    assert c.kv.get("pykv/a")[1] is None


def test_kv_blocking_get(c: consul.Consul) -> None:
    c.kv.put("py/watch", "v1")
    index, _ = c.kv.get("py/watch")
    timer = threading.Timer(0.3, lambda: c.kv.put("py/watch", "v2"))
    timer.start()
    t0 = time.monotonic()
    new_index, data = c.kv.get("py/watch", index=index, wait="10s")
    timer.join()
    assert int(new_index) > int(index) and data["Value"] == b"v2" and time.monotonic() - t0 < 5


def test_agent_services_and_checks(c: consul.Consul) -> None:
    c.agent.service.register("py-web", service_id="py-web-1", port=8080, tags=["v1"], check=consul.Check.ttl("10s"),
                             meta={"k": "v"})
    services = c.agent.services()
    assert services["py-web-1"]["Service"] == "py-web" and services["py-web-1"]["Meta"] == {"k": "v"}
    assert c.agent.checks()["service:py-web-1"]["Status"] == "critical"
    c.agent.check.ttl_pass("service:py-web-1", notes="fine")
    wait_for(lambda: c.health.service("py-web", passing=True)[1], message="py-web passing")
    _, nodes = c.health.service("py-web", passing=True)
    assert nodes[0]["Service"]["Port"] == 8080 and nodes[0]["Node"]["Node"] == "dev"
    c.agent.check.register("py-check", check=consul.Check.ttl("30s"), check_id="py-check")
    assert "py-check" in c.agent.checks()
    c.agent.check.deregister("py-check")
    assert "py-check" not in c.agent.checks()
    c.agent.service.maintenance("py-web-1", True, "upgrade")
    assert "_service_maintenance:py-web-1" in c.agent.checks()
    c.agent.service.maintenance("py-web-1", False)
    c.agent.service.deregister("py-web-1")
    assert "py-web-1" not in c.agent.services()
    assert c.agent.self()["Config"]["Datacenter"] == "dc1"
    assert c.agent.members()[0]["Name"] == "dev"


def test_catalog_and_health(c: consul.Consul) -> None:
    assert c.catalog.register("py-node", "192.0.2.10", service={"Service": "py-ext", "Port": 443},
                              check={"CheckID": "py-ext", "Name": "ok", "Status": "passing", "ServiceID": "py-ext"},
                              node_meta={"env": "test"}) is True
    _, nodes = c.catalog.nodes()
    assert "py-node" in [n["Node"] for n in nodes]
    _, services = c.catalog.services()
    assert "py-ext" in services
    _, svc = c.catalog.service("py-ext")
    assert svc[0]["ServicePort"] == 443
    _, node = c.catalog.node("py-node")
    assert node["Services"]["py-ext"]["Port"] == 443
    _, checks = c.health.checks("py-ext")
    assert checks[0]["Status"] == "passing"
    _, node_checks = c.health.node("py-node")
    assert [x["CheckID"] for x in node_checks] == ["py-ext"]
    _, passing = c.health.state("passing")
    assert any(x["CheckID"] == "py-ext" for x in passing)
    assert c.catalog.deregister("py-node") is True
    _, nodes = c.catalog.nodes()
    assert "py-node" not in [n["Node"] for n in nodes]


def test_sessions_and_locks(c: consul.Consul) -> None:
    sid = c.session.create(name="py-lock", ttl=20, lock_delay=0, behavior="delete")
    assert c.kv.put("py/lock", "holder", acquire=sid) is True
    other = c.session.create(name="other", lock_delay=0)
    assert c.kv.put("py/lock", "thief", acquire=other) is False
    _, info = c.session.info(sid)
    assert info["Name"] == "py-lock" and info["Behavior"] == "delete"
    assert c.session.renew(sid)["ID"] == sid
    _, sessions = c.session.list()
    assert {sid, other} <= {s["ID"] for s in sessions}
    _, mine = c.session.node("dev")
    assert sid in {s["ID"] for s in mine}
    assert c.session.destroy(sid) is True
    assert c.kv.get("py/lock")[1] is None, "Behavior=delete removes the held key"
    c.session.destroy(other)


def test_status_txn_events(c: consul.Consul, shared_dev_agent: AgentProcess) -> None:
    assert c.status.leader() == f"127.0.0.1:{shared_dev_agent.server_port}"
    assert c.status.peers() == [c.status.leader()]
    result = c.txn.put([{"KV": {"Verb": "set", "Key": "py/txn", "Value": base64.b64encode(b"t").decode()}}])
    assert result["Errors"] is None and result["Results"][0]["KV"]["Key"] == "py/txn"
    event = c.event.fire("py-deploy", "payload")
    _, events = c.event.list(name="py-deploy")
    assert events[-1]["ID"] == event["ID"]
