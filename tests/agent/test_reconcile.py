"""The leader's reconcile plan (pure): members and their status in, catalog commands and Raft changes out."""

from __future__ import annotations

from typing import Any

from proconsul.agent.cluster.membership import ALIVE, FAILED, LEFT, Member
from proconsul.agent.cluster.reconcile import catalog_plan, raft_plan, reaped_plan
from proconsul.catalog import commands as c


def member(name: str, role: str = "node", dc: str = "dc1") -> Member:
    return Member(name, "10.0.0.1", 8301, {"role": role, "dc": dc, "id": f"id-{name}", "port": "8300", "build": "x"})


def catalog(rows: dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]], bool]]):
    return lambda name: rows.get(name, (None, [], False))


def serf(status: str) -> list[dict[str, Any]]:
    return [{"CheckID": "serfHealth", "Status": status}]


def test_new_alive_members_are_registered_with_a_passing_serf_health() -> None:
    plan = catalog_plan([(member("web-1"), ALIVE), (member("s1", "consul"), ALIVE)], catalog({}), "dc1")
    assert [type(cmd) for cmd in plan] == [c.Register, c.Register]
    client, server = plan
    assert client.node["Node"] == "web-1" and client.service is None and not client.skip_node_update
    assert client.checks[0]["Status"] == "passing" and client.checks[0]["Output"] == "Agent alive and reachable"
    assert server.service["Service"] == "consul" and server.service["Port"] == 8300


def test_up_to_date_members_cost_nothing_and_failed_ones_turn_critical_keeping_their_node() -> None:
    node = {"Node": "web-1", "Address": "10.0.0.1", "Meta": {"custom": "kept"}}
    rows = {"web-1": (node, serf("passing"), False), "s1": ({"Node": "s1"}, serf("passing"), True)}
    assert catalog_plan([(member("web-1"), ALIVE), (member("s1", "consul"), ALIVE)], catalog(rows), "dc1") == []
    (cmd,) = catalog_plan([(member("web-1"), FAILED)], catalog(rows), "dc1")
    assert cmd.checks[0]["Status"] == "critical" and cmd.checks[0]["Output"] == "Agent not live or unreachable"
    assert cmd.node is node and cmd.skip_node_update  # the node's own fields are not overwritten
    # A server whose consul service went missing is re-registered even though serfHealth is fine.
    rows["s1"] = ({"Node": "s1"}, serf("passing"), False)
    assert len(catalog_plan([(member("s1", "consul"), ALIVE)], catalog(rows), "dc1")) == 1


def test_left_members_are_deregistered_and_other_datacenters_ignored() -> None:
    rows = {"gone": ({"Node": "gone"}, serf("passing"), False)}
    plan = catalog_plan([(member("gone"), LEFT), (member("never-seen"), LEFT), (member("far", dc="dc2"), ALIVE)],
                        catalog(rows), "dc1")
    assert plan == [c.Deregister(node="gone")]


def test_raft_plan_adds_alive_servers_and_removes_servers_that_left_but_never_itself() -> None:
    members = [(member("s1", "consul"), ALIVE), (member("s2", "consul"), ALIVE), (member("s3", "consul"), LEFT),
               (member("s4", "consul"), FAILED), (member("web", "node"), ALIVE),
               (member("s9", "consul", dc="dc2"), ALIVE), (member("me", "consul"), LEFT)]
    plan = raft_plan(members, {"id-s1", "id-s3", "id-s4", "id-me"}, "id-me", "dc1")
    assert [(ch.action, ch.server_id) for ch in plan] == [("add_nonvoter", "id-s2"), ("remove", "id-s3")]
    assert plan[0].address == "10.0.0.1:8300"


def test_nodes_with_serf_health_that_the_pool_does_not_know_are_reaped_but_never_the_leader() -> None:
    members = [(member("web-1"), ALIVE), (member("Gone-Failed"), FAILED), (member("left"), LEFT)]
    plan = reaped_plan(members, ["gone-failed", "left", "me", "reaped-1", "web-1"], "Me")
    assert plan == [c.Deregister(node="reaped-1")]  # names compare case-insensitively, as the catalog's
    assert reaped_plan(members, [], "me") == []
