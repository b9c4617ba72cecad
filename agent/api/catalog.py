"""/v1/catalog/*: the cluster-wide catalog of nodes and services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proconsul.agent.acl.enforce import deregister_needs, register_needs, require
from proconsul.agent.acl.filters import filter_query, needs_filter
from proconsul.agent.api.authz import FILTERED_HEADER, GUARD_RAN, authorizer, effective_token
from proconsul.agent.api.body import field_type, fold_keys, json_body, want_dict
from proconsul.agent.api.errors import BadRequest, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.near import near_sorted
from proconsul.agent.api.params import (
    blocking_params,
    check_common,
    consistency_mode,
    filter_rows,
    node_meta_filter,
)
from proconsul.agent.api.read_cache import Entry, may_answer_cached
from proconsul.agent.api.responses import consul_headers, dumps, json_response
from proconsul.agent.cluster.caller import results_filtered
from proconsul.agent.cluster.errors import NoPathToDatacenter
from proconsul.agent.local.definitions import DefinitionError, check_definition
from proconsul.catalog import commands as c
from proconsul.catalog.queries import get_query
from proconsul.catalog.store import ACL_TABLES

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READ_TABLES = "proconsul.read_tables"


def cached_read(handler: Handler) -> Handler:
    """Serve a read from the agent's response cache when the same path and query are still valid.

    The lean front (`lean.py`) answers the same hits before aiohttp parses the request; both take their
    rules from `may_answer_cached`. With ACLs on, the token is resolved (one cached lookup) before a hit, so
    an unknown or expired token is refused even when its last answer is cached."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        agent = request.app[AGENT]
        cache = agent.read_cache
        if cache is None or not may_answer_cached(agent, request.query_string, request.query.__contains__):
            return await handler(request)
        key = request.path_qs
        if agent.acl is not None:  # answers differ per token once listings are filtered
            await authorizer(request)
            key = f"{key}\n{effective_token(request)}"
        hit = cache.get(key)
        if hit is not None:
            return web.Response(body=hit.body, status=hit.status, headers=hit.headers)
        response = await handler(request)
        tables = request.get(READ_TABLES)
        if tables is not None and isinstance(response, web.Response) and response.status < 300:
            headers = CIMultiDict((k, v) for k, v in response.headers.items()
                                  if k.startswith("X-Consul-") or k == "Content-Type")
            cache.put(key, Entry(tables[0], tables[1], response.status, response.body, headers,
                                 lean=not request.get(GUARD_RAN, False)))
        return response

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def mark_cacheable(request: web.Request, name: str, index: int) -> None:
    """Before a read runs: tell `cached_read` the tables its answer comes from, and their index now (a
    write that lands while it runs makes the stored answer stale at once). Blocking reads are not cached."""
    agent = request.app[AGENT]
    if agent.read_cache is not None and not index:
        tables = get_query(name).tables
        if agent.acl is not None:  # a filtered answer is only as fresh as the rules that cut it
            tables = (*tables, *ACL_TABLES)
        request[READ_TABLES] = (tables, agent.read_cache.mark(tables))


