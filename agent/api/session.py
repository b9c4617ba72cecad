"""/v1/session/*: sessions for locks and leader election."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul.agent.api.authz import authorizer
from proconsul.agent.api.body import field_type, fold_keys, json_body, want_dict
from proconsul.agent.api.catalog import run_query
from proconsul.agent.api.errors import BadRequest, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import check_common
from proconsul.agent.api.responses import json_response
from proconsul.agent.config.duration import DurationError, format_duration, parse_duration

routes = web.RouteTableDef()

MAX_TTL = 86400.0


def _lock_delay_ns(v: Any) -> int:
    """Consul's LockDelay: a duration string, or a number (seconds when small, else nanoseconds)."""
    if isinstance(v, bool):
        raise BadRequest("Session.LockDelay must be a duration such as \"15s\"")
    if isinstance(v, int | float):
        return int(v * 1_000_000_000) if v < 1000 else int(v)
    try:
        return int(parse_duration(v) * 1_000_000_000)
    except DurationError as e:
        raise BadRequest(f"Session.LockDelay: {e}") from None


@routes.put("/v1/session/create")
async def create(request: web.Request) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    body = await json_body(request, required=False) or {}
    body = fold_keys(want_dict(body, "Session"), ("Name", "Node", "Behavior", "TTL", "ID", "LockDelay", "Checks",
                                                  "NodeChecks", "ServiceChecks"))
    for name in ("Name", "Node", "Behavior", "TTL", "ID"):
        field_type(body, name, str, "Session")
    for name in ("Checks", "NodeChecks", "ServiceChecks"):
        field_type(body, name, list, "Session")
    sess: dict[str, Any] = {
        "Name": body.get("Name") or "",
        "Node": body.get("Node") or agent.config.node_name,
        "Behavior": body.get("Behavior") or "release",
        "TTL": body.get("TTL") or "",
        "LockDelay": _lock_delay_ns(body["LockDelay"]) if "LockDelay" in body else 15_000_000_000,
    }
    if sess["Behavior"] not in ("release", "delete"):
        raise BadRequest(f"Session.Behavior {sess['Behavior']!r} must be \"release\" or \"delete\"")
    for name in ("Checks", "NodeChecks", "ServiceChecks"):
        if name in body and body[name] is not None:
            sess[name] = body[name]
    if sess["TTL"]:
        try:
            ttl = parse_duration(sess["TTL"])
        except DurationError as e:
            raise BadRequest(f"Session.TTL: {e}") from None
        low = request.app[AGENT].config.session_ttl_min
        if not low <= ttl <= MAX_TTL:
            raise BadRequest(f"Invalid Session TTL '{sess['TTL']}', must be between "
                             f"[{format_duration(low)}={format_duration(MAX_TTL)}]")
    (await authorizer(request)).require("session", sess["Node"], "write")
    sid = await agent.backend.session_create(sess)
    return json_response(request, {"ID": sid})


async def _may_write_session(request: web.Request) -> None:
    """session:write on the session's node (an unknown session is left to the handler's answer)."""
    authz = await authorizer(request)
    _, rows = await request.app[AGENT].backend.query("session.info", {"id": request.match_info["id"]})
    if rows:
        authz.require("session", rows[0]["Node"], "write")


@routes.put("/v1/session/destroy/{id}")
async def destroy(request: web.Request) -> web.Response:
    check_common(request)
    await _may_write_session(request)
    await request.app[AGENT].backend.session_destroy(request.match_info["id"])
    return json_response(request, True)


@routes.put("/v1/session/renew/{id}")
async def renew(request: web.Request) -> web.Response:
    check_common(request)
    sid = request.match_info["id"]
    await _may_write_session(request)
    sess = await request.app[AGENT].backend.session_renew(sid)
    if sess is None:
        raise NotFoundHTTP(f"Session id '{sid}' not found")
    return json_response(request, [sess])


@routes.get("/v1/session/info/{id}")
async def info(request: web.Request) -> web.Response:
    return await run_query(request, "session.info", {"id": request.match_info["id"]})


@routes.get("/v1/session/node/{node}")
async def node(request: web.Request) -> web.Response:
    return await run_query(request, "session.node", {"node": request.match_info["node"]})


@routes.get("/v1/session/list")
async def list_(request: web.Request) -> web.Response:
    return await run_query(request, "session.list", {})
