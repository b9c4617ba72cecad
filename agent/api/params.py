"""Shared pieces of the HTTP API: errors and their one translation to statuses, query parameters,
request bodies, and Consul's response headers."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proconsul.agent.cluster.errors import ClusterError
from proconsul.agent.cluster.rpc import NoLeader, RPCError
from proconsul.agent.cluster.server import DEFAULT_WAIT, MAX_WAIT, NotLeaderError
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.catalog.errors import CatalogError, Conflict, InvalidRequest, NotFound, UnknownCommand
from proconsul.catalog.filter import FilterError, Predicate, compile_filter
from proconsul.connect.errors import ConnectError
from proconsul.consensus.errors import LeadershipLost, RaftError

log = logging.getLogger("proconsul.http")


class HTTPError(Exception):
    """An error a handler raises on purpose: becomes `status` with a one-line plain-text body."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(HTTPError):
    status = 400


class NotFoundHTTP(HTTPError):
    status = 404


class TooLarge(HTTPError):
    status = 413


def status_for(exc: BaseException) -> tuple[int, str]:
    """The one place errors of every component become HTTP statuses and messages."""
    if isinstance(exc, HTTPError):
        return exc.status, str(exc)
    if isinstance(exc, InvalidRequest | UnknownCommand):
        return 400, str(exc)
    if isinstance(exc, NotFound):
        return 404, str(exc)
    if isinstance(exc, Conflict):
        return 409, str(exc)
    if isinstance(exc, CatalogError):
        return 400, str(exc)
    if isinstance(exc, NotLeaderError | NoLeader):
        return 500, "No cluster leader"
    if isinstance(exc, ClusterError):
        return 400, str(exc)
    if isinstance(exc, LeadershipLost):
        return 500, f"leadership lost while committing log: {exc}"
    if isinstance(exc, RaftError | RPCError):
        return 500, str(exc)
    if isinstance(exc, ConnectError):
        return 400, str(exc)
    return 500, "internal error"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_boundary(handler: Handler) -> Handler:
    """Wrap a route handler so every error leaves as a status and a one-line message (via status_for).

    Applied to each route when the app is built rather than as aiohttp middleware, which would
    build a wrapper per request on the hot path.
    """

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            status, message = status_for(exc)
            if status >= 500:
                log.error("%s %s failed: %s", request.method, request.path, exc,
                          exc_info=message == "internal error")
            return web.Response(status=status, text=message + "\n", content_type="text/plain")

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded


# ---------------------------------------------------------------------- responses
def dumps(data: Any, pretty: bool = False) -> bytes:
    return orjson.dumps(data, default=_default, option=orjson.OPT_INDENT_2 if pretty else 0)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        import base64

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
        agent = request.app["agent"]
        h["X-Consul-Index"] = str(max(index, 1))
        h["X-Consul-KnownLeader"] = "true" if agent.known_leader() else "false"
        h["X-Consul-LastContact"] = str(int(agent.last_contact() * 1000))
        h["X-Consul-Effective-Consistency"] = consistency_mode(request)
    return h


# ---------------------------------------------------------------------- query parameters
@dataclass(slots=True)
class Blocking:
    index: int
    wait: float


def blocking_params(request: web.Request, rng: random.Random | None = None) -> Blocking:
    """`?index=N&wait=D` as Consul reads them: default wait 5m, at most 10m, plus up to wait/16 jitter."""
    q = request.query
    raw = q.get("index", "")
    index = 0
    if raw:
        try:
            index = int(raw)
            if index < 0:
                raise ValueError
        except ValueError:
            raise BadRequest(f"Invalid index: {raw!r} is not a non-negative integer") from None
    wait = DEFAULT_WAIT
    if "wait" in q:
        try:
            wait = parse_duration(q["wait"])
        except DurationError:
            raise BadRequest(f"Invalid wait time: {q['wait']!r} (use e.g. \"10s\", \"5m\")") from None
        if wait < 0:
            raise BadRequest("Invalid wait time: must not be negative")
    wait = min(wait, MAX_WAIT)
    wait += (rng or random).random() * wait / 16
    return Blocking(index, wait)


def consistency_mode(request: web.Request) -> str:
    q = request.query
    if "stale" in q:
        return "stale"
    if "consistent" in q:
        return "consistent"
    return "leader"


def check_common(request: web.Request) -> None:
    """Parameters every read accepts: dc must be ours (no federation yet), stale xor consistent."""
    q = request.query
    if "stale" in q and "consistent" in q:
        raise BadRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
    dc = q.get("dc")
    if dc and dc.lower() != request.app["agent"].config.datacenter:
        raise HTTPError(f"No path to datacenter: {dc!r}", 500)
    if q.get("filter"):
        row_filter(request)  # parse now: a bad expression is a 400 before any work is done


def row_filter(request: web.Request) -> Predicate | None:
    """The request's `?filter=` expression compiled to a predicate (None when absent)."""
    expr = request.query.get("filter", "")
    if not expr:
        return None
    try:
        return compile_filter(expr)
    except FilterError as e:
        raise BadRequest(f"Failed to create boolean expression evaluator: {e}") from None


def filter_rows(request: web.Request, data: Any) -> Any:
    """Apply `?filter=` to a list of rows or a map of rows; other shapes pass through."""
    pred = row_filter(request)
    if pred is None:
        return data
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if pred(v)}
    if isinstance(data, list):
        return [row for row in data if pred(row)]
    return data


def node_meta_filter(request: web.Request) -> list[list[str]] | None:
    out = []
    for raw in request.query.getall("node-meta", []):
        if ":" not in raw:
            raise BadRequest(f"Invalid node-meta filter {raw!r}: use key:value")
        k, v = raw.split(":", 1)
        out.append([k, v])
    return out or None


def flag(request: web.Request, name: str) -> bool:
    """A Consul boolean query flag: present (`?passing`) or true-ish (`?passing=true`)."""
    if name not in request.query:
        return False
    return request.query[name].lower() not in ("false", "0", "no")


def uint_param(request: web.Request, name: str, default: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
        if v < 0:
            raise ValueError
        return v
    except ValueError:
        raise BadRequest(f"Invalid {name}: {raw!r} is not a non-negative integer") from None


# ---------------------------------------------------------------------- request bodies
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
