"""The proxy's pure parts: configuration, intention decisions, instance picking, ejection, retry budget."""

from __future__ import annotations

import random

import pytest

from proconsul.connect.intentions import validate
from proconsul.connect.proxy.authz import IntentionPolicy
from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance, UpstreamPool
from proconsul.connect.proxy.budget import RetryBudget
from proconsul.connect.proxy.config import (
    OutlierSettings,
    ProxyConfigError,
    from_registration,
    with_protocols,
)
from proconsul.connect.proxy.metrics import Histogram

TD = "11111111-2222-3333-4444-555555555555.mesh"


def uri(svc: str, td: str = TD) -> str:
    return f"spiffe://{td}/ns/default/dc/dc1/svc/{svc}"


def ixn(src: str, dst: str, action: str = "allow", **kw: object) -> dict:
    body = validate({"SourceName": src, "DestinationName": dst, "Action": action, **kw})
    return body


# ---------------------------------------------------------------------- configuration
def registration(**proxy: object) -> dict:
    return {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
            "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web", "LocalServicePort": 8080,
                      **proxy}}


def test_config_from_a_sidecar_registration() -> None:
    cfg = from_registration(registration(Upstreams=[
        {"DestinationName": "db", "LocalBindPort": 15432, "Config": {"connect_timeout_ms": 250}},
        {"destination_name": "cache", "local_bind_port": 16379, "datacenter": "dc2"}],
        Config={"protocol": "http", "passive_health_check": {"max_failures": 3, "base_ejection_time": "10s"}}))
    assert (cfg.service, cfg.bind_port, cfg.local_address, cfg.local_port) == ("web", 21000, "127.0.0.1", 8080)
    assert cfg.protocol == "http"
    db, cache = cfg.upstreams
    assert (db.destination_name, db.local_bind_port, db.connect_timeout, db.protocol) == ("db", 15432, 0.25, "")
    assert (cache.destination_name, cache.datacenter) == ("cache", "dc2")
    assert (cfg.outlier.max_failures, cfg.outlier.base_ejection) == (3, 10.0)


def test_mesh_gateway_modes_per_upstream_and_per_proxy() -> None:
    cfg = from_registration(registration(MeshGateway={"Mode": "remote"}, Upstreams=[
        {"DestinationName": "a", "LocalBindPort": 1, "Datacenter": "dc2", "MeshGateway": {"Mode": "local"}},
        {"destination_name": "b", "local_bind_port": 2, "datacenter": "dc2", "mesh_gateway": [{"mode": "none"}]},
        {"DestinationName": "c", "LocalBindPort": 3, "Datacenter": "dc2"}]))
    assert [u.mesh_gateway for u in cfg.upstreams] == ["local", "none", "remote"]
    assert [u.mesh_gateway for u in from_registration(registration(Upstreams=[
        {"DestinationName": "a", "LocalBindPort": 1}])).upstreams] == [""]


def test_protocols_resolve_as_consuls() -> None:
    cfg = from_registration(registration(Upstreams=[
        {"DestinationName": "db", "LocalBindPort": 1}, {"DestinationName": "api", "LocalBindPort": 2},
        {"DestinationName": "raw", "LocalBindPort": 3, "Config": {"protocol": "tcp"}}]))
    out = with_protocols(cfg, {"db": "http", "raw": "http"}, "")
    assert out.protocol == "tcp"  # nothing says otherwise
    assert [u.protocol for u in out.upstreams] == ["http", "tcp", "tcp"]  # explicit beats service-defaults
    out = with_protocols(cfg, {"web": "grpc"}, "http")
    assert out.protocol == "grpc" and [u.protocol for u in out.upstreams] == ["http", "http", "tcp"]


@pytest.mark.parametrize(("change", "field"), [
    ({"Kind": ""}, "connect-proxy"),
    ({"Port": 0}, "Port"),
    ({"Proxy": {"LocalServicePort": 1}}, "DestinationServiceName"),
    ({"Proxy": {"DestinationServiceName": "web", "Upstreams": [{"LocalBindPort": 1}]}}, "DestinationName"),
    ({"Proxy": {"DestinationServiceName": "web", "Upstreams": [{"DestinationName": "db"}]}}, "LocalBindPort"),
    ({"Proxy": {"DestinationServiceName": "web", "Config": {"protocol": "smtp"}}}, "protocol"),
    ({"Proxy": {"DestinationServiceName": "web", "Upstreams": [
        {"DestinationName": "a", "LocalBindPort": 5}, {"DestinationName": "b", "LocalBindPort": 5}]}}, "same local"),
    ({"Proxy": {"DestinationServiceName": "web", "Upstreams": [
        {"DestinationName": "a", "LocalBindPort": 5, "MeshGateway": {"Mode": "nearest"}}]}}, "MeshGateway.Mode"),
    ({"Proxy": {"DestinationServiceName": "web", "MeshGateway": "local"}}, "MeshGateway must be an object"),
])
def test_bad_registrations_name_the_field(change: dict, field: str) -> None:
    reg = dict(registration(), **change)
    with pytest.raises(ProxyConfigError, match=field):
        from_registration(reg)


