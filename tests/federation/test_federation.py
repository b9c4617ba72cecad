"""WAN federation end to end: three datacenters of real agent processes, real HTTP, `dig` and the CLI."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from typing import Any

import pytest
from support import AgentProcess, ok, run, wait_for
from support_federation import Federation, wan_names

pytestmark = pytest.mark.xdist_group("federation")


def test_wan_members_list_every_server_as_node_dot_dc(federation: Federation) -> None:
    fed = federation
    rows = fed.a.get("/v1/agent/members?wan")[1]
    by_name = {r["Name"]: r for r in rows}
    assert set(by_name) == {"a.dc1", "s0.dc2", "s1.dc2", "s2.dc2", "d.dc3"}
    assert by_name["s1.dc2"]["Tags"]["dc"] == "dc2" and by_name["s1.dc2"]["Tags"]["role"] == "consul"
    assert by_name["s1.dc2"]["Port"] == fed.dc2.servers[1].serf_wan_port
    assert by_name["s1.dc2"]["Tags"]["port"] == str(fed.dc2.servers[1].server_port)
    out = ok(fed.a, "members", "-wan")
    for name in by_name:
        assert name in out
    assert fed.c1.get("/v1/agent/members?wan")[1] == []  # clients are not in the WAN pool
    assert {r["Name"] for r in fed.c1.get("/v1/agent/members")[1]} == {"a", "c1"}  # the LAN stays per datacenter


def test_datacenters_ours_first_and_known_everywhere(federation: Federation) -> None:
    fed = federation
    for agent, own in ((fed.a, "dc1"), (fed.c1, "dc1"), (fed.dc2.servers[2], "dc2"), (fed.d, "dc3")):
        dcs = agent.get("/v1/catalog/datacenters")[1]
        assert dcs[0] == own and sorted(dcs) == ["dc1", "dc2", "dc3"]
    assert ok(fed.c1, "catalog", "datacenters").split()[0] == "dc1"


def test_wan_coordinates_per_datacenter(federation: Federation) -> None:
    def complete(agent: AgentProcess) -> list[dict[str, Any]] | None:
        rows = agent.get("/v1/coordinate/datacenters")[1]
        names = {c["Node"] for r in rows for c in r["Coordinates"]}
        return rows if names == {"a.dc1", "s0.dc2", "s1.dc2", "s2.dc2", "d.dc3"} else None

    rows = wait_for(lambda: complete(federation.a), 10, message="every server's coordinate")
    assert rows[0]["Datacenter"] == "dc1" and {r["AreaID"] for r in rows} == {"WAN"}
    coord = rows[0]["Coordinates"][0]["Coord"]
    assert len(coord["Vec"]) == 8 and set(coord) == {"Vec", "Error", "Adjustment", "Height"}
    # Measured: the error estimate has come down from its initial 1.5 after a few exchanges.
    def updated() -> bool:
        rows = complete(federation.a)
        return bool(rows) and all(c["Coord"]["Error"] < 1.5 for r in rows for c in r["Coordinates"])

    wait_for(updated, 10, message="coordinates to be updated by WAN probes")
    assert complete(federation.c1)  # a client agent asks a server
    out = ok(federation.c1, "rtt", "-wan", "a.dc1", "s1.dc2").strip()
    assert out.startswith("Estimated a.dc1 <-> s1.dc2 rtt: ") and out.endswith("ms (using WAN coordinates)")
    assert 0.0 < float(out.split("rtt: ")[1].split()[0]) < 50.0  # loopback-sized


def test_reads_and_writes_reach_the_named_datacenter_from_a_client_agent(federation: Federation) -> None:
    fed, c1 = federation, federation.c1
    status, nodes = c1.get("/v1/catalog/nodes?dc=dc2")
    assert status == 200 and {n["Node"] for n in nodes} == {"s0", "s1", "s2"}
    assert all(n["Datacenter"] == "dc2" for n in nodes)
    # KV: written in dc2 through dc1's client, read in dc2 directly, absent in dc1.
    assert c1.request("PUT", "/v1/kv/fed/k?dc=dc2", raw=b"v2")[1] is True
    assert fed.dc2.servers[0].get("/v1/kv/fed/k?raw")[1] == "v2"
    assert c1.get("/v1/kv/fed/k?raw")[0] == 404
    status, rows, headers = c1.request("GET", "/v1/kv/fed/k?dc=dc2")
    assert status == 200 and int(headers["X-Consul-Index"]) >= 1 and headers["X-Consul-KnownLeader"] == "true"
    # Catalog and health: a service registered in dc3 is found there only.
    reg = {"Node": "ext", "Address": "127.0.0.9", "Service": {"Service": "web", "Port": 8080}}
    assert c1.put("/v1/catalog/register?dc=dc3", reg)[0] == 200
    assert [e["Service"]["Port"] for e in c1.get("/v1/health/service/web?dc=dc3&passing")[1]] == [8080]
    assert c1.get("/v1/health/service/web")[1] == []
    # Sessions and transactions.
    sid = c1.put("/v1/session/create?dc=dc2", {"TTL": "30s"})[1]["ID"]
    wait_for(lambda: fed.dc2.servers[1].get(f"/v1/session/info/{sid}?stale")[1], 5,
             message="the session in a dc2 follower's replica")
    assert c1.get(f"/v1/session/info/{sid}")[1] == []
    txn = [{"KV": {"Verb": "set", "Key": "fed/t", "Value": "dGhyZWU="}}]
    assert c1.put("/v1/txn?dc=dc3", txn)[0] == 200
    assert fed.d.get("/v1/kv/fed/t?raw")[1] == "three"
    # Intentions and config entries (no primary in this federation: each datacenter its own).
    assert c1.request("POST", "/v1/connect/intentions?dc=dc2",
                      {"SourceName": "web", "DestinationName": "db", "Action": "deny"})[0] == 200
    assert [(i["SourceName"], i["Action"]) for i in c1.get("/v1/connect/intentions?dc=dc2")[1]] == [("web", "deny")]
    assert c1.get("/v1/connect/intentions")[1] == []
    assert c1.put("/v1/config?dc=dc3", {"Kind": "service-defaults", "Name": "web", "Protocol": "http"})[0] == 200
    assert c1.get("/v1/config/service-defaults/web?dc=dc3")[1]["Protocol"] == "http"
    assert c1.get("/v1/config/service-defaults/web")[0] == 404
    # Connect CA: each datacenter has its own root here.
    ours = c1.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    theirs = c1.get("/v1/connect/ca/roots?dc=dc2")[1]["TrustDomain"]
    assert ours and theirs and ours != theirs


def test_errors_are_consuls_words_and_fast(federation: Federation) -> None:
    for agent in (federation.c1, federation.a):
        started = time.monotonic()
        status, body = agent.get("/v1/catalog/nodes?dc=nowhere")
        assert (status, body) == (500, "No path to datacenter\n")
        status, body = agent.request("PUT", "/v1/kv/x?dc=nowhere", raw=b"1")[:2]
        assert (status, body) == (500, "No path to datacenter\n")
        assert time.monotonic() - started < 1.0
    # The agent's own endpoints serve only their own datacenter.
    assert federation.c1.get("/v1/agent/services?dc=dc2") == (500, "No path to datacenter\n")


def test_blocking_query_in_another_datacenter_wakes_on_its_change(federation: Federation) -> None:
    c1, dc2 = federation.c1, federation.dc2.servers[0]
    dc2.request("PUT", "/v1/kv/fed/block", raw=b"one")
    _, _, headers = c1.request("GET", "/v1/kv/fed/block?dc=dc2")
    index = int(headers["X-Consul-Index"])
    started = time.monotonic()
    _, _, h = c1.request("GET", f"/v1/kv/fed/block?dc=dc2&index={index}&wait=1s")
    assert time.monotonic() - started >= 0.9 and int(h["X-Consul-Index"]) == index  # it really blocked
    result: dict[str, Any] = {}

    def block() -> None:
        result["answer"] = c1.request("GET", f"/v1/kv/fed/block?dc=dc2&index={index}&wait=20s&raw")

    t = threading.Thread(target=block)
    started = time.monotonic()
    t.start()

    def answered_a_write() -> bool:
        # Parked, the write wakes it; not parked yet, it answers at once with the newer index: both right.
        dc2.request("PUT", "/v1/kv/fed/block", raw=b"two")
        return not t.is_alive()

    wait_for(answered_a_write, 15, interval=0.1, message="the blocking query to answer dc2's write")
    status, body, h = result["answer"]
    assert (status, body) == (200, "two") and int(h["X-Consul-Index"]) > index
    assert time.monotonic() - started < 5.0


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian bind9-dnsutils)")
def test_dns_answers_for_another_datacenter(federation: Federation) -> None:
    fed = federation
    fed.c1.put("/v1/catalog/register?dc=dc3", {"Node": "ext2", "Address": "127.0.0.10",
                                                 "Service": {"Service": "api", "Port": 9090}})

    def dig(agent: AgentProcess, *args: str) -> str:
        return subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=3", "+tries=1", *args],
                              capture_output=True, text=True, timeout=10).stdout

    for agent in (fed.a, fed.c1, fed.dc2.servers[1]):
        assert dig(agent, "+short", "api.service.dc3.mesh").split() == ["127.0.0.10"]
        assert dig(agent, "+short", "api.service.dc3.dc.mesh").split() == ["127.0.0.10"]
        assert "9090" in dig(agent, "+short", "api.service.dc3.mesh", "SRV")
        assert "status: NXDOMAIN" in dig(agent, "api.service.dc9.mesh")
    assert "status: NXDOMAIN" in dig(fed.a, "api.service.mesh")  # not in dc1


def test_cli_datacenter_flag(federation: Federation) -> None:
    fed = federation
    ok(fed.c1, "kv", "put", "-datacenter=dc2", "fed/cli", "hello")
    assert ok(fed.c1, "kv", "get", "-datacenter", "dc2", "fed/cli").strip() == "hello"
    wait_for(lambda: fed.dc2.servers[2].get("/v1/kv/fed/cli?raw&stale")[1] == "hello", 5,
             message="the key in a dc2 follower's replica")
    assert "s1" in ok(fed.c1, "catalog", "nodes", "-datacenter=dc2")
    res = run(fed.c1, "kv", "get", "-datacenter=dc9", "fed/cli")
    assert res.returncode == 1 and "No path to datacenter" in res.stderr


def test_prepared_query_fails_over_to_another_datacenter(federation: Federation) -> None:
    fed = federation
    # dc1 has an instance, but critical; dc3 a healthy one.
    assert fed.c1.put("/v1/catalog/register", {
        "Node": "pq-local", "Address": "127.0.0.21", "Service": {"Service": "pq", "Port": 1},
        "Check": {"CheckID": "pq-down", "Name": "down", "ServiceID": "pq", "Status": "critical"}})[0] == 200
    assert fed.c1.put("/v1/catalog/register?dc=dc3", {
        "Node": "pq-remote", "Address": "127.0.0.22", "Service": {"Service": "pq", "Port": 2}})[0] == 200
    status, body = fed.c1.request("POST", "/v1/query", {
        "Name": "pq-query", "Service": {"Service": "pq", "OnlyPassing": True,
                                        "Failover": {"Datacenters": ["nowhere", "dc3"]}}})[:2]
    assert status == 200, body
    result = fed.c1.get("/v1/query/pq-query/execute")[1]
    assert result["Datacenter"] == "dc3" and result["Failovers"] == 1  # "nowhere" is unknown: skipped, not counted
    assert [n["Node"]["Node"] for n in result["Nodes"]] == ["pq-remote"]
    # Healthy again here: the local answer, no failover.
    fed.c1.put("/v1/catalog/register", {
        "Node": "pq-local", "Address": "127.0.0.21", "Service": {"Service": "pq", "Port": 1},
        "Check": {"CheckID": "pq-down", "Name": "down", "ServiceID": "pq", "Status": "passing"}})
    result = fed.c1.get("/v1/query/pq-query/execute")[1]
    assert (result["Datacenter"], result["Failovers"]) == ("dc1", 0)
    # NearestN: the nearest other datacenter with instances.
    fed.c1.request("POST", "/v1/query", {"Name": "pq-near", "Service": {"Service": "pq-only-remote",
                                                                          "Failover": {"NearestN": 2}}})
    fed.c1.put("/v1/catalog/register?dc=dc3", {"Node": "pq-remote", "Address": "127.0.0.22",
                                                "Service": {"Service": "pq-only-remote", "Port": 3}})
    result = fed.c1.get("/v1/query/pq-near/execute")[1]
    assert result["Datacenter"] == "dc3" and 1 <= result["Failovers"] <= 2


def _dig(agent: AgentProcess, *args: str) -> str:
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=5", "+tries=1", *args],
                          capture_output=True, text=True, timeout=15).stdout


def test_prepared_query_fails_over_in_dns(federation: Federation) -> None:
    """`<query>.query.mesh` with no healthy instance here answers from the failover datacenters, on a
    server and through a client agent; `<query>.query.<dc>.mesh` runs a query of that datacenter."""
    fed = federation
    assert fed.c1.put("/v1/catalog/register", {
        "Node": "dq-local", "Address": "127.0.0.31", "Service": {"Service": "dq", "Port": 1},
        "Check": {"CheckID": "dq-down", "Name": "down", "ServiceID": "dq", "Status": "critical"}})[0] == 200
    assert fed.c1.put("/v1/catalog/register?dc=dc3", {
        "Node": "dq-remote", "Address": "127.0.0.32", "Service": {"Service": "dq", "Port": 4242}})[0] == 200
    assert fed.c1.request("POST", "/v1/query", {"Name": "dq-query", "Service": {
        "Service": "dq", "Failover": {"Datacenters": ["nowhere", "dc2", "dc3"]}}})[0] == 200
    assert fed.c1.request("POST", "/v1/query", {"Name": "dq-nearest", "Service": {
        "Service": "dq", "Failover": {"NearestN": 2}}})[0] == 200
    assert fed.c1.request("POST", "/v1/query", {"Name": "dq-stay", "Service": {"Service": "dq"}})[0] == 200
    for agent in (fed.a, fed.c1):
        assert _dig(agent, "+short", "dq-query.query.mesh").split() == ["127.0.0.32"]
        assert "4242" in _dig(agent, "+short", "dq-query.query.mesh", "SRV")
        assert _dig(agent, "+short", "dq-nearest.query.mesh").split() == ["127.0.0.32"]
        assert "status: NXDOMAIN" in _dig(agent, "dq-stay.query.mesh")  # no Failover: no answer
    # Healthy here again: the local instance, no failover.
    fed.c1.put("/v1/catalog/register", {
        "Node": "dq-local", "Address": "127.0.0.31", "Service": {"Service": "dq", "Port": 1},
        "Check": {"CheckID": "dq-down", "Name": "down", "ServiceID": "dq", "Status": "passing"}})
    wait_for(lambda: _dig(fed.a, "+short", "dq-query.query.mesh").split() == ["127.0.0.31"], 5,
             message="the local answer once dq passes here")
    # A query stored in dc3, asked by name from dc1.
    assert fed.c1.request("POST", "/v1/query?dc=dc3", {"Name": "dq-in-dc3", "Service": {"Service": "dq"}})[0] == 200
    for agent in (fed.a, fed.c1):
        assert _dig(agent, "+short", "dq-in-dc3.query.dc3.mesh").split() == ["127.0.0.32"]
        assert "status: NXDOMAIN" in _dig(agent, "dq-in-dc3.query.mesh")  # not a dc1 query


def test_wan_cut_fails_fast_and_heals_by_itself(federation: Federation) -> None:
    fed = federation
    a = fed.a
    assert a.request("PUT", "/v1/kv/fed/cut?dc=dc2", raw=b"before the cut")[1] is True  # read back after the heal
    assert a.put("/v1/agent/debug/partition", {"Block": ["dc2"]})[0] == 200
    try:
        started = time.monotonic()
        assert a.get("/v1/kv/fed/k?dc=dc2") == (500, "Remote DC has no server currently reachable\n")
        assert fed.c1.get("/v1/kv/fed/k?dc=dc2") == (500, "Remote DC has no server currently reachable\n")
        assert time.monotonic() - started < 1.0
        wait_for(lambda: wan_names(a, status=4) == {"s0.dc2", "s1.dc2", "s2.dc2"}, 10,
                 message="dc1 to see dc2's servers failed")
        wait_for(lambda: "a.dc1" in wan_names(fed.dc2.servers[0], status=4), 10,
                 message="dc2 to see dc1's server failed")
        view = a.get("/v1/operator/federation")[1]
        reach = {d["Datacenter"]: d["Reachable"] for d in view["Datacenters"]}
        assert reach == {"dc1": True, "dc2": False, "dc3": True}
        assert "NO" in ok(fed.c1, "operator", "federation")  # the client agent asks a server
        # Each side keeps serving itself, and dc3 is still reachable from both.
        assert a.request("PUT", "/v1/kv/fed/local", raw=b"ok")[1] is True
        assert fed.c1.get("/v1/catalog/nodes?dc=dc3")[0] == 200
        assert fed.dc2.servers[0].get("/v1/catalog/nodes?dc=dc3")[0] == 200
    finally:
        a.put("/v1/agent/debug/partition", {"Block": []})
    wait_for(lambda: wan_names(a) == {"a.dc1", "s0.dc2", "s1.dc2", "s2.dc2", "d.dc3"}, 10, message="the WAN to heal")
    wait_for(lambda: fed.c1.get("/v1/kv/fed/cut?dc=dc2&raw") == (200, "before the cut"), 5,
             message="forwarding to dc2 again")


def test_server_failover_then_force_leave_wan(federation: Federation) -> None:
    """Last in the module: one dc2 server is killed for good."""
    fed = federation
    victim = next(s for s in fed.dc2.servers if s is not fed.dc2.leader())
    name = f"s{fed.dc2.servers.index(victim)}.dc2"
    victim.stop(signal.SIGKILL)
    for _ in range(20):  # whichever server the router preferred, every call is answered
        assert fed.c1.get("/v1/catalog/nodes?dc=dc2&stale")[0] == 200
    wait_for(lambda: name in wan_names(fed.a, status=4), 10, message=f"{name} to be failed in dc1's view")
    assert ok(fed.a, "force-leave", "-wan", name).strip() == f"Member {name} marked as left"
    assert name in wan_names(fed.a, status=3)
    wait_for(lambda: name in wan_names(fed.d, status=3), 10, message="the leave to spread over the WAN")
    res = run(fed.a, "force-leave", "-wan", "s9.dc2")
    assert res.returncode == 1 and "No node" in res.stderr


def test_remove_a_dead_datacenter(federation: Federation) -> None:
    """After the failover test: dc3 dies for good and is removed at once (not listed for 72 h)."""
    fed = federation
    res = run(fed.a, "operator", "federation", "remove-dc", "dc2")
    assert res.returncode == 1 and "still has alive servers" in res.stderr
    fed.d.stop(signal.SIGKILL)
    wait_for(lambda: "d.dc3" in wan_names(fed.a, status=4), 10, message="dc3 to be failed")
    assert fed.c1.get("/v1/kv/x?dc=dc3") == (500, "Remote DC has no server currently reachable\n")
    assert ok(fed.a, "operator", "federation", "remove-dc", "dc3").startswith("Removed datacenter dc3: d.dc3")
    assert fed.a.get("/v1/catalog/datacenters")[1] == ["dc1", "dc2"]
    assert fed.c1.get("/v1/kv/x?dc=dc3") == (500, "No path to datacenter\n")
    wait_for(lambda: "dc3" not in fed.dc2.running()[0].get("/v1/catalog/datacenters")[1], 10,
             message="the removal to spread to dc2")
