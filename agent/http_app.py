"""The aiohttp application: every /v1 route, the error middleware, and the UI mount."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import api_agent, api_catalog, api_health, api_kv, api_session, api_status
from .http_util import error_middleware

ROUTE_MODULES = [api_agent, api_catalog, api_health, api_kv, api_session, api_status]
MAX_BODY = 8 << 20


def build_app(agent: Any) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app["agent"] = agent
    for module in ROUTE_MODULES:
        app.add_routes(module.routes)
    for mount in agent.http_mounts:
        mount(app)
    return app
