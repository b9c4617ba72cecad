"""/v1/operator/*: the Raft configuration, removing a peer, leadership transfer, autopilot, usage, keyring."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proconsul.agent.api.body import fold_keys, json_body, want_dict
from proconsul.agent.api.errors import BadRequest, HTTPError
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import check_common, uint_param
from proconsul.agent.api.responses import json_response
from proconsul.agent.cluster import autopilot as ap
from proconsul.agent.cluster.autopilot_driver import META_KEY, config_from_file
from proconsul.agent.cluster.keyring import failures as keyring_failures
from proconsul.agent.observe.profile import sample_stacks
from proconsul.catalog import commands as c
from proconsul.membership.keyring import KeyringError, decode_key

routes = web.RouteTableDef()


@routes.get("/v1/operator/raft/configuration")
async def raft_configuration(request: web.Request) -> web.Response:
    check_common(request)
    cluster = request.app[AGENT].cluster
    return json_response(request, await cluster.operator_call(
        "operator.raft_configuration", {"stale": "stale" in request.query}))


@routes.delete("/v1/operator/raft/peer")
async def raft_remove_peer(request: web.Request) -> web.Response:
    q = request.query
    sid, address = q.get("id", ""), q.get("address", "")
    if bool(sid) == bool(address):
        raise BadRequest("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
    await request.app[AGENT].cluster.operator_call("operator.raft_remove_peer", {"id": sid, "address": address})
    return web.Response(status=200)


@routes.post("/v1/operator/raft/transfer-leader")
async def raft_transfer_leader(request: web.Request) -> web.Response:
    sid = request.query.get("id", "")
    await request.app[AGENT].cluster.operator_call("operator.raft_transfer_leader", {"id": sid})
    return json_response(request, {"Success": True})


@routes.get("/v1/operator/federation")
async def federation(request: web.Request) -> web.Response:
    """The link view (beyond Consul): per datacenter its servers, reachability, RTT, last contact and
    last forwarded call; this server's replication from the primary. A client agent asks a server."""
    check_common(request)
    return json_response(request, await _from_a_server(request, "federation.status", "federation_report"))


async def _from_a_server(request: web.Request, method: str, local: str) -> Any:
    """A server answers from its own view (`cluster.<local>()`); a client agent asks one (`method`)."""
    cluster = request.app[AGENT].cluster
    if cluster.raft is not None:
        return getattr(cluster, local)()
    return await cluster.call_any_server(method, {}, timeout=10.0)


@routes.delete("/v1/operator/federation/{dc}")
async def federation_remove_dc(request: web.Request) -> web.Response:
    """Forget a dead datacenter now (Consul keeps it listed until reconnect_timeout_wan, 72 h)."""
    cluster = request.app[AGENT].cluster
    if cluster.raft is None:
        raise BadRequest("run remove-dc against a server: client agents are not in the WAN pool")
    names = cluster.forget_datacenter(request.match_info["dc"].lower())
    return json_response(request, {"Removed": names})


@routes.put("/v1/agent/debug/partition")
async def debug_partition(request: web.Request) -> web.Response:
    """Fault injection (only with `enable_debug`): drop this agent's Raft and gossip traffic to and from
    the named members, e.g. {"Block": ["s1", "s2"]}; {"Block": []} heals."""
    agent = request.app[AGENT]
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
    agent = request.app[AGENT]
    if not agent.config.enable_debug:
        raise HTTPError("debug endpoints are disabled on this agent (set enable_debug = true)", 403)
    seconds = uint_param(request, "seconds", 10)
    if not 1 <= seconds <= 60:
        raise BadRequest("seconds must be between 1 and 60")
    text = await asyncio.to_thread(sample_stacks, float(seconds))
    return web.Response(text=text, content_type="text/plain")


# ---------------------------------------------------------------------- autopilot
@routes.get("/v1/operator/autopilot/configuration")
async def autopilot_config_get(request: web.Request) -> web.Response:
    """Autopilot's configuration (replicated; the agent config's `autopilot` block until one is written)."""
    check_common(request)
    agent = request.app[AGENT]
    idx, row = await agent.backend.query("table.get", {"table": "meta", "key": META_KEY})
    body = dict(row) if row else dict(config_from_file(agent.config.autopilot), CreateIndex=0, ModifyIndex=0)
    return json_response(request, body, index=idx)