async def run_query(request: web.Request, name: str, args: dict[str, Any], *,
                    filter_result: bool = True) -> web.Response:
    """Run a named read (blocking if asked) and answer with Consul's headers.

    Plain JSON bodies come from the backend's encoded-response cache when it has one. `?filter=`
    applies to the rows of the result, unless the query applies it itself (`filter_result=False`).
    """
    check_common(request)
    b = blocking_params(request)
    agent = request.app[AGENT]
    backend = agent.backend
    mode = consistency_mode(request)
    authz = await authorizer(request) if agent.acl is not None else None  # ACLs off: nothing to look at
    by_acl = authz is not None and needs_filter(name, authz)
    mark_cacheable(request, name, b.index)
    filtered = filter_result and bool(request.query.get("filter"))
    near = request.query.get("near")
    if not filtered and not by_acl and not near and "pretty" not in request.query and hasattr(backend, "query_encoded"):
        idx, _, body = await backend.query_encoded(name, args, dumps, b.index, b.wait, mode)
        return web.Response(body=body, content_type="application/json", headers=consul_headers(request, idx))
    idx, result = await backend.query(name, args, b.index, b.wait, mode)
    headers = None
    if by_acl and authz is not None:
        result, dropped = filter_query(name, authz, result)
        headers = {FILTERED_HEADER: "true"} if dropped or results_filtered() else None
    if filtered:
        if isinstance(result, dict) and "Services" in result:  # node-services: the filter applies to services
            result = dict(result, Services=filter_rows(request, result["Services"]))
        else:
            result = filter_rows(request, result)
    if near:
        result = await near_sorted(request, result, near)
    return json_response(request, result, index=idx, headers=headers)


def _tags(request: web.Request) -> list[str] | None:
    return list(request.query.getall("tag", [])) or None


@routes.get("/v1/catalog/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    return json_response(request, await request.app[AGENT].datacenters())


@routes.get("/v1/catalog/nodes")
@cached_read
async def nodes(request: web.Request) -> web.Response:
    return await run_query(request, "catalog.nodes", {"node_meta": node_meta_filter(request)})


@routes.get("/v1/catalog/services")
@cached_read
async def services(request: web.Request) -> web.Response:
    # The filter applies to each instance before names and tags are gathered, so it goes into the query.
    return await run_query(request, "catalog.services", {"node_meta": node_meta_filter(request),
                                                         "filter": request.query.get("filter", "")},
                           filter_result=False)


@routes.get("/v1/catalog/service/{name}")
@cached_read
async def service(request: web.Request) -> web.Response:
    return await run_query(request, "catalog.service", {
        "name": request.match_info["name"], "tags": _tags(request), "node_meta": node_meta_filter(request)})


@routes.get("/v1/catalog/gateway-services/{gateway}")
async def gateway_services(request: web.Request) -> web.Response:
    return await run_query(request, "catalog.gateway_services", {"gateway": request.match_info["gateway"]})


@routes.get("/v1/catalog/connect/{name}")
@cached_read
async def connect_service(request: web.Request) -> web.Response:
    return await run_query(request, "catalog.service", {
        "name": request.match_info["name"], "tags": _tags(request), "node_meta": node_meta_filter(request),
        "connect": True})


@routes.get("/v1/catalog/node/{node}")
@cached_read
async def node(request: web.Request) -> web.Response:
    return await run_query(request, "catalog.node", {"node": request.match_info["node"]})


@routes.get("/v1/catalog/node-services/{node}")
async def node_services(request: web.Request) -> web.Response:
    check_common(request)
    b = blocking_params(request)
    idx, result = await request.app[AGENT].backend.query(
        "catalog.node_services", {"node": request.match_info["node"]}, b.index, b.wait, consistency_mode(request))
    result, _ = filter_query("catalog.node_services", await authorizer(request), result)
    if result is None:
        raise NotFoundHTTP(f"Node not found: {request.match_info['node']!r}")
    return json_response(request, result, index=idx)


REGISTER_FIELDS = ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "Service", "Check",
                   "Checks", "SkipNodeUpdate")
SERVICE_FIELDS = ("ID", "Service", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "Weights",
                  "EnableTagOverride", "Kind", "Proxy", "Connect", "SocketPath")
CHECK_FIELDS = ("Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags",
                "Type", "Definition", "Interval", "Timeout", "ExposedPort")


