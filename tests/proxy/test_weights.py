"""Consul's service `Weights` in the proxies (pure): which weight a catalog row gets, and how each balancing
policy shares its picks by weight (Envoy's behaviour: weighted round robin, weighted least request, ring
hash and Maglev in proportion, random unweighted); and a resolver's `RingHashConfig` and
`LeastRequestConfig`, from the config entry to the pool."""

from __future__ import annotations

import collections
import itertools
import random
from typing import Any

import pytest

from proconsul.connect.proxy.addresses import weight
from proconsul.connect.proxy.balancer import (
    Instance,
    Sizing,
    UpstreamPool,
    build_maglev,
    build_ring,
    weighted_order,
)
from proconsul.connect.proxy.proxy import gateway_instances, healthy_instances


def checks(*statuses: str) -> list[dict[str, Any]]:
    return [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)]


@pytest.mark.parametrize(("weights", "statuses", "only_passing", "expected"), [
    (None, ("passing",), False, 1),  # no Weights: 1
    ({"Passing": 3, "Warning": 1}, ("passing", "passing"), False, 3),
    ({"Passing": 3, "Warning": 1}, ("passing", "warning"), False, 1),  # a warning check: Weights.Warning
    ({"Passing": 3, "Warning": 0}, ("warning",), False, 0),  # Warning 0: no traffic while warning
    ({"Passing": 3, "Warning": 2}, ("warning",), True, 0),  # OnlyPassing leaves a warning one out
    ({"Passing": 3, "Warning": 2}, ("passing", "critical"), False, 0),  # critical: out, whatever the weights
    ({"Passing": 500, "Warning": 1}, (), False, 128),  # Envoy's ceiling, as Consul clamps it
    ({"Passing": 0, "Warning": 1}, ("passing",), False, 0),  # below 1: out (Consul's catalog refuses it anyway)
])
def test_weight_follows_consuls_rule(weights: dict[str, int] | None, statuses: tuple[str, ...],
                                     only_passing: bool, expected: int) -> None:
    svc = {"ID": "s"} if weights is None else {"ID": "s", "Weights": weights}
    assert weight(svc, checks(*statuses), only_passing) == expected


def test_catalog_rows_become_weighted_instances() -> None:
    def row(sid: str, w: dict[str, int], *statuses: str) -> dict[str, Any]:
        return {"Node": {"Node": "n1", "Address": "10.0.0.1"},
                "Service": {"ID": sid, "Port": 21000, "Weights": w}, "Checks": checks(*statuses)}

    rows = [row("heavy", {"Passing": 5, "Warning": 1}, "passing"),
            row("tired", {"Passing": 5, "Warning": 2}, "warning"),
            row("shy", {"Passing": 5, "Warning": 0}, "warning")]
    assert [(i.id, i.weight) for i in healthy_instances(rows, "api", "dc1")] == [("n1/heavy", 5), ("n1/tired", 2)]
    gateways = [{"Node": {"Node": f"g{k}", "Address": "10.1.0.1"},
                 "Service": {"ID": "mgw", "Kind": "mesh-gateway", "Port": 8443, "Weights": {"Passing": k, "Warning": 1},
                             "TaggedAddresses": {"wan": {"Address": "192.0.2.1", "Port": 443}}},
                 "Checks": checks("passing")} for k in (1, 4)]
    got = gateway_instances(gateways, local=False, destination="api", datacenter="dc2")
    assert [(i.id, i.address, i.weight) for i in got] == [("gateway/g1/mgw", "192.0.2.1", 1),
                                                          ("gateway/g4/mgw", "192.0.2.1", 4)]


def weighted_pool(policy: str, weights: dict[str, int]) -> UpstreamPool:
    p = UpstreamPool("api", policy)
    p.set_instances([Instance(i, "127.0.0.1", 1000 + k, "api", weight=w) for k, (i, w) in enumerate(weights.items())])
    return p


def test_round_robin_gives_each_its_weight_in_every_cycle_spread_out() -> None:
    p, rng = weighted_pool("round_robin", {"a": 1, "b": 3, "c": 2}), random.Random(1)
    picks = [p.pick(0, rng).id for _ in range(60)]
    for start in range(0, 60, 6):  # every cycle of sum(weights) picks: exactly the weights
        assert collections.Counter(picks[start:start + 6]) == {"a": 1, "b": 3, "c": 2}, picks[start:start + 6]
    assert max(len(list(g)) for _, g in itertools.groupby(picks)) <= 2, "smooth: b is not sent three in a row"
    assert p.weights() == {"a": 1, "b": 3, "c": 2}
    # An excluded (already tried) instance sits the turn out; the others keep their shares.
    rest = collections.Counter(p.pick(0, rng, exclude={"b"}).id for _ in range(30))
    assert rest == {"a": 10, "c": 20}


def test_round_robin_with_equal_weights_is_plain_round_robin() -> None:
    p, rng = weighted_pool("round_robin", {"a": 4, "b": 4}), random.Random(1)
    assert [p.pick(0, rng).id for _ in range(4)] == ["a", "b", "a", "b"]


