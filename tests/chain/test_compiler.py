"""The discovery-chain compiler and the entry validation, as pure functions (no agent)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.connect.chain import compiler, entries
from proconsul.connect.errors import ChainError, InvalidConfigEntry

DC, TD = "dc1", "11111111-2222-3333-4444-555555555555.mesh"


def valid(**e: Any) -> dict[str, Any]:
    return entries.validate(e)


def compiled(es: list[dict[str, Any]], service: str, **kw: Any) -> dict[str, Any]:
    return compiler.compile_chain(compiler.index_entries([entries.validate(dict(e)) for e in es]), service,
                                  datacenter=DC, trust_domain=TD, **kw)


HTTP = [{"Kind": "service-defaults", "Name": n, "Protocol": "http"} for n in ("web", "api", "admin", "api-v2")]


def test_default_chain_is_one_resolver() -> None:
    chain = compiled([], "db")
    assert chain["Default"] is True and chain["Protocol"] == "tcp"
    assert chain["StartNode"] == "resolver:db.default.default.dc1"
    node = chain["Nodes"]["resolver:db.default.default.dc1"]
    assert node == {"Type": "resolver", "Name": "db.default.default.dc1",
                    "Resolver": {"ConnectTimeout": "5s", "Target": "db.default.default.dc1", "Default": True}}
    t = chain["Targets"]["db.default.default.dc1"]
    assert t["SNI"] == t["Name"] == f"db.default.dc1.internal.{TD}" and t["Service"] == "db"


def test_router_splitter_resolver_shape() -> None:
    es = [*HTTP,
          {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "ConnectTimeout": "2s",
           "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}},
          {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 80, "ServiceSubset": "v1"},
                                                                {"Weight": 20, "ServiceSubset": "v2"}]},
          {"Kind": "service-router", "Name": "api", "Routes": [
              {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin"}},
              {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
               "Destination": {"ServiceSubset": "v2"}}]}]
    chain = compiled(es, "api")
    assert "Default" not in chain and chain["Protocol"] == "http"
    assert chain["StartNode"] == "router:api.default.default"
    routes = chain["Nodes"]["router:api.default.default"]["Routes"]
    assert [r["NextNode"] for r in routes] == ["resolver:admin.default.default.dc1", "resolver:v2.api.default.default.dc1",
                                             "splitter:api.default.default"]
    assert routes[-1]["Definition"]["Match"] == {"HTTP": {"PathPrefix": "/"}}, "a catch-all route ends the router"
    splits = chain["Nodes"]["splitter:api.default.default"]["Splits"]
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [(80, "resolver:v1.api.default.default.dc1"),
                                                            (20, "resolver:v2.api.default.default.dc1")]
    v2 = chain["Targets"]["v2.api.default.default.dc1"]
    assert v2["Subset"] == {"Filter": "Service.Meta.version == v2"} and v2["ServiceSubset"] == "v2"
    assert v2["ConnectTimeout"] == "2s" and v2["SNI"] == f"v2.api.default.dc1.internal.{TD}"


def test_nested_splitters_flatten_and_redirect_follows() -> None:
    es = [*HTTP,
          {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "api"}]},
          {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 50},
                                                                {"Weight": 50, "Service": "api-v2"}]},
          {"Kind": "service-resolver", "Name": "api-v2", "Redirect": {"Service": "admin"}}]
    chain = compiled(es, "web")
    splits = chain["Nodes"]["splitter:web.default.default"]["Splits"]
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [
        (50, "resolver:web.default.default.dc1"), (25, "resolver:api.default.default.dc1"),
        (25, "resolver:admin.default.default.dc1")]


def test_failover_targets() -> None:
    es = [{"Kind": "service-resolver", "Name": "db", "Subsets": {"a": {"Filter": "a in Service.Tags"}},
           "Failover": {"*": {"Service": "db-backup"}}}]
    chain = compiled(es, "db")
    r = chain["Nodes"]["resolver:db.default.default.dc1"]["Resolver"]
    assert r["Failover"] == {"Targets": ["db-backup.default.default.dc1"]}
    assert "db-backup.default.default.dc1" in chain["Targets"]


@pytest.mark.parametrize("entry,field,words", [
    ({"Kind": "service-splitter", "Name": "s", "Splits": [{"Weight": 60}, {"Weight": 30, "Service": "x"}]},
     "Splits", "must be 100"),
    ({"Kind": "service-router", "Name": "r", "Routes": [{"Match": {"HTTP": {"PathPrefix": "x"}}}]},
     "Routes[0].Match.HTTP.PathPrefix", "begin with"),
    ({"Kind": "service-router", "Name": "r", "Routes": [{"Match": {"HTTP": {"PathExact": "/a", "PathPrefix": "/"}}}]},
     "Routes[0].Match.HTTP", "cannot both"),
    ({"Kind": "service-router", "Name": "r", "Routes": [{"Match": {"HTTP": {"Methods": ["GETT"]}}}]},
     "Routes[0].Match.HTTP.Methods[0]", "not an HTTP method"),
    ({"Kind": "service-router", "Name": "r", "Routes": [{"Match": {"HTTP": {"PathRegex": "("}}}]},
     "Routes[0].Match.HTTP.PathRegex", "regular expression"),
    ({"Kind": "service-router", "Name": "r", "Routes": [{"Destinaton": {}}]}, "Routes[0]", "unknown field"),
    ({"Kind": "service-resolver", "Name": "r", "DefaultSubset": "v9"}, "DefaultSubset", "no subset"),
    ({"Kind": "service-resolver", "Name": "r", "Subsets": {"v1": {"Filter": "Service.Meta.v ==="}}},
     "Subsets['v1'].Filter", "filter"),
    ({"Kind": "service-resolver", "Name": "r", "ConnectTimeout": "5 seconds"}, "ConnectTimeout", "duration"),
    ({"Kind": "service-resolver", "Name": "r", "LoadBalancer": {"Policy": "least_request", "HashPolicies": [
        {"Field": "header", "FieldValue": "x"}]}}, "LoadBalancer.HashPolicies", "ring_hash"),
    ({"Kind": "service-resolver", "Name": "r", "LoadBalancer": {"Policy": "fastest"}}, "LoadBalancer.Policy",
     "not one of"),
    ({"Kind": "service-defaults", "Name": "d", "Protocol": "udp"}, "Protocol", "not one of"),
    ({"Kind": "service-defaults", "Name": "d", "UpstreamConfig": {"Defaults": {"Limits": {"MaxConnections": -1}}}},
     "UpstreamConfig.Defaults.Limits.MaxConnections", "between"),
    ({"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {"Enabled": True, "Type": "file"}},
     "AccessLogs.Path", "required"),
    ({"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": {"otlp_endpoint": "collector:4318"}}},
     "Config.tracing.otlp_endpoint", "http(s) URL"),
    ({"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": {"otlp_endpoint": "http://c/v1/traces",
                                                                         "sampling_percent": 150}}},
     "Config.tracing.sampling_percent", "0..100"),
    ({"Kind": "ingress-gateway", "Name": "ig", "Listeners": [{"Port": 80, "Services": []}]},
     "Listeners[0].Services", "at least one"),
    ({"Kind": "ingress-gateway", "Name": "ig", "Listeners": [{"Port": 80, "Services": [{"Name": "a"}]},
                                                             {"Port": 80, "Services": [{"Name": "b"}]}]},
     "Listeners[1].Port", "more than one listener"),
])
def test_invalid_entries_name_the_field(entry: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidConfigEntry) as err:
        entries.validate(entry)
    assert err.value.field == field and words in str(err.value), str(err.value)
    assert entry["Kind"] in str(err.value) and repr(entry["Name"]) in str(err.value)


def test_any_case_field_names_come_back_canonical() -> None:
    e = entries.validate({"Kind": "service-router", "Name": "web", "routes": [
        {"match": {"http": {"path_prefix": "/a", "methods": ["get"]}}, "destination": {"request_timeout": 2.5e9}}]})
    assert e["Routes"][0] == {"Match": {"HTTP": {"PathPrefix": "/a", "Methods": ["GET"]}},
                              "Destination": {"RequestTimeout": "2.5s"}}


@pytest.mark.parametrize("es,service,field,words", [
    ([{"Kind": "service-router", "Name": "tcpsvc", "Routes": []}], "tcpsvc", "Protocol", "does not permit routes"),
    ([{"Kind": "service-splitter", "Name": "tcpsvc", "Splits": [{"Weight": 100}]}], "tcpsvc", "Protocol",
     "does not permit splits"),
    ([*HTTP, {"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"ServiceSubset": "v3"}}]}], "web",
     "Routes[0].Destination.ServiceSubset", "does not have a subset named 'v3'"),
    ([{"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}},
      {"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}], "a", "Redirect", "redirect loop"),
    ([*HTTP, {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100, "Service": "api"}]},
      {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 100, "Service": "web"}]}], "web",
     "Splits[0].Service", "split loop"),
    ([*HTTP, {"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"Service": "db"}}]}], "web",
     "Routes[0].Destination", "has protocol 'tcp'"),
])
def test_chain_errors(es: list[dict[str, Any]], service: str, field: str, words: str) -> None:
    with pytest.raises(ChainError) as err:
        compiled(es, service)
    assert err.value.field == field and words in str(err.value), str(err.value)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=4),
       st.lists(st.integers(min_value=1, max_value=99), min_size=0, max_size=2))
def test_split_weights_always_total_100(raw: list[int], inner: list[int]) -> None:
    """Whatever the (valid) weights and however splitters nest, the flattened legs sum to 100 and every leg
    names a resolver node that exists, whose target exists."""
    total = sum(raw) or 1
    weights = [w * 100 // total for w in raw]
    weights[0] += 100 - sum(weights)
    es: list[dict[str, Any]] = [{"Kind": "service-defaults", "Name": f"s{i}", "Protocol": "http"} for i in range(5)]
    es.append({"Kind": "service-splitter", "Name": "s0",
               "Splits": [{"Weight": w, "Service": f"s{i + 1}"} for i, w in enumerate(weights)]})
    if inner:
        rest = 100 - sum(inner)
        legs = [*inner, rest] if rest > 0 else inner[:1] + [100 - inner[0]]
        es.append({"Kind": "service-splitter", "Name": "s1",
                   "Splits": [{"Weight": w, "Service": f"s1-{j}" if j else "s1"} for j, w in enumerate(legs)]})
        es += [{"Kind": "service-defaults", "Name": f"s1-{j}", "Protocol": "http"} for j in range(len(legs))]
    chain = compiled(es, "s0")
    splits = chain["Nodes"][chain["StartNode"]]["Splits"]
    assert abs(sum(s["Weight"] for s in splits) - 100) < 0.05
    for s in splits:
        node = chain["Nodes"][s["NextNode"]]
        assert node["Type"] == "resolver" and node["Resolver"]["Target"] in chain["Targets"]


def test_targets_in_other_datacenters_carry_their_mesh_gateway_mode_and_subset_sni() -> None:
    es = [{"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}},
          {"Kind": "service-defaults", "Name": "pay", "MeshGateway": {"Mode": "remote"}},
          {"Kind": "service-resolver", "Name": "db", "Subsets": {"v2": {"Filter": "Service.Meta.v == \"2\""}},
           "Failover": {"*": {"Targets": [{"Datacenter": "dc2"}, {"Service": "pay", "Datacenter": "dc3"},
                                          {"ServiceSubset": "v2", "Datacenter": "dc4"}]}}}]
    chain = compiled(es, "db")
    fo = chain["Nodes"]["resolver:db.default.default.dc1"]["Resolver"]["Failover"]["Targets"]
    assert fo == ["db.default.default.dc2", "pay.default.default.dc3", "v2.db.default.default.dc4"]
    t = chain["Targets"]
    assert t["db.default.default.dc2"]["MeshGateway"] == {"Mode": "local"}  # proxy-defaults
    assert t["pay.default.default.dc3"]["MeshGateway"] == {"Mode": "remote"}  # the target's service-defaults
    assert t["v2.db.default.default.dc4"]["SNI"] == f"v2.db.default.dc4.internal.{TD}"
    over = compiled(es, "db", override_mesh_gateway="none")["Targets"]  # an upstream's own mode wins
    assert {k: v["MeshGateway"] for k, v in over.items()} == {k: {"Mode": "none"} for k in over}
    assert compiled([], "db")["Targets"]["db.default.default.dc1"]["MeshGateway"] == {}  # default: direct
    redirect = compiled([{"Kind": "service-resolver", "Name": "old", "Redirect": {"Service": "db",
                                                                               "Datacenter": "dc2"}}], "old")
    assert redirect["StartNode"] == "resolver:db.default.default.dc2"
    # Evaluated in dc2 (an upstream with datacenter = "dc2"), a Failover to dc2 points back home: none there.
    there = compiler.compile_chain(compiler.index_entries([entries.validate(dict(e)) for e in es]), "db",
                                   datacenter="dc2", trust_domain=TD)
    assert there["Nodes"]["resolver:db.default.default.dc2"]["Resolver"]["Failover"]["Targets"] == [
        "pay.default.default.dc3", "v2.db.default.default.dc4"]
