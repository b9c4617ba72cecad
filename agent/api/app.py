"""The aiohttp application: every /v1 route, the error middleware, and the UI mount."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from proconsul.agent.acl.keysets import KeySets
from proconsul.agent.api import acl as api_acl
from proconsul.agent.api import agent as api_agent
from proconsul.agent.api import catalog as api_catalog
from proconsul.agent.api import config as api_config
from proconsul.agent.api import coordinate as api_coordinate
from proconsul.agent.api import discovery_chain as api_discovery_chain
from proconsul.agent.api import health as api_health
from proconsul.agent.api import kv as api_kv
from proconsul.agent.api import operator as api_operator
from proconsul.agent.api import query as api_query
from proconsul.agent.api import session as api_session
from proconsul.agent.api import snapshot as api_snapshot
from proconsul.agent.api import status as api_status
from proconsul.agent.api import tap as api_tap
from proconsul.agent.api.acl_guards import INSIDE, MANAGEMENT, NONE, Guard, guard_for
from proconsul.agent.api.authz import GUARD_RAN, authorizer, effective_token
from proconsul.agent.api.errors import Handler, error_boundary
from proconsul.agent.api.forward import on_leader
from proconsul.agent.api.http_policy import HTTPPolicy
from proconsul.agent.api.keys import AGENT, HTTP_POLICY, KEYSETS, TELEMETRY
from proconsul.agent.api.params import datacenter_guard
from proconsul.agent.cluster.caller import set_caller_token

log = logging.getLogger("proconsul.http")

ROUTE_MODULES = [api_acl, api_agent, api_catalog, api_config, api_coordinate, api_discovery_chain, api_health,
                 api_kv, api_operator, api_query, api_session, api_snapshot, api_status, api_tap]
MAX_BODY = 8 << 20


def build_app(agent: Any) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[AGENT] = agent
    app[TELEMETRY] = HTTPCounters(agent.telemetry)
    app[KEYSETS] = KeySets()
    policy = app[HTTP_POLICY] = HTTPPolicy.from_config(agent.config)
    if policy.headers:  # on every answer, streams and errors included, before its headers leave
        async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
            response.headers.update(policy.headers)

        app.on_response_prepare.append(add_headers)
    for module in ROUTE_MODULES:
        add_routes(app, module.routes)
    for routes in agent.http_routes:
        add_routes(app, routes)
    return app


def add_routes(app: web.Application, routes: web.RouteTableDef) -> None:
    """Register routes, each behind the one error boundary (errors → statuses in one place)."""
    for route in routes:
        assert isinstance(route, web.RouteDef)
        handler = route.handler if route.method in ("GET", "HEAD") else datacenter_guard(route.handler)
        if app[AGENT].acl is not None and route.path.startswith("/v1/"):
            if route.path.startswith("/v1/acl/"):
                handler = on_leader(handler)
            handler = acl_guarded(handler, guard_for(route.method, route.path) or MANAGEMENT)
        app.router.add_route(route.method, route.path, refused_by_policy(error_boundary(handler), app[HTTP_POLICY]),
                             **route.kwargs)


def refused_by_policy(handler: Handler, policy: HTTPPolicy) -> Handler:
    """http_config's block_endpoints and allow_write_http_from, before anything else runs (Consul's order)."""
    if not (policy.blocked_prefixes or policy.writers):
        return handler

    async def checked(request: web.Request) -> web.StreamResponse:
        why = policy.refusal(request.method, request.path, request.remote)
        if why:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, why)
            return web.Response(status=403, text=why)
        return await handler(request)

    checked.__name__ = getattr(handler, "__name__", "handler")
    checked.__doc__ = handler.__doc__
    return checked


def acl_guarded(handler: Handler, guard: Guard) -> Handler:
    """Check the route's right (acl_guards.GUARDS) before its handler runs; open routes resolve nothing, and
    routes that check inside check there. Every RPC the request leads to carries its token (caller.py)."""
    checked = guard is not NONE and guard is not INSIDE

    async def guarded(request: web.Request) -> web.StreamResponse:
        set_caller_token(effective_token(request))
        if checked:
            await guard(request, await authorizer(request))
            request[GUARD_RAN] = True  # its cached answers are not the lean front's to give (lean.py)
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded


class HTTPCounters:
    """`consul.http.<METHOD>` request counters (one dict update per request)."""

    def __init__(self, telemetry: Any) -> None:
        self._counters = telemetry.counters
        self._names = {m: f"http.{m}" for m in ("GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH")}

    def incr(self, method: str) -> None:
        self._counters[self._names.get(method, "http.other")] += 1
