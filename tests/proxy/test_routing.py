"""The proxy's side of the discovery chain, pure: matching, split draws, rewrites, header changes, hash keys,
and the consistent-hash balancers."""

from __future__ import annotations

import random
from typing import Any

from proconsul.connect.chain import compiler, entries
from proconsul.connect.proxy.balancer import Instance, UpstreamPool, build_maglev
from proconsul.connect.proxy.routing import RouteTable


def table(es: list[dict[str, Any]], service: str = "api") -> RouteTable:
    idx = compiler.index_entries([entries.validate(dict(e)) for e in es])
    return RouteTable.from_chain(compiler.compile_chain(idx, service, datacenter="dc1", trust_domain="td"))


HTTP = [{"Kind": "service-defaults", "Name": n, "Protocol": "http"} for n in ("api", "admin")]
CHAIN = [*HTTP,
         {"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"},
                                                                 "v2": {"Filter": "Service.Meta.v == 2"}},
          "RequestTimeout": "2s"},
         {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 75, "ServiceSubset": "v1"},
                                                               {"Weight": 25, "ServiceSubset": "v2"}]},
         {"Kind": "service-router", "Name": "api", "Routes": [
             {"Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x-env", "Prefix": "prod"}]}},
              "Destination": {"Service": "admin", "PrefixRewrite": "/internal", "RequestTimeout": "1s",
                              "RequestHeaders": {"Set": {"x-a": "1"}, "Remove": ["cookie"]}}},
             {"Match": {"HTTP": {"QueryParam": [{"Name": "debug", "Present": True}], "Methods": ["GET"]}},
              "Destination": {"ServiceSubset": "v2", "RetryOn": ["gateway-error"], "NumRetries": 5}}]}]


def test_splits_follow_the_draw() -> None:
    t = table(CHAIN)
    assert t.decide(b"GET", b"/", [], 0.0).leg.target.id == "v1.api.default.default.dc1"
    assert t.decide(b"GET", b"/", [], 0.7499).leg.target.id == "v1.api.default.default.dc1"
    assert t.decide(b"GET", b"/", [], 0.75).leg.target.id == "v2.api.default.default.dc1"
    d = t.decide(b"GET", b"/", [], 0.99)
    assert d.leg.target.filter == "Service.Meta.v == 2" and d.timeout == 2.0


def test_route_matching_rewrite_and_headers() -> None:
    t = table(CHAIN)
    prod = [(b"x-env", b"production"), (b"cookie", b"a=b"), (b"x-a", b"old")]
    d = t.decide(b"POST", b"/admin/users?x=1", prod, 0.5)
    assert d.leg.target.service == "admin" and d.target == b"/internal/users?x=1" and d.timeout == 1.0
    assert d.request_ops.apply(prod) == [(b"x-env", b"production"), (b"x-a", b"1")]
    assert t.decide(b"POST", b"/admin/users", [(b"x-env", b"dev")], 0.1).leg.target.service == "api"
    dbg = t.decide(b"GET", b"/x?debug", [], 0.1)
    assert dbg.leg.target.id == "v2.api.default.default.dc1"
    assert dbg.route.retry.statuses == frozenset({502, 503, 504}) and dbg.route.retry.num_retries == 5
    assert t.decide(b"PUT", b"/x?debug", [], 0.1).route.index == 2, "wrong method: the catch-all"


def test_hash_keys() -> None:
    t = table([*HTTP, {"Kind": "service-resolver", "Name": "api", "LoadBalancer": {"Policy": "maglev", "HashPolicies": [
        {"Field": "cookie", "FieldValue": "session", "Terminal": True}, {"SourceIP": True}]}}])
    lb = t.decide(b"GET", b"/", [], 0.1).leg.lb
    assert lb.hash_key([(b"cookie", b"a=1; session=abc")], b"/", "10.0.0.1") == b"abc"
    assert lb.hash_key([], b"/", "10.0.0.1") == b"10.0.0.1"


