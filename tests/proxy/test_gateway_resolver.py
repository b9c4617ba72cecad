"""The terminating gateway's reading of a linked service's service-resolver (pure): which subset an SNI is served
from, which outside instances serve it, the balancing policy, and the Host rewrite for hostname addresses; and
the caller's side: a subset's rows of /v1/health/connect keep the terminating gateways that link the service."""

from __future__ import annotations

from typing import Any

import pytest

from proconsul.connect.proxy.gateway_resolver import (
    DIAL_TIMEOUT,
    REQUEST_TIMEOUT,
    UnknownSubset,
    host_rewrite,
    parse_resolver,
)
from proconsul.connect.proxy.proxy import subset_rows

RESOLVER = {"Kind": "service-resolver", "Name": "billing", "DefaultSubset": "v1", "ConnectTimeout": "2s",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                        "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": True},
                        "tagged": {"Filter": "canary in Service.Tags"}},
            "LoadBalancer": {"Policy": "maglev", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}}


def row(node: str, version: str, *statuses: str, address: str = "10.0.0.1", tags: list[str] | None = None
        ) -> dict[str, Any]:
    return {"Node": {"Node": node, "Address": address},
            "Service": {"ID": "billing", "Service": "billing", "Port": 443, "Meta": {"version": version},
                        "Tags": tags or []},
            "Checks": [{"Status": s} for s in statuses]}


ROWS = [row("a", "v1"), row("b", "v1", "warning"), row("c", "v2", "passing"), row("d", "v2", "warning"),
        row("e", "v2", "critical"), row("f", "v3", tags=["canary"])]


def nodes(instances: list[Any]) -> list[str]:
    return sorted(i.id.split("/")[0] for i in instances)


def test_subsets_choose_by_filter_and_health() -> None:
    r = parse_resolver(RESOLVER)
    assert nodes(r.instances(ROWS, "billing", "v1")) == ["a", "b"], "a warning check is healthy (no OnlyPassing)"
    assert nodes(r.instances(ROWS, "billing", "v2")) == ["c"], "OnlyPassing leaves the warning one out"
    assert nodes(r.instances(ROWS, "billing", "tagged")) == ["f"], "a filter over Service.Tags"
    assert nodes(r.instances(ROWS, "billing", "")) == ["a", "b", "c", "d", "f"], "critical is never used"
    inst = r.instances(ROWS, "billing", "v1")[0]
    assert (inst.address, inst.port, inst.service, inst.id) == ("10.0.0.1", 443, "billing", "a/billing")


def test_the_sni_subset_or_the_default_one() -> None:
    r = parse_resolver(RESOLVER)
    assert r.subset_for("v2") == "v2"
    assert r.subset_for("") == "v1", "no subset in the SNI: DefaultSubset"
    assert parse_resolver({**RESOLVER, "DefaultSubset": ""}).subset_for("") == ""
    assert parse_resolver(None).subset_for("") == ""
    with pytest.raises(UnknownSubset, match="no subset named 'v9'"):
        r.subset_for("v9")
    with pytest.raises(UnknownSubset):
        parse_resolver(None).subset_for("v1")


def test_balancing_and_timeouts_and_stats() -> None:
    r = parse_resolver(RESOLVER)
    assert r.policy == "maglev" and r.connect_timeout == 2.0 and r.request_timeout == REQUEST_TIMEOUT
    assert r.lb.hash_key([(b"x-user", b"ann")], b"/", "") == b"ann"
    assert r.snapshot() == {"ConnectTimeout": 2.0, "RequestTimeout": REQUEST_TIMEOUT, "DefaultSubset": "v1",
                            "LoadBalancer": {"Policy": "maglev",
                                             "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}}
    default = parse_resolver(None)
    assert default.policy == "round_robin" and (default.connect_timeout, default.request_timeout) == \
        (DIAL_TIMEOUT, REQUEST_TIMEOUT)
    assert parse_resolver(RESOLVER) == r, "equal entries read equal (a rewrite that changes nothing is no change)"
    assert parse_resolver({**RESOLVER, "LoadBalancer": {"Policy": "random"}}) != r


def test_a_filter_this_version_cannot_read_matches_nothing() -> None:
    r = parse_resolver({"Subsets": {"odd": {"Filter": "Service.Meta.version ==="}}})
    assert r.instances(ROWS, "billing", "odd") == [], "never every instance"


def test_host_rewrite_only_for_a_hostname() -> None:
    assert host_rewrite("billing.example.com") == "billing.example.com"
    assert host_rewrite("localhost") == "localhost"
    assert host_rewrite("10.0.0.9") == "" and host_rewrite("::1") == "" and host_rewrite("[::1]") == ""


def test_callers_keep_the_gateway_rows_of_a_subset() -> None:
    from proconsul.connect.proxy.gateway_resolver import subset_filter

    gateway = {"Node": {"Node": "gw", "Address": "10.0.0.5"},
               "Service": {"ID": "tgw", "Service": "tgw", "Kind": "terminating-gateway", "Port": 8443, "Meta": {}}}
    sidecar = {"Node": {"Node": "n", "Address": "10.0.0.6"},
               "Service": {"ID": "b-proxy", "Kind": "connect-proxy", "Port": 21000, "Meta": {"version": "v1"}}}
    other = {**sidecar, "Service": {**sidecar["Service"], "Meta": {"version": "v2"}}}
    pred = subset_filter("Service.Meta.version == v1")
    assert subset_rows([gateway, sidecar, other], pred) == [gateway, sidecar]
    assert subset_rows([gateway, other], None) == [gateway, other]
    assert subset_filter("") is None

