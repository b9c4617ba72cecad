"""Connect's HTTP API: CA roots and configuration, leaf certificates, authorize, and the legacy intentions API.

Thin handlers over the agent's Connect (`agent/connect/`): on servers it reads the local replica, on client
agents its copies of the servers' state (forwarding writes and CSRs to a server).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proconsul.agent.acl import filters as acl_filter
from proconsul.agent.api.authz import FILTERED_HEADER, authorizer
from proconsul.agent.api.body import fold_keys, json_body, want_dict
from proconsul.agent.api.errors import BadRequest, HTTPError, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common, filter_rows, primary_owned
from proconsul.agent.api.responses import consul_headers, json_response
from proconsul.agent.cluster.rpc import register_error
from proconsul.agent.connect.base import ConnectBase, iso_time
from proconsul.agent.connect.client import ClientConnect
from proconsul.agent.connect.service import Connect
from proconsul.connect import intentions as ixns
from proconsul.connect.errors import (
    CANotReady,
    ConcurrentChange,
    InvalidCAConfig,
    InvalidCSR,
    InvalidIntention,
)

routes = web.RouteTableDef()
JSON_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


for _err in (CANotReady, ConcurrentChange, InvalidCAConfig, InvalidCSR, InvalidIntention):
    register_error(_err)  # a client agent shows the server's reason, with the same status


async def _connect(request: web.Request) -> ConnectBase:
    conn = request.app[AGENT].connect
    if conn is None:
        raise HTTPError("Connect is disabled on this agent (connect { enabled = false })", 500)
    if isinstance(conn, ClientConnect):
        await conn.loaded()
    return conn


def _intention_body(raw: Any) -> dict[str, Any]:
    body = fold_keys(want_dict(raw, "Intention"), (
        "ID", "SourceName", "DestinationName", "SourceNS", "DestinationNS", "SourceType", "Action", "Permissions",
        "Description", "Meta", "SourcePartition", "DestinationPartition"))
    try:
        return ixns.validate(body)
    except InvalidIntention as e:
        raise BadRequest(f"Invalid intention: {e}") from None


# ---------------------------------------------------------------------- CA endpoints
@routes.get("/v1/connect/ca/roots")
@routes.get("/v1/agent/connect/ca/roots")
async def ca_roots(request: web.Request) -> web.Response:
    check_common(request)
    conn = await _connect(request)
    b = blocking_params(request)
    if b.index:
        await conn.wait_roots(b.index, b.wait)
    idx, body = conn.roots_body()
    if _pem_wanted(request):
        return web.Response(text=pem_chain(body), content_type="application/pem-certificate-chain",
                            headers=consul_headers(request, idx))
    return json_response(request, body, index=idx)


GO_BOOLS = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
            "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}


def _pem_wanted(request: web.Request) -> bool:
    """Consul's `?pem=<bool>` (Go's ParseBool; an empty value is false)."""
    raw = request.query.get("pem", "")
    if raw == "":
        return False
    if raw not in GO_BOOLS:
        raise BadRequest(f"The 'pem' query parameter must be a boolean value, not {raw!r}")
    return GO_BOOLS[raw]


def pem_chain(roots: dict[str, Any]) -> str:
    """Every root certificate, each followed by its intermediates, as one PEM bundle (what `?pem=true`
    answers: a file applications can trust mesh certificates with)."""
    pems = []
    for r in roots.get("Roots") or []:
        pems.extend([r.get("RootCert") or "", *(r.get("IntermediateCerts") or [])])
    return "".join(p if p.endswith("\n") else p + "\n" for p in pems if p.strip())


@routes.get("/v1/connect/ca/configuration")
async def ca_config_get(request: web.Request) -> web.Response:
    check_common(request)
    conn = await _connect(request)
    cfg = await conn.refresh_config() if isinstance(conn, ClientConnect) else conn.config()
    if cfg is None:
        raise NotFoundHTTP("the CA is not initialised yet")
    return json_response(request, cfg, index=cfg["ModifyIndex"])


@routes.put("/v1/connect/ca/configuration")
async def ca_config_put(request: web.Request) -> web.Response:
    check_common(request)
    body = want_dict(await json_body(request), "CAConfiguration")
    await (await _connect(request)).set_config(fold_keys(body, ("Provider", "Config", "ForceWithoutCrossSigning", "State")))
    return web.Response(status=200)


@routes.get("/v1/agent/connect/ca/leaf/{service}")
async def leaf(request: web.Request) -> web.Response:
    check_common(request)
    b = blocking_params(request)
    cert = await (await _connect(request)).leaf_blocking(request.match_info["service"], b.index, b.wait)
    body = {k: v for k, v in cert.items() if k not in ("RootID", "Jitter", "DNSSANs")}
    return json_response(request, body, index=cert["ModifyIndex"])


@routes.post("/v1/agent/connect/authorize")
async def authorize(request: web.Request) -> web.Response:
    conn = await _connect(request)
    raw = await request.read()
    if request.app[AGENT].acl is not None:  # service:write on the target (Consul), before any cached answer
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        target = parsed.get("Target") if isinstance(parsed, dict) else None
        if isinstance(target, str) and target:
            (await authorizer(request)).require("service", target, "write")
    hit = conn.authorize_raw(raw)  # proxies send the same few bodies again and again
    if hit is not None:
        return web.Response(body=hit, headers=JSON_HEADERS)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"Request decode failed: invalid JSON: {e}") from None
    body = want_dict(body, "AuthorizeRequest")
    if "Target" not in body or "ClientCertURI" not in body:
        body = fold_keys(body, ("Target", "ClientCertURI", "ClientCertSerial"))
    target, uri = body.get("Target"), body.get("ClientCertURI")
    if not isinstance(target, str) or not target:
        raise BadRequest("Target service must be specified")
    if not isinstance(uri, str) or not uri:
        raise BadRequest("ClientCertURI must be specified")
    answer = conn.authorize_body(target, uri)
    conn.remember_raw(raw, answer)
    return web.Response(body=answer, headers=JSON_HEADERS)


# ---------------------------------------------------------------------- intentions (legacy API)
@routes.get("/v1/connect/intentions")
async def list_intentions(request: web.Request) -> web.Response:
    check_common(request)
    conn = await _connect(request)
    b = blocking_params(request)
    if b.index:
        await conn.wait_intentions(b.index, b.wait)
    rows = conn.intentions()
    authz = await authorizer(request)
    headers = None
    if request.app[AGENT].acl is not None:
        rows, dropped = acl_filter.filter_rows(rows, lambda i: authz.intention_allowed(i["DestinationName"], "read"))
        headers = {FILTERED_HEADER: "true"} if dropped else None
    return json_response(request, filter_rows(request, rows), index=conn.intentions_index(), headers=headers)


@routes.post("/v1/connect/intentions")
async def create_intention(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    conn = await _connect(request)
    ixn = _intention_body(await json_body(request))
    (await authorizer(request)).require_intention(ixn["DestinationName"], "write")
    if conn.exact(ixn["SourceName"], ixn["DestinationName"]) is not None:
        raise BadRequest(f"duplicate intention found: {ixn['SourceName']} => {ixn['DestinationName']}")
    now = iso_time()
    ixn.update(ID=str(uuid.uuid4()), CreatedAt=now, UpdatedAt=now)
    await conn.upsert(ixn)
    return json_response(request, {"ID": ixn["ID"]})


def _exact_params(request: web.Request) -> tuple[str, str]:
    src, dst = request.query.get("source", ""), request.query.get("destination", "")
    if not src or not dst:
        raise BadRequest("required query parameters 'source' and 'destination' are missing")
    return src, dst


@routes.get("/v1/connect/intentions/exact")
async def get_exact(request: web.Request) -> web.Response:
    check_common(request)
    ixn = (await _connect(request)).exact(*_exact_params(request))
    if ixn is None:
        raise NotFoundHTTP("Intention not found")
    return json_response(request, ixn, index=ixn["ModifyIndex"])


@routes.put("/v1/connect/intentions/exact")
async def put_exact(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    conn = await _connect(request)
    src, dst = _exact_params(request)
    raw = want_dict(await json_body(request), "Intention")
    ixn = _intention_body(dict(raw, SourceName=src, DestinationName=dst))
    prev = conn.exact(src, dst)
    now = iso_time()
    ixn.update(ID=prev["ID"] if prev else str(uuid.uuid4()), CreatedAt=prev["CreatedAt"] if prev else now,
               UpdatedAt=now)
    await conn.upsert(ixn)
    return json_response(request, True)


@routes.delete("/v1/connect/intentions/exact")
async def delete_exact(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    src, dst = _exact_params(request)
    conn = await _connect(request)
    ixn = conn.exact(src, dst)
    if ixn is not None:
        await conn.remove_ids([ixn["ID"]])
    return json_response(request, True)


@routes.get("/v1/connect/intentions/match")
async def match(request: web.Request) -> web.Response:
    check_common(request)
    by = request.query.get("by", "")
    names = request.query.getall("name", [])
    if not names:
        raise BadRequest("required query parameter 'name' is missing")
    conn = await _connect(request)
    b = blocking_params(request)
    if b.index:  # proxies follow their intentions with blocking queries
        await conn.wait_intentions(b.index, b.wait)
    try:
        out = {n: ixns.match(conn.intentions(), by, n) for n in names}
    except InvalidIntention as e:
        raise BadRequest(str(e)) from None
    return json_response(request, out, index=conn.intentions_index())


@routes.get("/v1/connect/intentions/check")
async def check(request: web.Request) -> web.Response:
    check_common(request)
    src, dst = _exact_params(request)
    allowed, _ = ixns.decide((await _connect(request)).intentions(), src, dst,
                             request.app[AGENT].config.intention_default_allow)
    return json_response(request, {"Allowed": allowed})


@routes.get("/v1/connect/intentions/{id}")
async def get_by_id(request: web.Request) -> web.Response:
    check_common(request)
    ixn = (await _connect(request)).find(request.match_info["id"])
    if ixn is None:
        raise NotFoundHTTP(f"Intention with ID {request.match_info['id']!r} not found")
    (await authorizer(request)).require_intention(ixn["DestinationName"], "read")
    return json_response(request, ixn, index=ixn["ModifyIndex"])


@routes.put("/v1/connect/intentions/{id}")
async def put_by_id(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    conn = await _connect(request)
    prev = conn.find(request.match_info["id"])
    if prev is None:
        raise NotFoundHTTP(f"Intention with ID {request.match_info['id']!r} not found")
    ixn = _intention_body(await json_body(request))
    authz = await authorizer(request)
    authz.require_intention(prev["DestinationName"], "write")
    authz.require_intention(ixn["DestinationName"], "write")
    ixn.update(ID=prev["ID"], CreatedAt=prev["CreatedAt"], UpdatedAt=iso_time())
    if (ixn["SourceName"], ixn["DestinationName"]) != (prev["SourceName"], prev["DestinationName"]):
        await conn.remove_ids([prev["ID"]])
    await conn.upsert(ixn)
    return json_response(request, True)


@routes.delete("/v1/connect/intentions/{id}")
async def delete_by_id(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    ixn_id = request.match_info["id"]
    conn = await _connect(request)
    prev = conn.find(ixn_id)
    if prev is not None:
        (await authorizer(request)).require_intention(prev["DestinationName"], "write")
    if not await conn.remove_ids([ixn_id]):
        raise NotFoundHTTP(f"Intention with ID {ixn_id!r} not found")
    return json_response(request, True)


def _probe_gateways(agent: Any) -> None:
    """A server probes every datacenter's mesh gateways for the link view (`Extra.MeshGateways`)."""
    from proconsul.agent.connect.gateway_probe import GatewayProbes

    own = agent.config.datacenter
    args = {"name": "mesh-gateway", "passing": True}

    async def list_gateways(dc: str) -> list[dict[str, Any]]:
        if dc == own:
            return list((await agent.backend.query("health.service", args))[1])
        answer = await agent.cluster.forward_dc(dc, "catalog.query", {
            "name": "health.service", "args": args, "index": 0, "wait": 0.0, "mode": "stale"},
            timeout=5.0, idempotent=True)
        return list(answer[1])

    probes = GatewayProbes(own, agent.cluster.datacenters, list_gateways)
    agent.cluster.report_parts["MeshGateways"] = probes.report

    async def gateway_probes(agent: Any, stop: asyncio.Event) -> None:
        await probes.run(stop)

    agent.listeners.append(gateway_probes)


