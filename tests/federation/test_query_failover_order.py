"""Prepared-query failover order, pure: NearestN nearest others first, then named datacenters that exist."""

from __future__ import annotations

from proconsul.agent.cluster.query_failover import failover_order
from proconsul.catalog.prepared_query import has_failover


def q(**failover: object) -> dict[str, object]:
    return {"Service": {"Service": "web", "Failover": failover}}


def test_nearest_then_named_each_once_unknown_skipped() -> None:
    known = ["dc1", "dc3", "dc2", "dc4"]  # nearest first, ours among them
    assert failover_order(q(NearestN=2), known, "dc1") == ["dc3", "dc2"]
    assert failover_order(q(Datacenters=["dc4", "nowhere", "dc2"]), known, "dc1") == ["dc4", "dc2"]
    assert failover_order(q(NearestN=1, Datacenters=["dc3", "dc4", "dc1"]), known, "dc1") == ["dc3", "dc4"]
    assert failover_order(q(NearestN=9), known, "dc1") == ["dc3", "dc2", "dc4"]
    assert failover_order(q(), known, "dc1") == []


def test_has_failover() -> None:
    assert has_failover(q(NearestN=1)) and has_failover(q(Datacenters=["dc2"]))
    assert not has_failover(q(NearestN=0, Datacenters=None)) and not has_failover({"Service": {}})
