"""/v1/status/* and /v1/event/*: cluster status and user events."""

from __future__ import annotations

import base64

from aiohttp import web

from proconsul.agent.api.authz import authorizer
from proconsul.agent.api.errors import BadRequest
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common
from proconsul.agent.api.responses import json_response
from proconsul.agent.local.events import EventError, new_event

routes = web.RouteTableDef()


@routes.get("/v1/status/leader")
async def leader(request: web.Request) -> web.Response:
    return json_response(request, await request.app[AGENT].leader_address())


@routes.get("/v1/status/peers")
async def peers(request: web.Request) -> web.Response:
    return json_response(request, await request.app[AGENT].peer_addresses())


@routes.put("/v1/event/fire/{name}")
async def fire(request: web.Request) -> web.Response:
    check_common(request)
    payload = await request.read()
    q = request.query
    try:
        event = new_event(request.match_info["name"], payload, q.get("node", ""), q.get("service", ""),
                          q.get("tag", ""))
    except EventError as e:
        raise BadRequest(str(e)) from None
    return json_response(request, _event_json(await request.app[AGENT].fire_event(event)))


def _event_json(e: dict) -> dict:
    out = dict(e)
    out["Payload"] = base64.b64encode(e["Payload"]).decode() if e["Payload"] else None
    return out


@routes.get("/v1/event/list")
async def list_events(request: web.Request) -> web.Response:
    check_common(request)
    events = request.app[AGENT].events
    b = blocking_params(request)
    name = request.query.get("name", "")
    idx, items = await events.list(name, b.index, b.wait)
    authz = await authorizer(request)
    if not authz.reads_all("event"):
        items = [e for e in items if authz.allowed("event", e["Name"], "read")]
    return json_response(request, [_event_json(e) for e in items], index=idx)
