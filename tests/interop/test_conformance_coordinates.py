"""Network coordinates as Consul documents them (api-docs/coordinate, `?near=` on catalog and health reads,
prepared queries' Near, `consul rtt`) — through py-consul's `coordinate` API and the CLI."""

from __future__ import annotations

import consul
import pytest
from support import AgentProcess, ok, one_line_error, run, wait_for


def coord(x: float) -> dict:
    """A coordinate `x` seconds from the origin along the first axis."""
    return {"Vec": [x] + [0.0] * 7, "Error": 0.2, "Adjustment": 0.0, "Height": 1e-5}


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    a = shared_dev_agent
    for name, addr in (("far", "10.7.0.1"), ("mid", "10.7.0.2"), ("close", "10.7.0.3"), ("nocoord", "10.7.0.4")):
        a.put("/v1/catalog/register", {"Node": name, "Address": addr, "Service": {"Service": "geo", "Port": 80},
                                       "Checks": [{"CheckID": "up", "ServiceID": "geo", "Status": "passing"}]})
    c = consul.Consul(host="127.0.0.1", port=a.http_port)
    for name, x in (("dev", 0.0), ("far", 0.050), ("mid", 0.020), ("close", 0.002)):
        assert c.coordinate.update(name, coord(x))
    wait_for(lambda: len(c.coordinate.nodes()[1]) == 4, message="the coordinates to be stored")
    return a


@pytest.fixture
def c(agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def test_coordinate_endpoints(c: consul.Consul, agent: AgentProcess) -> None:
    index, rows = c.coordinate.nodes()
    assert [r["Node"] for r in rows] == ["close", "dev", "far", "mid"] and int(index) > 0
    assert set(rows[0]) == {"Node", "Segment", "Coord"} and rows[0]["Coord"]["Vec"][0] == 0.002
    _, [row] = c.coordinate.node("far")
    assert row["Coord"]["Vec"][0] == 0.05
    assert agent.get("/v1/coordinate/node/nocoord")[0] == 404
    [dc] = c.coordinate.datacenters()
    assert dc["Datacenter"] == "dc1" and dc["AreaID"] == "WAN"
    assert [x["Node"] for x in dc["Coordinates"]] == ["dev.dc1"]  # the servers' coordinates
    # A coordinate for a node the catalog does not have is dropped, as Consul's state store drops it.
    # (Updates are batched on the leader, as Consul's: wait for one written with it before looking.)
    assert c.coordinate.update("ghost", coord(0.1)) and c.coordinate.update("mid", coord(0.021))
    wait_for(lambda: c.coordinate.node("mid")[1][0]["Coord"]["Vec"][0] == 0.021, message="the batch")
    assert "ghost" not in [r["Node"] for r in c.coordinate.nodes()[1]]
    assert c.coordinate.update("mid", coord(0.020))
    wait_for(lambda: c.coordinate.node("mid")[1][0]["Coord"]["Vec"][0] == 0.020, message="the batch")
    for body, error in (({"Node": "far", "Coord": {"Vec": [0.0]}}, "8 numbers"),
                        ({"Node": "far", "Coord": {"Vec": [0.0] * 8, "Error": "big"}}, "finite numbers"),
                        ({"Coord": coord(0.0)}, "Node must name")):
        status, text = agent.put("/v1/coordinate/update", body)
        assert status == 400 and error in text, (body, status, text)


def test_deregistering_a_node_drops_its_coordinate(c: consul.Consul, agent: AgentProcess) -> None:
    agent.put("/v1/catalog/register", {"Node": "brief", "Address": "10.7.0.9"})
    assert c.coordinate.update("brief", coord(0.01))
    wait_for(lambda: c.coordinate.node("brief")[1], message="the coordinate")
    agent.put("/v1/catalog/deregister", {"Node": "brief"})
    assert c.coordinate.node("brief")[1] is None


def test_near_sorts_reads_by_round_trip_time(c: consul.Consul, agent: AgentProcess) -> None:
    want = ["close", "mid", "far", "nocoord"]  # from dev at the origin; no coordinate: last
    assert [n["Node"] for n in c.catalog.service("geo", near="_agent")[1]] == want
    assert [e["Node"]["Node"] for e in c.health.service("geo", near="dev")[1]] == want
    status, rows = agent.get("/v1/health/service/geo?near=far")
    assert [e["Node"]["Node"] for e in rows] == ["far", "mid", "close", "nocoord"]
    nodes = [n["Node"] for n in c.catalog.nodes(near="far")[1]]
    assert nodes[:4] == ["far", "mid", "close", "dev"] and nodes[-1] == "nocoord"
    status, rows = agent.get("/v1/catalog/service/geo")  # without near: by node name, as before
    assert [r["Node"] for r in rows] == ["close", "far", "mid", "nocoord"]


def test_prepared_query_near_sorts_by_distance(agent: AgentProcess) -> None:
    status, out, _ = agent.request("POST", "/v1/query", {"Name": "geo-near", "Service": {"Service": "geo",
                                                                                         "Near": "_agent"}})
    assert status == 200
    for _ in range(5):  # shuffled first, then sorted: the order is the same every time
        nodes = [n["Node"]["Node"] for n in agent.get("/v1/query/geo-near/execute")[1]["Nodes"]]
        assert nodes == ["close", "mid", "far", "nocoord"]
    nodes = [n["Node"]["Node"] for n in agent.get("/v1/query/geo-near/execute?near=far&limit=2")[1]["Nodes"]]
    assert nodes == ["far", "mid"]


def test_rtt_cli(agent: AgentProcess) -> None:
    assert ok(agent, "rtt", "far", "mid").strip() == "Estimated far <-> mid rtt: 30.020 ms (using LAN coordinates)"  # plus both heights
    assert ok(agent, "rtt", "-wan", "dev.dc1", "dev.dc1").strip().endswith("rtt: 0.020 ms (using WAN coordinates)")
    assert ok(agent, "rtt", "close").startswith("Estimated close <-> dev rtt: 2.020 ms")  # NODE2: the agent's node
    assert "Could not find a coordinate for node 'nocoord'" in one_line_error(run(agent, "rtt", "nocoord", "far"))
