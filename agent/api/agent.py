"""/v1/agent/*: this agent's own services, checks, membership and lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from aiohttp import web

from proconsul.agent.acl import filters as acl_filter
from proconsul.agent.api.acl_guards import require_check
from proconsul.agent.api.agent_self import host_body, self_body, version_body
from proconsul.agent.api.authz import authorizer, effective_token
from proconsul.agent.api.body import field_type, fold_keys, json_body, want_dict
from proconsul.agent.api.errors import BadRequest, HTTPError, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common, filter_rows, flag
from proconsul.agent.api.responses import dumps, json_response
from proconsul.agent.local import sidecar
from proconsul.agent.local.definitions import DefinitionError, check_definition, service_definition
from proconsul.agent.observe.logs import LEVELS, level_number
from proconsul.agent.observe.telemetry import as_json, as_prometheus

routes = web.RouteTableDef()


def _unknown_service(sid: str) -> NotFoundHTTP:
    return NotFoundHTTP(f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.')


def _unknown_check(cid: str) -> NotFoundHTTP:
    return NotFoundHTTP(f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')


@routes.get("/v1/agent/self")
async def self_(request: web.Request) -> web.Response:
    return json_response(request, self_body(request.app[AGENT]))


@routes.get("/v1/agent/host")
async def host(request: web.Request) -> web.Response:
    return json_response(request, host_body())


@routes.get("/v1/agent/version")
async def version(request: web.Request) -> web.Response:
    return json_response(request, version_body())


@routes.get("/v1/agent/members")
async def members(request: web.Request) -> web.Response:
    rows = request.app[AGENT].members(wan=flag(request, "wan"))
    authz = await authorizer(request)
    if not authz.reads_all("node"):
        rows, _ = acl_filter.filter_rows(rows, lambda m: authz.allowed("node", m["Name"], "read"))
    return json_response(request, rows)


@routes.get("/v1/agent/services")
async def services(request: web.Request) -> web.Response:
    check_common(request)
    svcs = request.app[AGENT].local.services()
    authz = await authorizer(request)
    if not authz.reads_all("service"):
        svcs = {k: v for k, v in svcs.items() if authz.allowed("service", v["Service"], "read")}
    return json_response(request, filter_rows(request, svcs))


def _content_hash(svc: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(svc)).hexdigest()[:16]


@routes.get("/v1/agent/service/{id}")
async def service(request: web.Request) -> web.Response:
    """One local service with its ContentHash; `?hash=` blocks until the service changes."""
    agent = request.app[AGENT]
    sid = request.match_info["id"]
    b = blocking_params(request)
    svc = agent.local.service(sid)
    want = request.query.get("hash")
    if want and svc is not None:
        deadline = agent.loop_time() + b.wait
        while svc is not None and _content_hash(svc) == want and agent.loop_time() < deadline:
            await agent.local_changed(deadline - agent.loop_time())
            svc = agent.local.service(sid)
    if svc is None:
        raise _unknown_service(sid)
    h = _content_hash(svc)
    return json_response(request, dict(svc, ContentHash=h), headers={"X-Consul-ContentHash": h})


@routes.get("/v1/agent/checks")
async def checks(request: web.Request) -> web.Response:
    check_common(request)
    checks = request.app[AGENT].local.checks()
    authz = await authorizer(request)
    if not (authz.reads_all("service") and authz.reads_all("node")):
        checks = {k: v for k, v in checks.items() if acl_filter.check_ok(authz, v)}
    return json_response(request, filter_rows(request, checks))


@routes.put("/v1/agent/service/register")
async def register_service(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await json_body(request)
    try:
        defn = service_definition(body, "Service")
    except DefinitionError as e:
        raise BadRequest(str(e)) from None
    authz = await authorizer(request)
    authz.require("service", defn["Name"], "write")
    dest = (defn.get("Proxy") or {}).get("DestinationServiceName")
    if defn.get("Kind") == "connect-proxy" and dest:
        authz.require("service", dest, "write")  # a proxy acts for its destination (Consul)
    side = (defn.get("Connect") or {}).get("SidecarService")
    if isinstance(side, dict):  # the sidecar it asks for is a service of its own
        authz.require("service", side.get("Name") or side.get("name") or f"{defn['Name']}-sidecar-proxy", "write")
    if agent.acl is not None:  # anti-entropy syncs the service with the token that registered it (Consul)
        agent.service_tokens[defn["ID"]] = agent.service_tokens[sidecar.sidecar_id(defn["ID"])] = \
            effective_token(request)
    await agent.register_service(defn, replace_existing_checks=flag(request, "replace-existing-checks"))
    return web.Response(status=200)


@routes.put("/v1/agent/service/deregister/{id}")
async def deregister_service(request: web.Request) -> web.Response:
    sid = request.match_info["id"]
    if not await request.app[AGENT].deregister_service(sid):
        raise _unknown_service(sid)
    return web.Response(status=200)


@routes.put("/v1/agent/check/register")
async def register_check(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await json_body(request)
    try:
        defn = check_definition(body, "Check")
    except DefinitionError as e:
        raise BadRequest(str(e)) from None
    require_check(await authorizer(request), agent, defn.get("ServiceID") or "", "write")
    await agent.register_check(defn)
    return web.Response(status=200)


@routes.put("/v1/agent/check/deregister/{id}")
async def deregister_check(request: web.Request) -> web.Response:
    cid = request.match_info["id"]
    if not await request.app[AGENT].deregister_check(cid):
        raise _unknown_check(cid)
    return web.Response(status=200)


async def _ttl_update(request: web.Request, status: str, output: str) -> web.Response:
    agent = request.app[AGENT]
    cid = request.match_info["id"]
    if agent.local.check(cid) is None:
        raise _unknown_check(cid)
    agent.update_ttl_check(cid, status, output)
    return web.Response(status=200)


@routes.put("/v1/agent/check/pass/{id}")
async def check_pass(request: web.Request) -> web.Response:
    return await _ttl_update(request, "passing", request.query.get("note", ""))


@routes.put("/v1/agent/check/warn/{id}")
async def check_warn(request: web.Request) -> web.Response:
    return await _ttl_update(request, "warning", request.query.get("note", ""))


@routes.put("/v1/agent/check/fail/{id}")
async def check_fail(request: web.Request) -> web.Response:
    return await _ttl_update(request, "critical", request.query.get("note", ""))


@routes.put("/v1/agent/check/update/{id}")
async def check_update(request: web.Request) -> web.Response:
    body = fold_keys(want_dict(await json_body(request), "CheckUpdate"), ("Status", "Output"))
    field_type(body, "Status", str, "CheckUpdate")
    field_type(body, "Output", str, "CheckUpdate")
    status = body.get("Status") or ""
    if status not in ("passing", "warning", "critical"):
        raise BadRequest(f"Invalid check status: {status!r} (use passing, warning or critical)")
    return await _ttl_update(request, status, body.get("Output") or "")


def _enable_param(request: web.Request) -> bool:
    raw = request.query.get("enable")
    if raw is None or raw == "":
        raise BadRequest("Missing value for enable")
    if raw.lower() not in ("true", "false"):
        raise BadRequest(f"Invalid value for enable: {raw!r} (use true or false)")
    return raw.lower() == "true"


@routes.put("/v1/agent/service/maintenance/{id}")
async def service_maintenance(request: web.Request) -> web.Response:
    enable = _enable_param(request)
    sid = request.match_info["id"]
    if not request.app[AGENT].local.set_service_maintenance(sid, enable, request.query.get("reason", "")):
        raise NotFoundHTTP(f"No service registered with ID {sid!r}")
    return web.Response(status=200)


@routes.put("/v1/agent/maintenance")
async def node_maintenance(request: web.Request) -> web.Response:
    enable = _enable_param(request)
    request.app[AGENT].local.set_node_maintenance(enable, request.query.get("reason", ""))
    return web.Response(status=200)


def _aggregate(agent: Any, sid: str) -> tuple[str, dict[str, Any]]:
    from proconsul.catalog.store import aggregate_status

    svc = agent.local.service(sid)
    checks = agent.local.service_checks(sid) + agent.local.node_checks()
    return aggregate_status(checks), {"ID": svc["ID"], "Service": svc, "AggregatedStatus": None}


_HEALTH_STATUS = {"passing": 200, "warning": 429, "critical": 503, "maintenance": 503}


def _health_response(request: web.Request, entries: list[tuple[str, dict[str, Any]]], single: bool
                     ) -> web.Response:
    worst = "passing"
    from proconsul.catalog.store import _SEVERITY

    body = []
    for status, entry in entries:
        entry["AggregatedStatus"] = status
        body.append(entry)
        if _SEVERITY[status] > _SEVERITY[worst]:
            worst = status
    if "format" in request.query and request.query["format"] == "text":
        return web.Response(status=_HEALTH_STATUS[worst], text=worst)
    return json_response(request, body[0] if single else body, status=_HEALTH_STATUS[worst])


@routes.get("/v1/agent/health/service/id/{id}")
async def health_by_id(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    sid = request.match_info["id"]
    if agent.local.service(sid) is None:
        raise NotFoundHTTP(f"ServiceId {sid} not found")
    return _health_response(request, [_aggregate(agent, sid)], single=True)


@routes.get("/v1/agent/health/service/name/{name}")
async def health_by_name(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = request.match_info["name"]
    ids = [sid for sid, svc in agent.local.services().items() if svc["Service"] == name]
    if not ids:
        raise NotFoundHTTP(f"ServiceName {name} Not Found")
    return _health_response(request, [_aggregate(agent, sid) for sid in ids], single=False)


@routes.put("/v1/agent/reload")
async def reload(request: web.Request) -> web.Response:
    await request.app[AGENT].reload()
    return web.Response(status=200)


@routes.put("/v1/agent/leave")
async def leave(request: web.Request) -> web.Response:
    request.app[AGENT].request_leave()
    return web.Response(status=200)


@routes.put("/v1/agent/force-leave/{node}")
async def force_leave(request: web.Request) -> web.Response:
    await request.app[AGENT].force_leave(request.match_info["node"], wan=flag(request, "wan"),
                                           prune=flag(request, "prune"))
    return web.Response(status=200)


@routes.put("/v1/agent/join/{address}")
async def join(request: web.Request) -> web.Response:
    await request.app[AGENT].join(request.match_info["address"], wan=flag(request, "wan"))
    return web.Response(status=200)


@routes.get("/v1/agent/monitor")
async def monitor(request: web.Request) -> web.StreamResponse:
    """Consul's log stream: lines at `loglevel` (default info) and above, `logjson` for JSON lines, until the
    client goes away. A slow reader loses lines rather than growing the agent's memory."""
    agent = request.app[AGENT]
    level_name = request.query.get("loglevel", "info").lower()
    if level_name not in LEVELS:
        raise BadRequest(f"Unknown log level: {request.query.get('loglevel')}")
    if agent.log_monitor is None:
        raise HTTPError("the agent is not running its log monitor", 500)
    sub = agent.log_monitor.subscribe(level_number(level_name), flag(request, "logjson"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    try:
        while True:
            line = await sub.queue.get()
            await resp.write((line + "\n").encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        agent.log_monitor.unsubscribe(sub)
    return resp


METRICS_STREAM_INTERVAL = 10.0  # seconds: go-metrics' interval, what Consul's stream flushes at


@routes.get("/v1/agent/metrics/stream")
async def metrics_stream(request: web.Request) -> web.StreamResponse:
    """Consul's metrics stream (what `consul debug` captures): the JSON summary of /v1/agent/metrics, one per
    line, now and then every interval, until the client goes away."""
    agent = request.app[AGENT]
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        while True:
            await resp.write(dumps(as_json(agent, agent.telemetry), False) + b"\n")
            await asyncio.sleep(METRICS_STREAM_INTERVAL)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


@routes.get("/v1/agent/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Consul's metrics: JSON (Gauges/Counters/Samples), or Prometheus text with `?format=prometheus`."""
    agent = request.app[AGENT]
    fmt = request.query.get("format", "")
    if fmt == "prometheus":
        return web.Response(text=as_prometheus(agent, agent.telemetry), content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})
    if fmt:
        raise BadRequest(f"Invalid format {fmt!r}: use format=prometheus or leave it out for JSON")
    return json_response(request, as_json(agent, agent.telemetry))