@routes.put("/v1/operator/autopilot/configuration")
async def autopilot_config_put(request: web.Request) -> web.Response:
    """Replace autopilot's configuration (`?cas=` to only replace the version read)."""
    agent = request.app[AGENT]
    raw = fold_keys(want_dict(await json_body(request), "AutopilotConfiguration"), ap.FIELDS)
    try:
        row = ap.checked(raw)
    except ap.InvalidSetting as e:
        raise BadRequest(str(e)) from None
    cas = uint_param(request, "cas") if "cas" in request.query else None
    ok = await agent.backend.apply(c.TableSet(table="meta", key=META_KEY, row=row, cas=cas))
    return json_response(request, bool(ok))


async def _autopilot_report(request: web.Request, what: str) -> dict:
    check_common(request)
    return await request.app[AGENT].cluster.operator_call(f"operator.autopilot_{what}",
                                                            {"stale": "stale" in request.query})


@routes.get("/v1/operator/autopilot/health")
async def autopilot_health(request: web.Request) -> web.Response:
    """Each server's health as the leader sees it; 429 when the cluster is not healthy (as Consul)."""
    body = await _autopilot_report(request, "health")
    return json_response(request, body, status=200 if body["Healthy"] else 429)


@routes.get("/v1/operator/autopilot/state")
async def autopilot_state(request: web.Request) -> web.Response:
    return json_response(request, await _autopilot_report(request, "state"))


@routes.get("/v1/operator/usage")
async def usage(request: web.Request) -> web.Response:
    """Consul's usage report: services, instances and nodes of this datacenter."""
    check_common(request)
    agent = request.app[AGENT]
    idx, services = await agent.backend.query("catalog.services", {})
    _, nodes = await agent.backend.query("catalog.nodes", {})
    instances = 0
    connect = 0
    for name in services:
        _, rows = await agent.backend.query("catalog.service", {"name": name})
        instances += len(rows)
        connect += sum(1 for r in rows if r.get("ServiceKind") == "connect-proxy")
    dc = agent.config.datacenter
    return json_response(request, {"Usage": {dc: {
        "Services": len(services), "ServiceInstances": instances, "Nodes": len(nodes),
        "ConnectServiceInstances": {"connect-proxy": connect, "connect-native": 0, "mesh-gateway": 0,
                                    "ingress-gateway": 0, "terminating-gateway": 0},
        "BillableServiceInstances": instances - connect}}}, index=idx)


@routes.get("/v1/operator/keyring")
@routes.post("/v1/operator/keyring")
@routes.put("/v1/operator/keyring")
@routes.delete("/v1/operator/keyring")
async def keyring(request: web.Request) -> web.Response:
    """Gossip keyring: GET lists (Consul's KeyringResponse rows), POST installs, PUT uses, DELETE removes a key on
    every member of the pool (agent/cluster/keyring.py). Without gossip encryption every call fails with
    Consul's 500, as Consul's does."""
    relay = uint_param(request, "relay-factor")
    if relay > 5:
        raise BadRequest("relay-factor: the maximum is 5")  # accepted for Consul's CLI; answers come back directly
    cluster = request.app[AGENT].cluster
    op = {"GET": "list", "POST": "install", "PUT": "use", "DELETE": "remove"}[request.method]
    key = ""
    if op != "list":
        body = fold_keys(want_dict(await json_body(request), "the body"), ("Key",))
        key = body.get("Key")
        if not isinstance(key, str) or not key:
            raise BadRequest("Key: required, a base64 gossip key (`proconsul keygen` makes one)")
        try:
            decode_key(key, "Key")
        except KeyringError as e:
            raise BadRequest(str(e)) from None
    if not cluster.keys.enabled:
        raise HTTPError("Keyring is empty: gossip encryption is not enabled on this cluster", 500)
    local_only = request.query.get("local-only", "false").lower() not in ("", "false", "0")
    try:
        rows = await cluster.keyring_operation(op, key, local_only)
    except KeyringError as e:
        raise HTTPError(str(e), 500) from None
    if op == "list":
        return json_response(request, rows)
    failed = keyring_failures(rows)
    if failed:
        raise HTTPError(failed, 500)
    return web.Response(status=200)
