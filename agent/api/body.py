"""Request bodies: JSON read with a size limit, Consul's case-insensitive keys, and typed fields with errors
that name the field."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proconsul.agent.api.errors import BadRequest, TooLarge


async def json_body(request: web.Request, *, required: bool = True, max_bytes: int = 4 << 20) -> Any:
    body = await request.read()
    if len(body) > max_bytes:
        raise TooLarge(f"Request body too large: {len(body)} bytes (limit {max_bytes})")
    if not body.strip():
        if required:
            raise BadRequest("Request decode failed: empty body, expected JSON")
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"Request decode failed: invalid JSON: {e}") from None


def fold_keys(obj: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Match keys to Consul's field names case-insensitively, as Go's JSON decoder does
    (py-consul sends `name`, `lockdelay`, …). Unknown keys are kept as they are."""
    table = {n.lower(): n for n in names}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = table.get(k.lower(), k) if isinstance(k, str) else k
        if name not in out or k == name:
            out[name] = v
    return out


def want_dict(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadRequest(f"Request decode failed: {what} must be a JSON object")
    return obj


def field_type(obj: dict[str, Any], name: str, types: type | tuple[type, ...], what: str) -> Any:
    """Check the type of an optional field; the error names the field and the expected type."""
    v = obj.get(name)
    if v is None:
        return None
    ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in _as_tuple(types))
    if not ok:
        expected = " or ".join(_type_name(t) for t in _as_tuple(types))
        raise BadRequest(f"Request decode failed: {what}.{name} must be {expected}, got {_type_name(type(v))}")
    return v


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _type_name(t: type) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list",
            dict: "an object", type(None): "null"}.get(t, t.__name__)
