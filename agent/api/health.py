"""/v1/health/*: checks and the health-filtered view of services."""

from __future__ import annotations

from aiohttp import web

from proconsul.agent.api.catalog import _tags, cached_read, run_query
from proconsul.agent.api.errors import BadRequest
from proconsul.agent.api.params import flag, node_meta_filter

routes = web.RouteTableDef()

STATES = ("any", "passing", "warning", "critical")


@routes.get("/v1/health/node/{node}")
@cached_read
async def node(request: web.Request) -> web.Response:
    return await run_query(request, "health.node", {"node": request.match_info["node"]})


@routes.get("/v1/health/checks/{name}")
@cached_read
async def checks(request: web.Request) -> web.Response:
    return await run_query(request, "health.checks", {"name": request.match_info["name"],
                                                      "node_meta": node_meta_filter(request)})


@routes.get("/v1/health/ingress/{name}")
async def ingress(request: web.Request) -> web.Response:
    return await run_query(request, "health.ingress", {"name": request.match_info["name"],
                                                       "passing": flag(request, "passing")})


@routes.get("/v1/health/service/{name}")
@cached_read
async def service(request: web.Request) -> web.Response:
    if request.query.get("peer"):  # no cluster peering: nothing is imported from a peer, as Consul answers
        return await run_query(request, "health.service", {"name": "", "tags": None, "passing": False})
    return await run_query(request, "health.service", {
        "name": request.match_info["name"], "tags": _tags(request), "passing": flag(request, "passing"),
        "node_meta": node_meta_filter(request)})


@routes.get("/v1/health/connect/{name}")
@cached_read
async def connect(request: web.Request) -> web.Response:
    return await run_query(request, "health.connect", {
        "name": request.match_info["name"], "tags": _tags(request), "passing": flag(request, "passing"),
        "node_meta": node_meta_filter(request)})


@routes.get("/v1/health/state/{state}")
@cached_read
async def state(request: web.Request) -> web.Response:
    s = request.match_info["state"]
    if s not in STATES:
        raise BadRequest(f"Invalid check state {s!r}: use one of {', '.join(STATES)}")
    return await run_query(request, "health.state", {"state": s, "node_meta": node_meta_filter(request)})
