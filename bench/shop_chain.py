"""The traffic benchmarks' discovery chain for the `shop` service, as config entries (no imports: the
in-process benchmark loads it beside another checkout's code)."""

from __future__ import annotations

from typing import Any


def chain_entries(protocol: str = "http") -> list[dict[str, Any]]:
    """The benchmark's chain: service-defaults, subsets v1/v2 by Meta, an 80/20 splitter, and a router with a
    PathPrefix route to shop-admin and a header route to v2 before the catch-all (l7_path_bench uses it too)."""
    return [
        *({"Kind": "service-defaults", "Name": n, "Protocol": protocol} for n in ("shop", "shop-admin")),
        {"Kind": "service-resolver", "Name": "shop", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}},
        {"Kind": "service-splitter", "Name": "shop", "Splits": [{"Weight": 80, "ServiceSubset": "v1"},
                                                                {"Weight": 20, "ServiceSubset": "v2"}]},
        {"Kind": "service-router", "Name": "shop", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "shop-admin"}},
            {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
             "Destination": {"ServiceSubset": "v2"}}]},
    ]
