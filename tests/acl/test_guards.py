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