# ---------------------------------------------------------------------- intentions
def test_connection_decisions_follow_precedence_and_default() -> None:
    policy = IntentionPolicy("db", TD, [ixn("web", "db", "allow"), ixn("*", "db", "deny")], default_allow=True)
    assert policy.connection(uri("web")).allowed
    denied = policy.connection(uri("api"))
    assert not denied.allowed and denied.source == "api" and "* => db" in denied.reason
    open_policy = IntentionPolicy("db", TD, [], default_allow=True)
    assert open_policy.connection(uri("anyone")).allowed
    closed = IntentionPolicy("db", TD, [], default_allow=False)
    assert not closed.connection(uri("anyone")).allowed


def test_foreign_trust_domains_and_non_service_identities_are_refused() -> None:
    policy = IntentionPolicy("db", TD, [], default_allow=True)
    foreign = policy.connection(uri("web", "other.mesh"))
    assert not foreign.allowed and "external trust domain" in foreign.reason
    agent = policy.connection(f"spiffe://{TD}/agent/client/dc/dc1/id/abc")
    assert not agent.allowed and "not a service" in agent.reason
    assert not policy.connection("").allowed


def test_l7_intentions_need_http_mode() -> None:
    perms = [{"Action": "allow", "HTTP": {"PathPrefix": "/api"}}]
    tcp = IntentionPolicy("db", TD, [ixn("web", "db", "", Permissions=perms)], default_allow=True)
    assert not tcp.connection(uri("web")).allowed  # an L4 proxy cannot check requests: deny
    http = IntentionPolicy("db", TD, [ixn("web", "db", "", Permissions=perms)], default_allow=True, http=True)
    assert http.connection(uri("web")).allowed and http.needs_requests(uri("web"))
    assert http.request(uri("web"), "GET", "/api/x", {}).allowed
    assert not http.request(uri("web"), "GET", "/admin", {}).allowed


# ---------------------------------------------------------------------- instances
def pool_of(n: int, policy: str = "round_robin", **outlier: object) -> UpstreamPool:
    p = UpstreamPool("db", policy, OutlierSettings(**outlier))  # type: ignore[arg-type]
    p.set_instances([Instance(f"n{i}/db", "127.0.0.1", 1000 + i, "db") for i in range(n)])
    return p


def test_round_robin_visits_every_instance_in_turn() -> None:
    p, rng = pool_of(3), random.Random(1)
    assert [p.pick(0, rng).port for _ in range(6)] == [1000, 1001, 1002, 1000, 1001, 1002]


def test_least_request_prefers_the_idlest() -> None:
    p, rng = pool_of(3, "least_request"), random.Random(1)
    busy = p.pick(0, rng)
    p.started(busy)
    p.started(busy)
    assert all(p.pick(0, rng) != busy for _ in range(10))


def test_failing_instance_is_ejected_then_comes_back() -> None:
    p, rng = pool_of(3, max_failures=2, base_ejection=5.0, max_ejection_percent=50), random.Random(1)
    bad = p.instances()[0]
    assert not p.failed(bad, now=1.0)
    assert p.failed(bad, now=1.0)  # second failure in a row: ejected for 5 s
    assert bad not in {p.pick(2.0, rng) for _ in range(10)}
    assert bad in {p.pick(6.5, rng) for _ in range(10)}  # back after its ejection time
    assert p.failed(bad, 7.0) is False and p.failed(bad, 7.0) is True  # ejected again: for 2 × 5 s
    assert bad not in {p.pick(16.0, rng) for _ in range(10)}
    assert bad in {p.pick(17.5, rng) for _ in range(10)}


def test_ejection_never_takes_more_than_its_share() -> None:
    p = pool_of(2, max_failures=1, max_ejection_percent=50)
    a, b = p.instances()
    assert p.failed(a, 0.0)
    assert not p.failed(b, 0.0)  # would eject 100% of the pool
    assert p.pick(0.1, random.Random(0)) == b


def test_no_instance_is_a_clear_error() -> None:
    with pytest.raises(NoHealthyInstance, match="no healthy instance"):
        pool_of(0).pick(0, random.Random(0))
    p = pool_of(1)
    only = p.instances()[0]
    with pytest.raises(NoHealthyInstance):
        p.pick(0, random.Random(0), exclude={only.id})


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "random", "ring_hash", "maglev"])
def test_has_ready_says_whether_pick_would_find_an_instance(policy: str) -> None:
    p, rng = pool_of(3, policy, max_failures=1, max_ejection_percent=100), random.Random(3)
    a, b, c = p.instances()
    assert p.failed(a, 0.0)  # ejected for 30 s
    for now, exclude in [(1.0, set()), (1.0, {b.id}), (1.0, {b.id, c.id}), (40.0, {b.id, c.id}), (1.0, {a.id, b.id, c.id})]:
        try:
            p.pick(now, rng, set(exclude), b"key")
            found = True
        except NoHealthyInstance:
            found = False
        assert p.has_ready(now, exclude) is found, (now, exclude)


