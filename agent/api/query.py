"""/v1/query: Consul's prepared queries — create, list, read, update, delete, execute, explain.

Definitions are checked here (fields, types, durations, templates) and stored whole through Raft in the
`prepared_queries` table, keyed by ID; the state store refuses duplicate names and unknown sessions.
Execution runs on a server (catalog.prepared_query) and the agent orders the answer with its RNG.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web

from proconsul.agent.api.authz import authorizer
from proconsul.agent.api.body import fold_keys, json_body, want_dict
from proconsul.agent.api.catalog import run_query
from proconsul.agent.api.errors import BadRequest, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.near import coordinates
from proconsul.agent.api.params import check_common, flag, uint_param
from proconsul.agent.api.responses import json_response
from proconsul.agent.cluster.query_failover import fail_over
from proconsul.agent.cluster.vivaldi import sort_by_distance
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.catalog import commands as c
from proconsul.catalog import prepared_query as pq
from proconsul.catalog.errors import InvalidRequest
from proconsul.catalog.translate import QUERY_RESULT, translate_body

log = logging.getLogger("proconsul.query")
routes = web.RouteTableDef()

QUERY_FIELDS = ("ID", "Name", "Session", "Token", "Service", "DNS", "Template")
SERVICE_FIELDS = ("Service", "Failover", "IgnoreCheckIDs", "OnlyPassing", "Near", "Tags", "NodeMeta", "ServiceMeta",
                  "Connect", "Peer", "SamenessGroup", "Namespace", "Partition")
FAILOVER_FIELDS = ("NearestN", "Datacenters", "Targets")
TARGET_FIELDS = ("Datacenter", "PeerName", "Peer", "Namespace", "Partition")
TEMPLATE_FIELDS = ("Type", "Regexp", "RemoveEmptyTags")


def _obj(value: Any, where: str, names: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    out = fold_keys(value, names)
    unknown = [k for k in out if k not in names]
    if unknown:
        raise BadRequest(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(names)})")
    return out


def _str(obj: dict[str, Any], name: str, where: str) -> str:
    v = obj.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise BadRequest(f"{where}.{name} must be a string")
    return v


def _str_list(obj: dict[str, Any], name: str, where: str) -> list[str]:
    v = obj.get(name)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"{where}.{name} must be a list of strings")
    return v


def _str_map(obj: dict[str, Any], name: str, where: str) -> dict[str, str]:
    v = obj.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise BadRequest(f"{where}.{name} must be an object of strings")
    return v


def _bool(obj: dict[str, Any], name: str, where: str) -> bool:
    v = obj.get(name)
    if v is not None and not isinstance(v, bool):
        raise BadRequest(f"{where}.{name} must be true or false")
    return bool(v)


def parse_definition(raw: Any) -> dict[str, Any]:
    """A query definition as Consul's API takes it (field names in any case), in the stored shape."""
    body = _obj(want_dict(raw, "prepared query"), "Query", QUERY_FIELDS)
    svc = _obj(body.get("Service"), "Query.Service", SERVICE_FIELDS)
    failover = _obj(svc.get("Failover"), "Query.Service.Failover", FAILOVER_FIELDS)
    nearest = failover.get("NearestN") or 0
    if not isinstance(nearest, int) or isinstance(nearest, bool) or nearest < 0:
        raise BadRequest(f"Bad NearestN '{nearest}', must be >= 0")
    targets = failover.get("Targets") or []
    if not isinstance(targets, list):
        raise BadRequest("Query.Service.Failover.Targets must be a list")
    targets = [_obj(t, f"Query.Service.Failover.Targets[{i}]", TARGET_FIELDS) for i, t in enumerate(targets)]
    dcs = _str_list(failover, "Datacenters", "Query.Service.Failover")
    if targets and (nearest or dcs):
        raise BadRequest("Targets cannot be populated with NearestN or Datacenters")
    service = {
        "Service": _str(svc, "Service", "Query.Service"),
        "Failover": {"NearestN": nearest, "Datacenters": dcs or None, "Targets": targets or None},
        "IgnoreCheckIDs": _str_list(svc, "IgnoreCheckIDs", "Query.Service") or None,
        "OnlyPassing": _bool(svc, "OnlyPassing", "Query.Service"),
        "Near": _str(svc, "Near", "Query.Service"),
        "Tags": _str_list(svc, "Tags", "Query.Service") or None,
        "NodeMeta": _str_map(svc, "NodeMeta", "Query.Service") or None,
        "ServiceMeta": _str_map(svc, "ServiceMeta", "Query.Service") or None,
        "Connect": {"Enabled": True} if _bool(svc, "Connect", "Query.Service") else {},
        "Peer": _str(svc, "Peer", "Query.Service"),
        "SamenessGroup": _str(svc, "SamenessGroup", "Query.Service"),
    }
    if service["Peer"] or service["SamenessGroup"]:
        raise BadRequest("Query.Service.Peer/SamenessGroup: cluster peering is not supported by this agent")
    if not service["Service"]:
        raise BadRequest("Must provide a Service name to query")
    dns = _obj(body.get("DNS"), "Query.DNS", ("TTL",))
    ttl = _str(dns, "TTL", "Query.DNS")
    if ttl:
        try:
            seconds = parse_duration(ttl)
        except DurationError as e:
            raise BadRequest(f"Bad DNS TTL '{ttl}': {e}") from None
        if seconds < 0:
            raise BadRequest(f"DNS TTL '{ttl}', must be >=0")
    template = _obj(body.get("Template"), "Query.Template", TEMPLATE_FIELDS)
    query = {
        "Name": _str(body, "Name", "Query"),
        "Session": _str(body, "Session", "Query"),
        "Token": _str(body, "Token", "Query"),
        "Template": {"Type": _str(template, "Type", "Query.Template"),
                     "Regexp": _str(template, "Regexp", "Query.Template"),
                     "RemoveEmptyTags": _bool(template, "RemoveEmptyTags", "Query.Template")},
        "Service": service,
        "DNS": {"TTL": ttl},
    }
    try:
        pq.check_template(query)
    except InvalidRequest as e:
        raise BadRequest(str(e)) from None
    return query


