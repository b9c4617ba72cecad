"""/v1/discovery-chain/:service: the compiled discovery chain (Consul's shape), blocking on config entries.

GET compiles with the stored entries; POST takes Consul's overrides in the body (`OverrideProtocol`,
`OverrideConnectTimeout`, `OverrideMeshGateway`). The compiler is `connect.chain.compiler`, the same
function that checks every config-entry write, so what the API shows is what the proxies apply.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from proconsul.agent.api.body import json_body, want_dict
from proconsul.agent.api.errors import BadRequest
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common, consistency_mode
from proconsul.agent.api.responses import json_response
from proconsul.connect.chain import compiler, durations
from proconsul.connect.chain.entries import PROTOCOLS

routes = web.RouteTableDef()
OVERRIDES = ("OverrideProtocol", "OverrideConnectTimeout", "OverrideMeshGateway")
GATEWAY_MODES = ("", "none", "local", "remote")
DC_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _overrides(body: Any) -> tuple[str, float | None, str]:
    if body is None:
        return "", None, ""
    body = {k[:1].upper() + k[1:]: v for k, v in want_dict(body, "discovery chain request").items()}
    for k in body:
        if k not in OVERRIDES:
            raise BadRequest(f"Request decode failed: unknown field {k!r} (expected {', '.join(OVERRIDES)})")
    proto = body.get("OverrideProtocol") or ""
    if not isinstance(proto, str) or (proto and proto.lower() not in PROTOCOLS):
        raise BadRequest(f"OverrideProtocol: {proto!r} is not one of {', '.join(PROTOCOLS)}")
    timeout = None
    if body.get("OverrideConnectTimeout") not in (None, "", 0):
        try:
            timeout = durations.parse(body["OverrideConnectTimeout"])
        except ValueError as e:
            raise BadRequest(f"OverrideConnectTimeout: {e}") from None
        if timeout < 0:
            raise BadRequest("OverrideConnectTimeout: must not be negative")
    gateway = body.get("OverrideMeshGateway") or {}
    if not isinstance(gateway, dict):
        raise BadRequest("OverrideMeshGateway: must be an object like {\"Mode\": \"local\"}")
    gateway = {k[:1].upper() + k[1:]: v for k, v in gateway.items()}
    unknown = [k for k in gateway if k != "Mode"]
    if unknown:
        raise BadRequest(f"OverrideMeshGateway: unknown field {unknown[0]!r} (expected Mode)")
    mode = gateway.get("Mode") or ""
    if not isinstance(mode, str) or mode.lower() not in GATEWAY_MODES:
        raise BadRequest(f"OverrideMeshGateway.Mode: {mode!r} is not one of none, local, remote")
    return proto.lower(), timeout, mode.lower()


async def _chain(request: web.Request, body: Any) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    service = request.match_info["service"]
    # Another datacenter's view of the chain (an upstream with `datacenter = "dc2"`): compiled here from the
    # replicated entries, as Consul's EvaluateInDatacenter does; only the name is checked.
    compile_dc = request.query.get("compile-dc", "") or agent.config.datacenter
    if not DC_NAME.match(compile_dc):
        raise BadRequest(f"compile-dc {compile_dc!r}: a datacenter name is letters, digits, '-' and '_'")
    proto, timeout, gateway = _overrides(body)
    b = blocking_params(request)
    idx, rows = await agent.backend.query("config.list", {}, b.index, b.wait, consistency_mode(request))
    trust_domain = agent.connect.trust_domain if getattr(agent, "connect", None) is not None else ""
    chain = compiler.compile_chain(compiler.index_entries(rows), service, datacenter=compile_dc,
                                   trust_domain=trust_domain, override_protocol=proto,
                                   override_connect_timeout=timeout, override_mesh_gateway=gateway)
    return json_response(request, {"Chain": chain}, index=idx)


@routes.get("/v1/discovery-chain/{service}")
async def get(request: web.Request) -> web.Response:
    """Read the compiled discovery chain of a service (blocking on config entries)."""
    return await _chain(request, None)


@routes.post("/v1/discovery-chain/{service}")
async def post(request: web.Request) -> web.Response:
    """Compile a service's discovery chain with overrides (OverrideProtocol, OverrideConnectTimeout,
    OverrideMeshGateway)."""
    return await _chain(request, await json_body(request, required=False))