def _register_command(body: dict[str, Any], datacenter: str) -> c.Register:
    """Consul's RegisterRequest body → a Register command, with field-naming errors."""
    body = fold_keys(body, REGISTER_FIELDS)
    if isinstance(body.get("Service"), dict):
        body["Service"] = fold_keys(body["Service"], SERVICE_FIELDS)
    if isinstance(body.get("Check"), dict):
        body["Check"] = fold_keys(body["Check"], CHECK_FIELDS)
    if isinstance(body.get("Checks"), list):
        body["Checks"] = [fold_keys(x, CHECK_FIELDS) if isinstance(x, dict) else x for x in body["Checks"]]
    for name in ("Node", "Address", "ID", "Datacenter"):
        field_type(body, name, str, "Register")
    for name in ("TaggedAddresses", "NodeMeta", "Service", "Check"):
        field_type(body, name, dict, "Register")
    field_type(body, "Checks", list, "Register")
    if not body.get("Node"):
        raise BadRequest("Must provide node (Register.Node)")
    dc = body.get("Datacenter") or datacenter
    if dc.lower() != datacenter:
        raise NoPathToDatacenter(dc)
    node = {"ID": body.get("ID") or "", "Node": body["Node"], "Address": body.get("Address") or "",
            "Datacenter": datacenter, "TaggedAddresses": body.get("TaggedAddresses") or {},
            "Meta": body.get("NodeMeta") or {}}
    svc = body.get("Service")
    if svc is not None:
        if not svc.get("Service"):
            raise BadRequest("Must provide service name (Register.Service.Service)")
        svc = dict(svc)
        svc.setdefault("ID", svc["Service"])
    checks = []
    raw_checks = ([body["Check"]] if body.get("Check") else []) + list(body.get("Checks") or [])
    for i, chk in enumerate(raw_checks):
        if not isinstance(chk, dict):
            raise BadRequest(f"Register.Checks[{i}] must be an object")
        chk = dict(chk)
        if not (chk.get("CheckID") or chk.get("Name")):
            raise BadRequest(f"Register.Checks[{i}]: must provide CheckID or Name")
        status = chk.get("Status") or "critical"
        if status not in ("passing", "warning", "critical", "maintenance"):
            raise BadRequest(f"Register.Checks[{i}].Status {status!r} must be passing, warning or critical")
        chk["Status"] = status
        chk.setdefault("CheckID", chk.get("Name"))
        if chk.get("Definition"):
            try:
                check_definition(dict(chk["Definition"], Name=chk.get("Name") or chk["CheckID"]))
            except DefinitionError as e:
                raise BadRequest(str(e)) from None
        checks.append(chk)
    return c.Register(node=node, service=svc, checks=checks, skip_node_update=bool(body.get("SkipNodeUpdate")))


@routes.put("/v1/catalog/register")
async def register(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = want_dict(await json_body(request), "Register body")
    cmd = _register_command(body, agent.config.datacenter)
    require(await authorizer(request), register_needs(cmd))
    result = await agent.backend.apply(cmd)
    return json_response(request, bool(result))


@routes.put("/v1/catalog/deregister")
async def deregister(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = fold_keys(want_dict(await json_body(request), "Deregister body"), ("Node", "ServiceID", "CheckID",
                                                                             "Datacenter"))
    for name in ("Node", "ServiceID", "CheckID"):
        field_type(body, name, str, "Deregister")
    if not body.get("Node"):
        raise BadRequest("Must provide node (Deregister.Node)")
    await _may_deregister(agent, await authorizer(request), body)
    result = await agent.backend.apply(c.Deregister(node=body["Node"], service_id=body.get("ServiceID") or "",
                                                    check_id=body.get("CheckID") or ""))
    return json_response(request, bool(result))


async def _may_deregister(agent: Any, authz: Any, body: dict[str, Any]) -> None:
    """Consul: a service needs service:write on its name, a node check or a whole node needs node:write."""
    node, name = body["Node"], None
    if body.get("ServiceID"):
        _, row = await agent.backend.query("catalog.node_services", {"node": node})
        svc = next((s for s in (row or {}).get("Services", []) if s["ID"] == body["ServiceID"]), None)
        name = svc["Service"] if svc is not None else None
    require(authz, deregister_needs(node, name, bool(body.get("ServiceID"))))