async def _existing(request: web.Request, qid: str) -> dict[str, Any]:
    _, rows = await request.app[AGENT].backend.query("query.get", {"id": qid})
    if not rows:
        raise NotFoundHTTP(pq.NOT_FOUND)
    return rows[0]


@routes.post("/v1/query")
async def create(request: web.Request) -> web.Response:
    check_common(request)
    query = parse_definition(await json_body(request))
    (await authorizer(request)).require("query", query.get("Name") or "", "write")
    query["ID"] = str(uuid.uuid4())
    await request.app[AGENT].backend.apply(c.TableSet(table=pq.TABLE, key=query["ID"], row=query))
    return json_response(request, {"ID": query["ID"]})


@routes.get("/v1/query")
async def list_queries(request: web.Request) -> web.Response:
    return await run_query(request, "query.list", {})


@routes.get("/v1/query/{id}")
async def read(request: web.Request) -> web.Response:
    check_common(request)
    idx, rows = await request.app[AGENT].backend.query("query.get", {"id": request.match_info["id"]})
    if not rows:
        raise NotFoundHTTP(pq.NOT_FOUND)
    (await authorizer(request)).require("query", rows[0].get("Name") or "", "read")
    return json_response(request, rows, index=idx)


@routes.put("/v1/query/{id}")
async def update(request: web.Request) -> web.Response:
    check_common(request)
    qid = request.match_info["id"]
    query = parse_definition(await json_body(request))
    authz = await authorizer(request)
    authz.require("query", (await _existing(request, qid)).get("Name") or "", "write")
    authz.require("query", query.get("Name") or "", "write")
    query["ID"] = qid
    await request.app[AGENT].backend.apply(c.TableSet(table=pq.TABLE, key=qid, row=query))
    return web.Response(status=200)


@routes.delete("/v1/query/{id}")
async def delete(request: web.Request) -> web.Response:
    check_common(request)
    qid = request.match_info["id"]
    (await authorizer(request)).require("query", (await _existing(request, qid)).get("Name") or "", "write")
    await request.app[AGENT].backend.apply(c.TableDelete(table=pq.TABLE, key=qid))
    return web.Response(status=200)


@routes.get("/v1/query/{id}/execute")
async def execute(request: web.Request) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    limit = uint_param(request, "limit")
    idx, result = await agent.backend.query("query.execute", {"query": request.match_info["id"],
                                                              "connect": flag(request, "connect")})
    if not result["Nodes"]:
        result = await _failover(agent, request.match_info["id"], flag(request, "connect"), result)
    near = request.query.get("near") or result.pop("Near", "")
    result.pop("Near", None)
    if near == "_agent":
        near = agent.config.node_name
    elif near == "_ip":  # the node whose address sent the request
        peer = request.headers.get("X-Forwarded-For", "").split(",")[0].strip() or (request.remote or "")
        near = next((n["Node"]["Node"] for n in result["Nodes"] if n["Node"]["Address"] == peer), "")
    coords = await coordinates(agent) if near else {}
    result["Nodes"] = pq.order(result["Nodes"], agent.rng, near, limit,
                               lambda rows: sort_by_distance(rows, lambda r: r["Node"]["Node"], coords, near))
    if agent.config.translate_wan_addrs and (result.get("Datacenter") or agent.config.datacenter) != \
            agent.config.datacenter:  # a failover datacenter answered: its addresses as seen from here
        translate_body(QUERY_RESULT, result)
    return json_response(request, result, index=idx)


async def _failover(agent: Any, qid: str, connect: bool, local: dict[str, Any]) -> dict[str, Any]:
    """No healthy instance here: the query's failover datacenters (`query_failover`); the first with
    instances answers, with `Datacenter` and `Failovers` (datacenters tried) set."""
    _, explained = await agent.backend.query("query.explain", {"query": qid})
    query = (explained or {}).get("Query") or {}
    result = await fail_over(agent.cluster, agent.config.datacenter, query, connect)
    if result.answer is not None:
        return dict(result.answer, Failovers=result.tried, Near=local.get("Near", ""))
    return dict(local, Failovers=result.tried)


@routes.get("/v1/query/{id}/explain")
async def explain(request: web.Request) -> web.Response:
    check_common(request)
    idx, result = await request.app[AGENT].backend.query("query.explain", {"query": request.match_info["id"]})
    if result is None:
        raise NotFoundHTTP(pq.NOT_FOUND)
    return json_response(request, result, index=idx)