def test_health_updates_keep_counters_of_instances_that_stay() -> None:
    p = pool_of(3, max_failures=1, max_ejection_percent=100)
    a = p.instances()[0]
    p.failed(a, 0.0)
    p.set_instances(p.instances()[:2])
    assert len(p) == 2 and p.ejected(1.0) == [a.id]


# ---------------------------------------------------------------------- retry budget
def test_retry_budget_caps_retries_at_a_share_of_requests() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0)
    for i in range(100):
        b.request(i * 0.01)
    allowed = sum(b.try_retry(1.0) for _ in range(100))
    assert allowed == 20 and b.refused == 80
    assert b.try_retry(12.0) is False  # the requests left the window; no floor


def test_retry_budget_floor_lets_a_quiet_client_retry() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    assert sum(b.try_retry(0.0) for _ in range(20)) == 10


def test_histogram_quantiles() -> None:
    h = Histogram()
    for ms in range(1, 101):
        h.observe(ms / 1000)
    assert 0.045 <= h.quantile(0.5) <= 0.08
    assert 0.095 <= h.quantile(0.99) <= 0.16
    assert Histogram().quantile(0.5) == 0.0


def test_registration_changes_are_planned_without_a_restart_unless_the_service_changes() -> None:
    from proconsul.connect.proxy.config import changes

    base = registration(Upstreams=[{"DestinationName": "db", "LocalBindPort": 1},
                                   {"DestinationName": "cache", "LocalBindPort": 2}])
    old = from_registration(base)
    assert not changes(old, from_registration(base))
    moved = registration(Upstreams=[
        {"DestinationName": "db", "LocalBindPort": 1, "Config": {"connect_timeout_ms": 100}},
        {"DestinationName": "api", "LocalBindPort": 3}])
    new = from_registration(dict(moved, Port=21001))
    c = changes(old, new)
    assert [u.destination_name for u in c.added] == ["api"] and [u.destination_name for u in c.removed] == ["cache"]
    assert [u.destination_name for u in c.changed] == ["db"] and c.public_moved and not c.restart
    other = registration(Upstreams=base["Proxy"]["Upstreams"])
    other["Proxy"] = dict(other["Proxy"], DestinationServiceName="api")
    assert changes(old, from_registration(other)).restart


def test_reconfigure_keeps_an_empty_upstream_pool() -> None:
    """A new registration keeps each upstream's pool object — an empty one too (its instance watch feeds that
    object: replacing it while empty left the upstream with no instance for good)."""
    from proconsul.connect.proxy.config import from_registration
    from proconsul.connect.proxy.runtime import Runtime

    def reg(protocol: str) -> dict:
        return {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080, "Upstreams": [
                    {"DestinationName": "billing", "LocalBindPort": 9191, "Config": {"protocol": protocol}}]}}

    rt = Runtime(from_registration(reg("http")), datacenter="dc1")
    (key,) = rt.pools
    empty = rt.pools[key]
    assert len(empty) == 0
    rt.reconfigure(from_registration(reg("tcp")))
    assert rt.pools[key] is empty


def test_reconfigure_keeps_the_pools_of_a_chain_that_is_warming() -> None:
    """A new chain's target pools are made before it is applied (warming, while their instances are asked for).
    A registration change then must not drop them: their watches feed those very objects (dropping them left a
    subset without instances for good — 503 "no healthy upstream" — once the chain was applied). A pool that is
    missing when the chain is applied is reported, so the proxy watches it."""
    from proconsul.connect.chain import compiler, entries
    from proconsul.connect.proxy.config import from_registration
    from proconsul.connect.proxy.routing import RouteTable
    from proconsul.connect.proxy.runtime import Runtime

    def reg(policy: str) -> dict:
        return {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080, "Upstreams": [
                    {"DestinationName": "api", "LocalBindPort": 9191,
                     "Config": {"protocol": "http", "lb_policy": policy}}]}}

    def table(es: list[dict]) -> RouteTable:
        idx = compiler.index_entries([entries.validate(dict(e)) for e in es])
        return RouteTable.from_chain(compiler.compile_chain(idx, "api", datacenter="dc1", trust_domain="td"))

    http = {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
    subsets = {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
               "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"}}}
    rt = Runtime(from_registration(reg("round_robin")), datacenter="dc1")
    (key,) = rt.pools
    assert rt.set_chain(key, table([http])) == []  # the default chain: the upstream's own pool
    warming = table([http, subsets])
    (new,) = rt.set_chain(key, warming, activate=False)
    pool = rt.target_pools[(key, new.id)]
    rt.reconfigure(from_registration(reg("least_request")))  # e.g. proxy-defaults changed while warming
    assert rt.target_pools.get((key, new.id)) is pool, "the warming chain's pool survives a reconfigure"
    assert rt.pools[key].policy == "least_request"
    assert rt.set_chain(key, warming) == [] and rt.chains[key] is warming
    del rt.target_pools[(key, new.id)]  # however it went: applying the chain says the pool is new (to be watched)
    assert [t.id for t in rt.set_chain(key, warming)] == [new.id]