def test_ring_hash_and_maglev_are_sticky_and_move_little() -> None:
    rng = random.Random(1)
    for policy in ("ring_hash", "maglev"):
        pool = UpstreamPool("api", policy)
        pool.set_instances([Instance(f"n/{i}", "127.0.0.1", 1000 + i, "api") for i in range(4)])
        before = {k: pool.pick(0, rng, hash_key=b"k%d" % k).id for k in range(400)}
        assert all(pool.pick(0, rng, hash_key=b"k%d" % k).id == v for k, v in before.items())
        assert len(set(before.values())) == 4
        pool.set_instances([Instance(f"n/{i}", "127.0.0.1", 1000 + i, "api") for i in range(5)])
        after = {k: pool.pick(0, rng, hash_key=b"k%d" % k).id for k in range(400)}
        moved = sum(1 for k in before if before[k] != after[k])
        assert moved < 400 * 0.35, (policy, moved)  # ~1/5 should move to the new instance
    assert len(build_maglev(["a", "b"], 13)) == 13


def test_grpc_retry_conditions_and_the_proxys_own_grpc_answers() -> None:
    from proconsul.connect.proxy import l7

    t = table([{"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"},
               {"Kind": "service-router", "Name": "api", "Routes": [
                   {"Match": {"HTTP": {"PathExact": "/p.S/Flaky"}},
                    "Destination": {"NumRetries": 2, "RetryOn": ["unavailable", "cancelled", "refused-stream"]}},
                   {"Match": {"HTTP": {"PathExact": "/p.S/Codes"}},
                    "Destination": {"RetryOnStatusCodes": [429], "RetryOn": ["retriable-4xx"]}}]}])
    flaky = t.decide(b"POST", b"/p.S/Flaky", [], 0.1)
    policy = flaky.route.retry
    assert policy.grpc_statuses == frozenset({14, 1}) and policy.statuses == frozenset() and policy.num_retries == 2
    assert policy.on_connect_failure, "refused-stream: a reset before the response is retried"
    assert l7.retry_on_response(flaky, True, b"POST", 200, True, grpc_status=14)
    assert not l7.retry_on_response(flaky, True, b"POST", 200, True, grpc_status=5), "NOT_FOUND is an answer"
    assert not l7.retry_on_response(flaky, True, b"POST", 200, False, grpc_status=14), "the body is not held"
    assert not l7.retry_on_response(flaky, True, b"POST", 503, True), "no HTTP status asked for"
    codes = t.decide(b"POST", b"/p.S/Codes", [], 0.1)
    assert codes.route.retry.statuses == frozenset({429, 409}) and not codes.route.retry.on_connect_failure
    plain = t.decide(b"POST", b"/p.S/Other", [], 0.1)
    assert not l7.retry_on_response(plain, True, b"POST", 503, True), "default: only idempotent methods"
    assert l7.retry_on_response(plain, True, b"GET", 503, True) and l7.retry_on_failure(plain)
    assert [l7.grpc_status_for(s) for s in (504, 503, 502, 429, 403, 404, 401, 500)] == [4, 14, 14, 14, 7, 12, 16, 2]


def test_a_subsets_only_passing_reaches_its_target_and_decides_which_instances_count() -> None:
    from proconsul.connect.proxy.proxy import healthy_instances

    def resolver(default: str) -> dict[str, Any]:
        return {"Kind": "service-resolver", "Name": "api", "DefaultSubset": default,
                "Subsets": {"strict": {"Filter": "Service.Meta.v == 1", "OnlyPassing": True},
                            "loose": {"Filter": "Service.Meta.v == 1"}}}

    assert table([*HTTP, resolver("strict")]).targets["strict.api.default.default.dc1"].only_passing
    assert not table([*HTTP, resolver("loose")]).targets["loose.api.default.default.dc1"].only_passing

    def row(sid: str, *statuses: str) -> dict[str, Any]:
        return {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": sid, "Port": 21000},
                "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)]}

    rows = [row("ok", "passing", "passing"), row("warn", "passing", "warning"), row("down", "warning", "critical"),
            row("bare")]
    assert [i.id for i in healthy_instances(rows, "api", "dc1")] == ["n1/ok", "n1/warn", "n1/bare"]
    assert [i.id for i in healthy_instances(rows, "api", "dc1", only_passing=True)] == ["n1/ok", "n1/bare"]
