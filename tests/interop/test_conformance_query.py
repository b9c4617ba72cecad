"""Prepared queries as Consul documents them (api-docs/query, DNS interface): CRUD, execute with every
filter, templates, explain, session-bound queries and `<query>.query.<domain>` over the real `dig` — through
py-consul's `query` API where it has the call, raw HTTP for exact shapes."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import consul
import pytest
from support import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    a = shared_dev_agent

    def instance(node: str, addr: str, sid: str, status: str, tags: list[str], meta: dict[str, str],
                 node_meta: dict[str, str], extra_check: dict | None = None) -> None:
        checks = [{"CheckID": f"{sid}:alive", "Name": "alive", "ServiceID": sid, "Status": status}]
        if extra_check:
            checks.append(dict(extra_check, ServiceID=sid))
        status_code, _ = a.put("/v1/catalog/register", {
            "Node": node, "Address": addr, "NodeMeta": node_meta,
            "Service": {"ID": sid, "Service": "db", "Port": 5432, "Tags": tags, "Meta": meta}, "Checks": checks})
        assert status_code == 200

    instance("pq-a", "10.8.0.1", "db-a", "passing", ["primary", "v1"], {"env": "prod"}, {"rack": "r1"})
    instance("pq-b", "10.8.0.2", "db-b", "warning", ["replica", "v1"], {"env": "prod"}, {"rack": "r2"})
    instance("pq-c", "10.8.0.3", "db-c", "critical", ["replica", "experimental"], {"env": "dev"}, {"rack": "r1"})
    instance("pq-d", "10.8.0.4", "db-d", "passing", ["replica", "experimental"], {"env": "prod"}, {"rack": "r2"},
             {"CheckID": "db-d:flaky", "Name": "flaky", "Status": "critical"})
    for sid, node, addr, rack in (("geo-db-customer-a", "pq-a", "10.8.0.1", "r1"),
                                  ("geo-db-orders-b", "pq-b", "10.8.0.2", "r2")):
        a.put("/v1/catalog/register", {"Node": node, "Address": addr, "NodeMeta": {"rack": rack}, "Service": {
            "ID": sid, "Service": "-".join(sid.split("-")[:3]), "Port": 3306, "Tags": [sid.split("-")[-1]]}})
    return a


@pytest.fixture
def c(agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def create(agent: AgentProcess, definition: dict) -> str:
    status, out, _ = agent.request("POST", "/v1/query", definition)
    assert status == 200, out
    assert set(out) == {"ID"} and uuid.UUID(out["ID"])
    return out["ID"]


def execute(agent: AgentProcess, query: str, params: str = "") -> dict:
    status, out = agent.get(f"/v1/query/{query}/execute{params}")
    assert status == 200, out
    return out


def nodes(result: dict) -> list[str]:
    return sorted(n["Node"]["Node"] for n in result["Nodes"])


def test_crud_with_consul_shapes(agent: AgentProcess) -> None:
    qid = create(agent, {"Name": "pq-crud", "Service": {"Service": "db", "Tags": ["primary"],
                                                         "Failover": {"NearestN": 3, "Datacenters": ["dc1", "dc2"]}},
                         "DNS": {"TTL": "10s"}})
    status, rows = agent.get(f"/v1/query/{qid}")
    assert status == 200 and len(rows) == 1
    row = rows[0]
    assert row["ID"] == qid and row["Name"] == "pq-crud" and row["DNS"] == {"TTL": "10s"}
    assert row["Service"]["Service"] == "db" and row["Service"]["Tags"] == ["primary"]
    assert row["Service"]["Failover"]["NearestN"] == 3 and row["Service"]["Failover"]["Datacenters"] == ["dc1", "dc2"]
    assert row["Service"]["OnlyPassing"] is False and row["CreateIndex"] == row["ModifyIndex"] > 0
    assert qid in [q["ID"] for q in agent.get("/v1/query")[1]]
    status, body, _ = agent.request("PUT", f"/v1/query/{qid}", {"Name": "pq-crud", "Service": {"Service": "db"}})
    assert status == 200
    updated = agent.get(f"/v1/query/{qid}")[1][0]
    assert updated["Service"]["Tags"] is None and updated["ModifyIndex"] > row["ModifyIndex"]
    assert updated["CreateIndex"] == row["CreateIndex"]
    assert agent.request("DELETE", f"/v1/query/{qid}")[0] == 200
    missing = str(uuid.uuid4())
    for method, path in (("GET", f"/v1/query/{qid}"), ("DELETE", f"/v1/query/{missing}"),
                         ("GET", f"/v1/query/{missing}/execute"), ("GET", "/v1/query/no-such-query/execute"),
                         ("GET", "/v1/query/no-such-query/explain")):
        status, text, _ = agent.request(method, path)
        assert (status, text.strip()) == (404, "Query not found"), (method, path)
    status, text, _ = agent.request("PUT", f"/v1/query/{missing}", {"Service": {"Service": "db"}})
    assert status == 404


@pytest.mark.parametrize("definition, error", [
    ({"Name": "x"}, "Must provide a Service name to query"),
    ({"Service": {"Service": "db"}, "DNS": {"TTL": "soon"}}, "Bad DNS TTL 'soon'"),
    ({"Service": {"Service": "db"}, "DNS": {"TTL": "-5s"}}, "DNS TTL '-5s', must be >=0"),
    ({"Service": {"Service": "db", "Failover": {"NearestN": -1}}}, "Bad NearestN '-1', must be >= 0"),
    ({"Service": {"Service": "db", "Failover": {"NearestN": 1, "Targets": [{"Datacenter": "dc2"}]}}},
     "Targets cannot be populated with NearestN or Datacenters"),
    ({"Service": {"Service": "db"}, "Template": {"Type": "glob"}}, "Bad Template.Type 'glob'"),
    ({"Service": {"Service": "db"}, "Template": {"Type": "name_prefix_match", "Regexp": "(["}}, "Bad Regexp"),
    ({"Service": {"Service": "${name.nope}"}, "Template": {"Type": "name_prefix_match"}}, "unknown variable"),
    ({"Name": str(uuid.uuid4()), "Service": {"Service": "db"}}, "Query name cannot be a UUID"),
    ({"Service": {"Service": "db"}, "Session": "no-such-session"}, "invalid session"),
    ({"Service": {"Service": "db", "Tags": "primary"}}, "Query.Service.Tags must be a list of strings"),
    ({"Service": {"Service": "db", "Colour": "red"}}, "unknown field 'Colour'"),
])
def test_bad_definitions_are_400s_naming_the_field(agent: AgentProcess, definition: dict, error: str) -> None:
    status, text, _ = agent.request("POST", "/v1/query", definition)
    assert status == 400 and error in text, (status, text)


def test_names_are_unique(agent: AgentProcess) -> None:
    qid = create(agent, {"Name": "pq-unique", "Service": {"Service": "db"}})
    status, text, _ = agent.request("POST", "/v1/query", {"Name": "PQ-Unique", "Service": {"Service": "db"}})
    assert status == 400 and "aliases an existing query name" in text
    agent.request("DELETE", f"/v1/query/{qid}")


def test_execute_filters_as_consul(agent: AgentProcess) -> None:
    qid = create(agent, {"Name": "pq-all", "Service": {"Service": "db"}})
    out = execute(agent, qid)
    assert out["Service"] == "db" and out["Datacenter"] == "dc1" and out["Failovers"] == 0
    assert out["DNS"] == {"TTL": ""}
    assert nodes(out) == ["pq-a", "pq-b"]  # warning passes by default; critical (c) and any failing check (d) not
    assert {"Node", "Service", "Checks"} <= set(out["Nodes"][0]) and out["Nodes"][0]["Checks"]
    assert nodes(execute(agent, "pq-all")) == ["pq-a", "pq-b"]  # by name as well as by ID
    cases = {
        "pq-passing": ({"OnlyPassing": True}, ["pq-a"]),
        "pq-tags": ({"Tags": ["replica", "!experimental"]}, ["pq-b"]),
        "pq-nodemeta": ({"NodeMeta": {"rack": "r1"}}, ["pq-a"]),
        "pq-svcmeta": ({"ServiceMeta": {"env": "prod"}, "IgnoreCheckIDs": ["db-d:flaky"]}, ["pq-a", "pq-b", "pq-d"]),
        "pq-ignore": ({"IgnoreCheckIDs": ["db-c:alive", "db-d:flaky"], "Tags": ["experimental"]}, ["pq-c", "pq-d"]),
    }
    for name, (service, want) in cases.items():
        create(agent, {"Name": name, "Service": dict(service, Service="db")})
        assert nodes(execute(agent, name)) == want, name
    # Failover to other datacenters: none is known, so the local answer stands with no failover, as in Consul.
    create(agent, {"Name": "pq-failover", "Service": {"Service": "db", "Tags": ["absent"],
                                                      "Failover": {"Datacenters": ["dc9"]}}})
    out = execute(agent, "pq-failover")
    assert out["Nodes"] == [] and out["Failovers"] == 0 and out["Datacenter"] == "dc1"


def test_near_and_limit(agent: AgentProcess) -> None:
    create(agent, {"Name": "pq-near", "Service": {"Service": "db", "Near": "pq-b"}})
    for _ in range(8):  # shuffled each time, but the Near node always first
        assert execute(agent, "pq-near")["Nodes"][0]["Node"]["Node"] == "pq-b"
    firsts = {execute(agent, "pq-near", "?near=pq-a")["Nodes"][0]["Node"]["Node"] for _ in range(5)}
    assert firsts == {"pq-a"}  # ?near= overrides the query's Near
    assert len(execute(agent, "pq-near", "?limit=1")["Nodes"]) == 1
    create(agent, {"Name": "pq-near-none", "Service": {"Service": "db"}})  # its own: tests run in any order
    seen = {execute(agent, "pq-near-none")["Nodes"][0]["Node"]["Node"] for _ in range(40)}
    assert seen == {"pq-a", "pq-b"}  # without Near, shuffled


def test_templates_prefix_regexp_and_explain(agent: AgentProcess) -> None:
    create(agent, {"Name": "geo-db", "Template": {"Type": "name_prefix_match",
                                                  "Regexp": "^geo-db-(.*?)-([^\\-]+?)$"},
                   "Service": {"Service": "geo-db-${match(1)}", "Tags": ["${match(2)}"]}})
    out = execute(agent, "geo-db-customer-a")
    assert out["Service"] == "geo-db-customer" and nodes(out) == ["pq-a"]
    assert execute(agent, "geo-db-orders-b")["Service"] == "geo-db-orders"
    assert execute(agent, "geo-db-orders-x")["Nodes"] == []
    status, explained = agent.get("/v1/query/geo-db-customer-a/explain")
    assert status == 200 and explained["Query"]["Service"]["Service"] == "geo-db-customer"
    assert explained["Query"]["Service"]["Tags"] == ["a"] and explained["Query"]["Name"] == "geo-db"
    # name.prefix / name.suffix, RemoveEmptyTags, and the longest prefix winning over a shorter one.
    create(agent, {"Name": "pq-tpl", "Template": {"Type": "name_prefix_match", "RemoveEmptyTags": True},
                   "Service": {"Service": "${name.prefix}-never", "Tags": [""]}})
    create(agent, {"Name": "pq-tpl-", "Template": {"Type": "name_prefix_match", "RemoveEmptyTags": True},
                   "Service": {"Service": "${name.suffix}", "Tags": ["${match(3)}"]}})
    explained = agent.get("/v1/query/pq-tpl-db/explain")[1]["Query"]
    assert explained["Service"]["Service"] == "db" and explained["Service"]["Tags"] == []
    assert nodes(execute(agent, "pq-tpl-db")) == ["pq-a", "pq-b"]
    # A static query of the exact name is resolved before any template.
    create(agent, {"Name": "pq-tpl-static", "Service": {"Service": "db", "OnlyPassing": True}})
    assert nodes(execute(agent, "pq-tpl-static")) == ["pq-a"]
    # One catch-all template (empty name) answers every other name.
    catch_all = create(agent, {"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.full}"}})
    out = execute(agent, "db")  # no other query's name prefixes "db"
    assert out["Service"] == "db" and nodes(out) == ["pq-a", "pq-b"]
    assert execute(agent, "geo-db-customer")["Service"] == "geo-db-"  # the longer prefix "geo-db" still wins
    status, text, _ = agent.request("POST", "/v1/query", {"Template": {"Type": "name_prefix_match"},
                                                          "Service": {"Service": "x"}})
    assert status == 400 and "empty name already exists" in text
    agent.request("DELETE", f"/v1/query/{catch_all}")


def test_session_bound_query_goes_with_its_session(c: consul.Consul, agent: AgentProcess) -> None:
    sid = c.session.create(name="pq-owner")
    qid = create(agent, {"Name": "pq-session", "Session": sid, "Service": {"Service": "db"}})
    assert agent.get(f"/v1/query/{qid}")[1][0]["Session"] == sid
    c.session.destroy(sid)
    wait_for(lambda: agent.get(f"/v1/query/{qid}")[0] == 404, message="the query to go with its session")


def test_py_consul_query_api(c: consul.Consul) -> None:
    # py-consul always sends a name_prefix_match template (with lower-case keys), as a Consul client does.
    created = c.query.create("db", name="pq-py", onlypassing=True, ttl="7s")
    qid = created["ID"]
    [row] = c.query.get(qid)
    assert row["Name"] == "pq-py" and row["Service"]["OnlyPassing"] is True and row["DNS"]["TTL"] == "7s"
    assert qid in [q["ID"] for q in c.query.list()]
    assert c.query.update(qid, "db", name="pq-py", tags=["v1"])
    result = c.query.execute("pq-py")
    assert result["Service"] == "db" and nodes(result) == ["pq-a", "pq-b"]
    assert len(c.query.execute(qid, limit=1)["Nodes"]) == 1
    assert c.query.explain("pq-py")["Query"]["ID"] == qid
    assert c.query.delete(qid)
    assert c.query.get(qid) is None  # py-consul's reading of Consul's 404 "Query not found"


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian bind9-dnsutils)")
def test_dns_answers_from_the_executed_query(c: consul.Consul, agent: AgentProcess) -> None:
    def dig(*args: str) -> list[str]:
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=3", "+tries=1", "+noall",
                              "+answer", *args], capture_output=True, text=True, timeout=20).stdout
        return [line.split() for line in out.splitlines() if line and not line.startswith(";")]

    qid = create(agent, {"Name": "pq-dns", "Service": {"Service": "db", "Tags": ["v1"]}, "DNS": {"TTL": "42s"}})
    answer = dig("pq-dns.query.mesh", "A")
    assert sorted(r[4] for r in answer) == ["10.8.0.1", "10.8.0.2"] and {r[1] for r in answer} == {"42"}
    srv = dig("pq-dns.query.dc1.mesh", "SRV")
    assert sorted((r[6], r[7]) for r in srv) == [("5432", "pq-a.node.dc1.mesh."), ("5432", "pq-b.node.dc1.mesh.")]
    create(agent, {"Name": "dnsgeo", "Template": {"Type": "name_prefix_match", "Regexp": "^dnsgeo-(.*?)-([^\\-]+?)$"},
                   "Service": {"Service": "geo-db-${match(1)}", "Tags": ["${match(2)}"]}})
    assert sorted(r[4] for r in dig("dnsgeo-orders-b.query.mesh", "A")) == ["10.8.0.2"]  # a template
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=3", "+tries=1",
                          "no-such-query.query.mesh", "A"], capture_output=True, text=True, timeout=20).stdout
    assert "status: NXDOMAIN" in out
    # The answer follows the catalog (a health change) and the query (an update), as executing it would.
    agent.put("/v1/catalog/register", {"Node": "pq-b", "Address": "10.8.0.2", "Checks": [
        {"CheckID": "db-b:alive", "Name": "alive", "ServiceID": "db-b", "Status": "critical"}]})
    wait_for(lambda: sorted(r[4] for r in dig("pq-dns.query.mesh", "A")) == ["10.8.0.1"], timeout=5,
             message="the DNS answer to drop the critical instance")
    agent.request("PUT", f"/v1/query/{qid}", {"Name": "pq-dns", "DNS": {"TTL": "42s"}, "Service": {
        "Service": "db", "Tags": ["replica"], "IgnoreCheckIDs": ["db-d:flaky"]}})
    wait_for(lambda: sorted(r[4] for r in dig("pq-dns.query.mesh", "A")) == ["10.8.0.4"], timeout=5,
             message="the DNS answer to follow the updated query")
    agent.put("/v1/catalog/register", {"Node": "pq-b", "Address": "10.8.0.2", "Checks": [
        {"CheckID": "db-b:alive", "Name": "alive", "ServiceID": "db-b", "Status": "warning"}]})
