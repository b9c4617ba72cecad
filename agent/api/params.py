"""Query parameters of the HTTP API: blocking (`index`, `wait`), consistency, `filter`, node-meta, flags."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proconsul.agent.api.errors import BadRequest, Handler
from proconsul.agent.api.forward import ForwardToDatacenter
from proconsul.agent.api.keys import AGENT
from proconsul.agent.cluster.errors import NoPathToDatacenter
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.catalog.filter import FilterError, Predicate, compile_filter


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
    cfg = request.app[AGENT].config
    wait = cfg.default_query_time
    if "wait" in q:
        try:
            wait = parse_duration(q["wait"])
        except DurationError:
            raise BadRequest(f"Invalid wait time: {q['wait']!r} (use e.g. \"10s\", \"5m\")") from None
        if wait < 0:
            raise BadRequest("Invalid wait time: must not be negative")
    wait = min(wait, cfg.max_query_time)
    wait += (rng or random).random() * wait / 16
    return Blocking(index, wait)


def consistency_mode(request: web.Request) -> str:
    q = request.query
    if "stale" in q:
        return "stale"
    if "consistent" in q:
        return "consistent"
    return "leader"


def check_datacenter(request: web.Request) -> None:
    """`?dc=` naming another datacenter sends the request there (reads and writes alike; the error
    boundary forwards it). The agent's own endpoints (/v1/agent/…) serve only this datacenter."""
    if "dc=" not in request.query_string:  # the hot path parses nothing
        return
    dc = request.query.get("dc")
    if dc and dc.lower() != request.app[AGENT].config.datacenter:
        if request.path.startswith("/v1/agent/"):
            raise NoPathToDatacenter(dc)
        raise ForwardToDatacenter(dc.lower())


def primary_owned(request: web.Request) -> None:
    """Writes of what the primary datacenter owns (intentions, config entries) go to the primary
    when this datacenter is a secondary; its leader replicates the result back."""
    cfg = request.app[AGENT].config
    if cfg.primary_datacenter and cfg.primary_datacenter != cfg.datacenter:
        raise ForwardToDatacenter(cfg.primary_datacenter)


def datacenter_guard(handler: Handler) -> Handler:
    """Writes check `?dc=` before anything else (reads do it in check_common)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        check_datacenter(request)
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded


def check_common(request: web.Request) -> None:
    """Parameters every read accepts: dc (another one forwards the request there), stale xor consistent."""
    q = request.query
    if "stale" in q and "consistent" in q:
        raise BadRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
    check_datacenter(request)
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


UINT64_MAX = 2**64 - 1  # Consul's parameters are uint64; larger values cannot reach the log (msgpack)


def uint_param(request: web.Request, name: str, default: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
        if v < 0 or v > UINT64_MAX:
            raise ValueError
        return v
    except ValueError:
        raise BadRequest(f"Invalid {name}: {raw!r} is not an integer from 0 to {UINT64_MAX}") from None
