"""/v1/snapshot: save (GET) and restore (PUT) the whole state store."""

from __future__ import annotations

from aiohttp import web

from proconsul.agent.api.errors import BadRequest
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import check_common
from proconsul.agent.api.responses import consul_headers
from proconsul.agent.cluster import snapshot
from proconsul.catalog import commands as c

routes = web.RouteTableDef()

MAX_SNAPSHOT = 1 << 30


@routes.get("/v1/snapshot")
async def save(request: web.Request) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    # Taken by the leader after a ReadIndex round (forwarded from followers and client agents), or
    # by whichever server is asked with ?stale — as Consul does.
    index, data = await agent.cluster.operator_call("snapshot.save", {"stale": "stale" in request.query})
    return web.Response(body=data, content_type="application/octet-stream", headers=consul_headers(request, index))


@routes.put("/v1/snapshot")
async def restore(request: web.Request) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    data = await request.content.read(MAX_SNAPSHOT + 1)
    if len(data) > MAX_SNAPSHOT:
        raise BadRequest("snapshot is larger than 1 GiB")
    try:
        snap = snapshot.read(data)
    except snapshot.SnapshotError as e:
        raise BadRequest(f"cannot restore: {e}") from None
    if snap.header.get("Datacenter") != agent.config.datacenter:
        raise BadRequest(f"cannot restore: the snapshot is of datacenter {snap.header.get('Datacenter')!r}, "
                         f"this is {agent.config.datacenter!r}")
    await agent.backend.apply(c.Restore(state=snap.state))
    return web.Response(status=200)
