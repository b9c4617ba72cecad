"""/v1/config: Consul's configuration entries (service-defaults, proxy-defaults, service-intentions, …).

Entries are stored whole in the replicated `config_entries` table under "<Kind>/<Name>". Kinds whose
meaning the agent implements are validated (service-intentions by connect/); the others are stored
as given, as Consul would, so tooling that writes them keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from proconsul.agent.acl import filters as acl_filter
from proconsul.agent.acl.enforce import Need, config_entry_right, require
from proconsul.agent.api.authz import FILTERED_HEADER, authorizer
from proconsul.agent.api.body import json_body, want_dict
from proconsul.agent.api.catalog import run_query
from proconsul.agent.api.errors import BadRequest, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import check_common, primary_owned, uint_param
from proconsul.agent.api.responses import json_response
from proconsul.catalog import commands as c
from proconsul.connect import intentions
from proconsul.connect.chain import entries
from proconsul.connect.errors import InvalidIntention

routes = web.RouteTableDef()

KINDS = ("service-defaults", "proxy-defaults", "service-router", "service-splitter", "service-resolver",
         "ingress-gateway", "terminating-gateway", "service-intentions", "mesh", "exported-services",
         "api-gateway", "http-route", "tcp-route", "inline-certificate", "bound-api-gateway", "jwt-provider",
         "sameness-group", "control-plane-request-limit", "rate-limit-ip", "registration")
FIXED_NAMES = {"proxy-defaults": "global", "mesh": "mesh"}
TABLE = "config_entries"

def _service_intentions(entry: dict[str, Any]) -> dict[str, Any]:
    try:
        return intentions.validate_config_entry(entry)
    except InvalidIntention as e:
        raise BadRequest(f"Invalid service-intentions entry: {e}") from None


# Kind → function that validates and normalizes an entry of that kind.
Validator = Callable[[dict[str, Any]], dict[str, Any]]
VALIDATORS: dict[str, Validator] = {"service-intentions": _service_intentions,
                                    **{kind: entries.validate for kind in entries.KINDS}}


def _fold_keys(entry: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys in Consul's PascalCase, whatever case they came in (config files use snake_case:
    `kind`, `name`, `protocol`, `mesh_gateway` → `Kind`, `Name`, `Protocol`, `MeshGateway`). Nested maps
    such as proxy-defaults' `Config` are opaque and keep their keys."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        pascal = k if k[:1].isupper() else "".join(part[:1].upper() + part[1:] for part in k.split("_"))
        out[pascal] = v
    return out


def validate_entry(raw: Any) -> dict[str, Any]:
    entry = _fold_keys(want_dict(raw, "config entry"))
    kind = entry.get("Kind")
    if not isinstance(kind, str) or not kind:
        raise BadRequest("Request decode failed: config entry is missing Kind")
    kind = kind.lower()
    if kind not in KINDS:
        raise BadRequest(f"invalid config entry kind: {kind!r}")
    entry["Kind"] = kind
    name = entry.get("Name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"Name is required for a {kind} config entry")
    fixed = FIXED_NAMES.get(kind)
    if fixed and name != fixed:
        raise BadRequest(f"invalid name ({name!r}), only {fixed!r} is supported for {kind}")
    validator = VALIDATORS.get(kind)
    if validator is not None:
        entry = validator(entry)
    entry.setdefault("Meta", None)
    return entry


async def put_entry(agent: Any, entry: dict[str, Any], cas: int | None = None) -> bool:
    row = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
    # What the write does to other entries (a subset that no longer exists, a router on a service turned tcp,
    # a loop) is checked inside the FSM's apply (agent/connect/entry_graph.py), in log order.
    return bool(await agent.backend.apply(c.TableSet(table=TABLE, key=f"{row['Kind']}/{row['Name']}", row=row,
                                                     cas=cas)))


@routes.put("/v1/config")
async def put(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    entry = validate_entry(await json_body(request))
    authz = await authorizer(request)
    require(authz, [Need("config", f"{entry['Kind']}/{entry['Name']}")])
    cas = uint_param(request, "cas") if "cas" in request.query else None
    return json_response(request, await put_entry(request.app[AGENT], entry, cas))


@routes.get("/v1/config/{kind}")
async def list_kind(request: web.Request) -> web.Response:
    kind = request.match_info["kind"].lower()
    if kind not in KINDS:
        raise BadRequest(f"invalid config entry kind: {kind!r}")
    authz = await authorizer(request)
    if request.app[AGENT].acl is None:
        return await run_query(request, "config.list", {"kind": kind})
    check_common(request)
    idx, rows = await request.app[AGENT].backend.query("config.list", {"kind": kind})
    rows, dropped = acl_filter.filter_rows(rows, lambda e: config_entry_right(authz, e["Kind"], e["Name"], "read"))
    return json_response(request, rows, index=idx, headers={FILTERED_HEADER: "true"} if dropped else None)


@routes.get("/v1/config/{kind}/{name}")
async def get(request: web.Request) -> web.Response:
    kind, name = request.match_info["kind"].lower(), request.match_info["name"]
    if kind not in KINDS:
        raise BadRequest(f"invalid config entry kind: {kind!r}")
    check_common(request)
    idx, row = await request.app[AGENT].backend.query("config.get", {"kind": kind, "name": name})
    if row is None:
        raise NotFoundHTTP(f'Config entry not found for "{kind}" / "{name}"')
    return json_response(request, row, index=idx)


@routes.delete("/v1/config/{kind}/{name}")
async def delete(request: web.Request) -> web.Response:
    check_common(request)
    primary_owned(request)
    kind, name = request.match_info["kind"].lower(), request.match_info["name"]
    if kind not in KINDS:
        raise BadRequest(f"invalid config entry kind: {kind!r}")
    cas = uint_param(request, "cas") if "cas" in request.query else None
    ok = await request.app[AGENT].backend.apply(c.TableDelete(table=TABLE, key=f"{kind}/{name}", cas=cas))
    return json_response(request, bool(ok) if cas is not None else {})
