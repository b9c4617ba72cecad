"""/v1/operator/raft/*: the Raft configuration, removing a peer, leadership transfer."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proconsul.agent.api.body import fold_keys, json_body
from proconsul.agent.api.errors import BadRequest, HTTPError
from proconsul.agent.api.params import check_common, uint_param
from proconsul.agent.api.responses import json_response
from proconsul.agent.observe.profile import sample_stacks

routes = web.RouteTableDef()


@routes.get("/v1/operator/raft/configuration")
async def raft_configuration(request: web.Request) -> web.Response:
    check_common(request)
    cluster = request.app["agent"].cluster
    return json_response(request, await cluster.operator_call(
        "operator.raft_configuration", {"stale": "stale" in request.query}))


@routes.delete("/v1/operator/raft/peer")
async def raft_remove_peer(request: web.Request) -> web.Response:
    q = request.query
    sid, address = q.get("id", ""), q.get("address", "")
    if bool(sid) == bool(address):
        raise BadRequest("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
    await request.app["agent"].cluster.operator_call("operator.raft_remove_peer", {"id": sid, "address": address})
    return web.Response(status=200)


@routes.post("/v1/operator/raft/transfer-leader")
async def raft_transfer_leader(request: web.Request) -> web.Response:
    sid = request.query.get("id", "")
    await request.app["agent"].cluster.operator_call("operator.raft_transfer_leader", {"id": sid})
    return json_response(request, {"Success": True})


@routes.put("/v1/agent/debug/partition")
async def debug_partition(request: web.Request) -> web.Response:
    """Fault injection (only with `enable_debug`): drop this agent's Raft and gossip traffic to and from
    the named members, e.g. {"Block": ["s1", "s2"]}; {"Block": []} heals."""
    agent = request.app["agent"]
    if not agent.config.enable_debug:
        raise HTTPError("debug endpoints are disabled on this agent (set enable_debug = true)", 403)
    raw = await json_body(request)
    if not isinstance(raw, dict):
        raise BadRequest("Request body must be a JSON object")
    body = fold_keys(raw, ("Block",))
    names = body.get("Block")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest("Block must be a list of member names")
    agent.cluster.partition(names)
    return json_response(request, {"Blocked": sorted(names)})


@routes.get("/v1/agent/debug/profile")
async def debug_profile(request: web.Request) -> web.Response:
    """A CPU profile of the agent (only with `enable_debug`): `?seconds=N` (1-60) of sampled stacks of its
    event loop, collapsed for flame-graph tools."""
    agent = request.app["agent"]
    if not agent.config.enable_debug:
        raise HTTPError("debug endpoints are disabled on this agent (set enable_debug = true)", 403)
    seconds = uint_param(request, "seconds", 10)
    if not 1 <= seconds <= 60:
        raise BadRequest("seconds must be between 1 and 60")
    text = await asyncio.to_thread(sample_stacks, float(seconds))
    return web.Response(text=text, content_type="text/plain")
