"""/v1/coordinate/*: network coordinates (Consul's Vivaldi coordinates).

Coordinates are kept through Raft in the `coordinates` table, one per node, in Consul's shape
({"Node", "Segment", "Coord": {"Vec", "Error", "Adjustment", "Height"}}). Every agent measures its own from
its LAN probes and sends it periodically; `PUT /v1/coordinate/update` takes the same path: queued on the
leader and written with the next batch (agent/cluster/coordinate_sync.py; dropped, as in Consul, for a node
the catalog does not have). Reads sort by them with `?near=` (near.py).
"""

from __future__ import annotations

from aiohttp import web

from proconsul.agent.api.authz import authorizer
from proconsul.agent.api.body import fold_keys, json_body, want_dict
from proconsul.agent.api.catalog import run_query
from proconsul.agent.api.errors import BadRequest
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.near import coordinates
from proconsul.agent.api.params import check_common
from proconsul.agent.api.responses import consul_headers, json_response
from proconsul.agent.cluster.vivaldi import Coordinate, CoordinateError

routes = web.RouteTableDef()


@routes.get("/v1/coordinate/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    """With a WAN pool: every datacenter's servers and their WAN coordinates (from the WAN exchanges;
    a client agent asks a server). Without one: this datacenter's servers' LAN coordinates."""
    check_common(request)
    agent = request.app[AGENT]
    cluster = agent.cluster
    if cluster.router is not None:
        return json_response(request, cluster.coordinate_datacenters())
    if agent.server is None:
        rows = await cluster.call_any_server("federation.coordinates", {}, timeout=10.0)
        if rows:
            return json_response(request, rows)
    dc = agent.config.datacenter
    _, servers = await agent.backend.query("catalog.service", {"name": "consul"})
    coords = await coordinates(agent)
    return json_response(request, [{"Datacenter": dc, "AreaID": "WAN", "Coordinates": [
        {"Node": f"{s['Node']}.{dc}", "Segment": "", "Coord": coords[s["Node"].lower()].to_json()}
        for s in servers if s["Node"].lower() in coords]}])


@routes.get("/v1/coordinate/nodes")
async def nodes(request: web.Request) -> web.Response:
    return await run_query(request, "coordinate.nodes", {})


@routes.get("/v1/coordinate/node/{node}")
async def node(request: web.Request) -> web.Response:
    check_common(request)
    idx, rows = await request.app[AGENT].backend.query("coordinate.node", {"node": request.match_info["node"]})
    if not rows:  # Consul: a bare 404 that still carries the index headers (clients read them)
        return web.Response(status=404, headers=consul_headers(request, idx))
    return json_response(request, rows, index=idx)


@routes.put("/v1/coordinate/update")
async def update(request: web.Request) -> web.Response:
    check_common(request)
    body = fold_keys(want_dict(await json_body(request), "coordinate update"), ("Node", "Segment", "Coord"))
    name = body.get("Node")
    if not isinstance(name, str) or not name:
        raise BadRequest("Node must name the node whose coordinate this is")
    segment = body.get("Segment") or ""
    if not isinstance(segment, str):
        raise BadRequest("Segment must be a string")
    try:
        coord = Coordinate.from_json(fold_keys(want_dict(body.get("Coord"), "Coord"),
                                               ("Vec", "Error", "Adjustment", "Height")))
    except CoordinateError as e:
        raise BadRequest(f"Invalid coordinate: {e}") from None
    (await authorizer(request)).require("node", name, "write")
    # As Consul's: queued on the leader and written with the next batch (agents' own updates take the same path).
    await request.app[AGENT].cluster.submit_coordinate({"Node": name, "Segment": segment, "Coord": coord.to_json()})
    return web.Response(status=200)