def test_least_request_weighs_what_is_in_flight_by_weight() -> None:
    p, rng = weighted_pool("least_request", {"a": 1, "b": 3}), random.Random(1)
    b = p.pick(0, rng)
    assert b.id == "b", "idle: the heavier one (3/1 against 1/1)"
    p.started(b)
    assert p.pick(0, rng).id == "b", "b with 1 in flight scores 3/2, above idle a's 1/1"
    p.started(b)
    p.started(b)
    assert p.pick(0, rng).id == "a", "b with 3 in flight scores 3/4, below idle a's 1"


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policies_share_keys_in_proportion_to_weight(policy: str) -> None:
    p, rng = weighted_pool(policy, {"a": 1, "b": 3}), random.Random(1)
    owners = collections.Counter(p.pick(0, rng, hash_key=b"user-%d" % k).id for k in range(4000))
    assert 0.70 <= owners["b"] / 4000 <= 0.80, owners
    # A weight change rebuilds the table: equal weights share about evenly again.
    p.set_instances([Instance(i, "127.0.0.1", 1000 + k, "api", weight=2) for k, i in enumerate("ab")])
    owners = collections.Counter(p.pick(0, rng, hash_key=b"user-%d" % k).id for k in range(4000))
    assert 0.44 <= owners["b"] / 4000 <= 0.56, owners


def test_equal_weights_build_the_same_tables_as_no_weights() -> None:
    ids = ["x", "y", "z"]
    assert build_ring(ids, [7, 7, 7]) == build_ring(ids)
    assert build_maglev(ids, 101, [2, 2, 2]) == build_maglev(ids, 101)
    table = build_maglev(ids, 1009, [1, 2, 5])
    shares = collections.Counter(table)
    assert len(table) == 1009 and shares["z"] > shares["y"] > shares["x"], shares


def test_random_ignores_weights_as_envoys() -> None:
    p, rng = weighted_pool("random", {"a": 1, "b": 9}), random.Random(3)
    share = sum(p.pick(0, rng).id == "b" for _ in range(4000)) / 4000
    assert 0.45 <= share <= 0.55, share


def test_weighted_order_puts_heavier_items_first_in_proportion() -> None:
    rng = random.Random(5)
    firsts = collections.Counter(weighted_order([("a", 1), ("b", 3)], rng)[0] for _ in range(8000))
    assert 0.72 <= firsts["b"] / 8000 <= 0.78, firsts
    assert sorted(weighted_order([("a", 1), ("b", 1), ("c", 2)], rng)) == ["a", "b", "c"], "every item, once"


def test_ring_hash_config_bounds_the_rings_points() -> None:
    ids = [f"i{k}" for k in range(4)]
    assert len(build_ring(ids)[0]) == 400, "without RingHashConfig: 100 points an instance"
    assert len(build_ring(ids, sizing=Sizing(min_ring_size=4096))[0]) == 4096
    assert len(build_ring(ids, sizing=Sizing(max_ring_size=64))[0]) == 64
    assert len(build_ring(ids, [1, 1, 1, 5], Sizing(min_ring_size=1024, max_ring_size=2048))[0]) == 1024


def test_least_request_choice_count_compares_that_many_drawn_at_random() -> None:
    def busy_share(sizing: Sizing) -> float:
        p = UpstreamPool("api", "least_request", sizing=sizing)
        p.set_instances([Instance(i, "127.0.0.1", 1000 + k, "api") for k, i in enumerate("abc")])
        for _ in range(5):
            p.started(Instance("a", "127.0.0.1", 1000, "api"))
        rng = random.Random(7)
        return sum(p.pick(0, rng).id == "a" for _ in range(3000)) / 3000

    assert busy_share(Sizing()) == 0, "every instance compared: the busy one never wins"
    assert 0.28 <= busy_share(Sizing(choice_count=1)) <= 0.38, "one draw: a plain random pick"
    assert 0.07 <= busy_share(Sizing(choice_count=2)) <= 0.15, "two draws: busy only when drawn twice (1/9)"


def test_a_resolvers_load_balancer_sizing_reaches_the_chains_pools() -> None:
    from proconsul.connect.chain import compiler, entries
    from proconsul.connect.proxy.config import from_registration
    from proconsul.connect.proxy.gateway_resolver import parse_resolver
    from proconsul.connect.proxy.routing import RouteTable
    from proconsul.connect.proxy.runtime import Runtime

    lb = {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 2048, "MaximumRingSize": 4096},
          "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}
    resolver = {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
                "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"}}, "LoadBalancer": lb}
    idx = compiler.index_entries([entries.validate(dict(e)) for e in (
        {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}, resolver)])
    table = RouteTable.from_chain(compiler.compile_chain(idx, "api", datacenter="dc1", trust_domain="td"))
    rt = Runtime(from_registration({
        "ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
        "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080,
                  "Upstreams": [{"DestinationName": "api", "LocalBindPort": 9191, "Config": {"protocol": "http"}}]}}),
        datacenter="dc1")
    (key,) = rt.pools
    (target,) = rt.set_chain(key, table)
    pool = rt.target_pools[(key, target.id)]
    assert (pool.policy, pool.sizing) == ("ring_hash", Sizing(min_ring_size=2048, max_ring_size=4096))
    least = {**resolver, "LoadBalancer": {"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 3}}}
    assert parse_resolver(least).lb.sizing == Sizing(choice_count=3), "the terminating gateway reads it too"