def attach(agent: Any) -> None:
    """Wire Connect into an agent: its routes, and the Connect that reads the local replica (servers) or
    follows the servers (client agents), with its background duties."""
    agent.http_routes.append(routes)
    if not agent.config.connect_enabled:
        agent.connect = None
        return
    if agent.store is not None:
        server = Connect(agent)
        server.register_rpc(agent.cluster.rpc.register)
        if agent.cluster.secondary:
            from proconsul.agent.connect.secondary import SecondaryCA

            cfg = agent.config
            server.secondary = SecondaryCA(agent.store, cfg.datacenter, cfg.primary_datacenter,
                                           agent.cluster.forward_primary, agent.backend.apply,
                                           str((cfg.connect_ca_config or {}).get("leaf_cert_ttl", "72h")))
            agent.cluster.report_parts["SecondaryCA"] = server.secondary.report
        agent.connect = server
        _probe_gateways(agent)
        if agent.config.auto_encrypt_allow_tls:
            from proconsul.agent.connect import auto_encrypt

            auto_encrypt.serve(server, agent.cluster.rpc.register, agent.config.datacenter)
            server_ctx = agent.cluster.tls.server
            if server_ctx is not None:
                async def trust_roots(agent: Any, stop: asyncio.Event) -> None:
                    await auto_encrypt.trust_connect_roots(server, server_ctx, stop)
                agent.listeners.append(trust_roots)
    else:
        async def call_server(method: str, args: dict[str, Any]) -> Any:
            return await agent.cluster.call_any_server(method, args, timeout=30.0,
                                                       idempotent=method == "connect.sign")
        agent.connect = ClientConnect(agent, call_server)
    connect = agent.connect

    async def connect_duties(agent: Any, stop: asyncio.Event) -> None:
        await connect.run_duties(agent.wait_leadership, stop)

    agent.listeners.append(connect_duties)
