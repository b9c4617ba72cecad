"""The OpenAPI document of the HTTP API, generated from the agent's own route table.

Paths and methods come from the aiohttp router (so the document cannot miss a route), summaries from the
handlers' docstrings, path parameters from the patterns; the query parameters Consul's API takes are
added by the families they belong to (reads, blocking reads, KV, …). `docs/openapi.yaml` is this
output (JSON is valid YAML); a test regenerates it and fails when they differ.

    python -m proconsul.agent.api.openapi > docs/openapi.yaml
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from aiohttp import web

from proconsul.agent.version import CONSUL_COMPAT_VERSION, VERSION

_STR = {"type": "string"}
_BOOL_FLAG = {"type": "boolean", "description": "present (with or without a value) means true"}
READ_PARAMS = {"dc": _STR, "stale": _BOOL_FLAG, "consistent": _BOOL_FLAG, "pretty": _BOOL_FLAG}
BLOCKING_PARAMS = {"index": {"type": "integer", "minimum": 0}, "wait": {"type": "string", "example": "30s"}}
FILTER_PARAMS = {"filter": {"type": "string", "description": "Consul's filter expression"}}
# Query parameters of particular routes (by path prefix), beyond the families above.
EXTRA_PARAMS: dict[str, dict[str, Any]] = {
    "/v1/kv/": {"recurse": _BOOL_FLAG, "keys": _BOOL_FLAG, "raw": _BOOL_FLAG, "separator": _STR,
                "cas": {"type": "integer", "minimum": 0}, "flags": {"type": "integer", "minimum": 0},
                "acquire": _STR, "release": _STR},
    "/v1/health/service/": {"passing": _BOOL_FLAG, "tag": _STR, "node-meta": _STR, "peer": _STR},
    "/v1/health/connect/": {"passing": _BOOL_FLAG, "tag": _STR},
    "/v1/health/ingress/": {"passing": _BOOL_FLAG},
    "/v1/catalog/service/": {"tag": _STR, "node-meta": _STR},
    "/v1/catalog/nodes": {"node-meta": _STR},
    "/v1/catalog/services": {"node-meta": _STR},
    "/v1/agent/members": {"wan": _BOOL_FLAG, "segment": _STR},
    "/v1/agent/join/": {"wan": _BOOL_FLAG},
    "/v1/agent/force-leave/": {"wan": _BOOL_FLAG, "prune": _BOOL_FLAG},
    "/v1/agent/monitor": {"loglevel": _STR, "logjson": _BOOL_FLAG},
    "/v1/agent/metrics": {"format": {"type": "string", "enum": ["prometheus"]}},
    "/v1/agent/service/register": {"replace-existing-checks": _BOOL_FLAG},
    "/v1/agent/service/maintenance/": {"enable": {"type": "boolean"}, "reason": _STR},
    "/v1/agent/maintenance": {"enable": {"type": "boolean"}, "reason": _STR},
    "/v1/connect/intentions/match": {"by": {"type": "string", "enum": ["source", "destination"]}, "name": _STR},
    "/v1/connect/intentions/check": {"source": _STR, "destination": _STR},
    "/v1/connect/intentions/exact": {"source": _STR, "destination": _STR},
    "/v1/event/fire/": {"node": _STR, "service": _STR, "tag": _STR},
    "/v1/event/list": {"name": _STR},
    "/v1/config": {"cas": {"type": "integer", "minimum": 0}},
    "/v1/connect/ca/roots": {"pem": {"type": "boolean", "description": "answer a PEM bundle of every root and "
                                                                        "intermediate (Go's ParseBool values)"}},
    "/v1/discovery-chain/": {"compile-dc": _STR},
    "/v1/operator/raft/peer": {"id": _STR, "address": _STR},
    "/v1/agent/debug/profile": {"seconds": {"type": "integer", "minimum": 1, "maximum": 60}},
    "/v1/internal/ui/intention-check": {"source": _STR, "destination": _STR, "path": _STR, "method": _STR,
                                        "header": {"type": "string", "description": "Name:value (repeatable)"}},
    "/v1/internal/ui/validate": {"format": {"type": "string", "enum": ["hcl", "json"]}},
}
FILTERED = ("/v1/catalog/nodes", "/v1/catalog/services", "/v1/catalog/service/", "/v1/catalog/connect/",
            "/v1/catalog/node/", "/v1/catalog/node-services/", "/v1/health/", "/v1/agent/services",
            "/v1/agent/checks", "/v1/connect/intentions")
UNBLOCKED = ("/v1/agent/", "/v1/status/", "/v1/operator/", "/v1/snapshot", "/v1/internal/ui/intention-check",
             "/v1/internal/ui/validate", "/v1/catalog/datacenters", "/v1/coordinate/")


def _operation(method: str, path: str, handler: Any) -> dict[str, Any]:
    doc = (getattr(handler, "__doc__", None) or "").strip()
    name = getattr(handler, "__name__", "handler")
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}",
        "summary": doc.splitlines()[0] if doc else name.replace("_", " "),
        "tags": [path.split("/")[2] if path.count("/") >= 2 else "v1"],
        "responses": {"200": {"description": "OK"}, "400": {"description": "bad input: the message names the field"},
                      "404": {"description": "not found"}},
    }
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
              for p in re.findall(r"{(\w+)", path)]
    query: dict[str, Any] = {}
    if method == "GET":
        query.update(READ_PARAMS)
        if not path.startswith(UNBLOCKED) or path.startswith("/v1/agent/service/"):
            query.update(BLOCKING_PARAMS)
    else:
        query["dc"] = _STR
    if method == "GET" and path.startswith(FILTERED):
        query.update(FILTER_PARAMS)
    for prefix, extra in EXTRA_PARAMS.items():
        if path.startswith(prefix.rstrip("/")):
            query.update(extra)
    params += [{"name": k, "in": "query", "required": False, "schema": v} for k, v in sorted(query.items())]
    if params:
        op["parameters"] = params
    if method in ("PUT", "POST"):
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {}}}}
    return op


def spec(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if not path.startswith("/v1/"):
            continue
        path = re.sub(r"{(\w+):[^}]*}", r"{\1}", path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, path, route.handler)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Proconsul HTTP API (Consul's v1 API)", "version": VERSION,
                 "description": f"Consul's v1 HTTP API as Proconsul serves it (compatible with Consul "
                                f"{CONSUL_COMPAT_VERSION}). Generated from the agent's route table."},
        "servers": [{"url": "http://127.0.0.1:8500"}],
        "paths": {p: paths[p] for p in sorted(paths)},
    }


def document() -> str:
    """The document as text, built from an agent's routes (without starting it)."""
    from proconsul.agent.agent import Agent
    from proconsul.agent.api.app import build_app
    from proconsul.agent.config.load import finalize
    from proconsul.agent.config.model import AgentConfig

    agent = Agent(finalize(AgentConfig(dev=True, node_name="openapi", node_id="00000000-0000-0000-0000-000000000000")))
    return json.dumps(spec(build_app(agent)), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
