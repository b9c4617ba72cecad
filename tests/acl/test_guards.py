"""Every /v1 route declares the right it needs, so no endpoint is left open by accident when ACLs are on."""

from __future__ import annotations

from aiohttp import web

from proconsul.agent.api import canary as api_canary
from proconsul.agent.api import connect as api_connect
from proconsul.agent.api import ui as api_ui
from proconsul.agent.api.acl_guards import GUARDS, guard_for
from proconsul.agent.api.app import ROUTE_MODULES


def _routes() -> list[tuple[str, str]]:
    tables = [m.routes for m in ROUTE_MODULES] + [api_connect.routes, api_canary.routes, api_ui.api]
    return [(r.method, r.path) for t in tables for r in t if isinstance(r, web.RouteDef) and r.path.startswith("/v1/")]


def test_every_v1_route_has_a_guard():
    missing = [f"{m} {p}" for m, p in _routes() if guard_for(m, p) is None]
    assert not missing, f"routes without an ACL guard in acl_guards.GUARDS: {missing}"


def test_no_guard_names_a_route_that_does_not_exist():
    known = set(_routes())
    assert not [k for k in GUARDS if k not in known]


def test_every_rpc_method_has_an_acl_check():
    """The server port's methods, as a dev server with ACLs registers them, each name their right in
    rpc_acl.RPC_CHECKS (catalog.query checks per named read, in QUERY_CHECKS or the listing filters)."""
    import asyncio

    from proconsul.agent.agent import Agent
    from proconsul.agent.cluster.rpc_acl import QUERY_CHECKS, RPC_CHECKS
    from proconsul.agent.config.load import finalize
    from proconsul.agent.config.model import AgentConfig
    from proconsul.catalog.queries import QUERIES

    async def methods() -> set[str]:
        cfg = AgentConfig(dev=True)
        cfg.acl.enabled = True
        agent = Agent(finalize(cfg))
        assert agent.cluster.rpc.guard is not None
        return set(agent.cluster.rpc.methods)

    missing = sorted(m for m in asyncio.run(methods()) if m not in RPC_CHECKS and m not in ("catalog.query", "acl.resolve"))
    assert not missing, f"RPC methods without an ACL check in rpc_acl.RPC_CHECKS: {missing}"
    reads = sorted(q for q in QUERIES if q not in QUERY_CHECKS and q != "acl.token_bundle")
    assert not reads, f"named reads without an ACL check in rpc_acl.QUERY_CHECKS: {reads}"
