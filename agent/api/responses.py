"""Responses in Consul's shape: JSON bodies (orjson) and the X-Consul-* headers of blocking reads."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import consistency_mode


def dumps(data: Any, pretty: bool = False) -> bytes:
    return orjson.dumps(data, default=_default, option=orjson.OPT_INDENT_2 if pretty else 0)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(obj).decode()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def json_response(request: web.Request, data: Any, *, index: int | None = None, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    h = consul_headers(request, index)
    if headers:
        h.update(headers)
    return web.Response(body=dumps(data, "pretty" in request.query), status=status,
                        content_type="application/json", headers=h)


def consul_headers(request: web.Request, index: int | None) -> dict[str, str]:
    h: dict[str, str] = {}
    if index is not None:
        agent = request.app[AGENT]
        h["X-Consul-Index"] = str(max(index, 1))
        h["X-Consul-KnownLeader"] = "true" if agent.known_leader() else "false"
        h["X-Consul-LastContact"] = str(int(agent.last_contact() * 1000))
        h["X-Consul-Effective-Consistency"] = consistency_mode(request)
    return h
