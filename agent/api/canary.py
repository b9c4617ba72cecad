"""/v1/connect/canary: automated canaries, run by the leader (connect/chain/canary.py decides).

`PUT /v1/connect/canary/:service` starts one (the first step is written at once), `GET` shows it (`GET
/v1/connect/canaries` all of them), `POST …/promote` sends everything to the canary now, `POST …/abort`
puts the splitter back as it was before the canary. A canary's state lives in the replicated `meta` table
(`canary/<service>`), so a new leader carries on where the last one stopped; every weight change is an
ordinary `service-splitter` write (checked like any, visible in the UI and the API, marked in its Meta).

The leader looks every TICK seconds at each progressing canary: the golden metrics of the canary subset's
sidecars since its last step (their callers' requests: count, 5xx, p99, from the proxies' own `/stats` — the
same reader as the UI's metrics), then `decide` — roll back at once on a breach, step after each interval
within limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from proconsul.agent.api.body import json_body, want_dict
from proconsul.agent.api.config import put_entry, validate_entry
from proconsul.agent.api.errors import BadRequest, HTTPError, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import check_common
from proconsul.agent.api.responses import json_response
from proconsul.agent.observe.link_metrics import Sample, link_metrics
from proconsul.agent.observe.proxy_stats import ProxyStats, targets
from proconsul.catalog import commands as c
from proconsul.catalog.filter import FilterError, compile_filter
from proconsul.connect.chain import canary

log = logging.getLogger("proconsul.canary")
routes = web.RouteTableDef()
TABLE, PREFIX = "meta", "canary/"
TICK = 1.0
# (service, the canary's LastStepAt) -> proxy -> the first sample after that step: metrics count from there.
Baselines = dict[tuple[str, float], dict[tuple[str, str], Sample]]


async def _get(agent: Any, service: str) -> dict[str, Any] | None:
    _, row = await agent.backend.query("table.get", {"table": TABLE, "key": PREFIX + service})
    return row


async def _put(agent: Any, state: dict[str, Any], cas: int | None) -> bool:
    row = {k: v for k, v in state.items() if k not in ("CreateIndex", "ModifyIndex")}
    return bool(await agent.backend.apply(c.TableSet(table=TABLE, key=PREFIX + state["Service"], row=row, cas=cas)))


async def _entry(agent: Any, kind: str, name: str) -> dict[str, Any] | None:
    _, row = await agent.backend.query("config.get", {"kind": kind, "name": name})
    return row


async def _write_splitter(agent: Any, s: dict[str, Any], weight: float) -> None:
    await put_entry(agent, validate_entry(canary.splitter(s, weight)))


async def _restore(agent: Any, s: dict[str, Any]) -> None:
    """The splitter as it was before the canary (none: deleted)."""
    prev = s.get("Previous")
    if prev:
        await put_entry(agent, validate_entry(prev))
    else:
        await agent.backend.apply(c.TableDelete(table="config_entries", key=f"service-splitter/{s['Service']}"))


def _public(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "Previous"}


@routes.put("/v1/connect/canary/{service}")
async def start(request: web.Request) -> web.Response:
    check_common(request)
    agent, service = request.app[AGENT], request.match_info["service"]
    body = want_dict(await json_body(request), "canary")
    resolver = await _entry(agent, "service-resolver", service)
    if resolver is None:
        raise BadRequest(f"canary: service {service!r} has no service-resolver: define the subsets first")
    try:
        s = canary.spec(service, body, str(resolver.get("DefaultSubset") or ""))
    except canary.CanaryError as e:
        raise BadRequest(f"canary: {e}") from None
    for field in ("FromSubset", "ToSubset"):
        if s[field] not in (resolver.get("Subsets") or {}):
            raise BadRequest(f"canary: {field}: service-resolver {service!r} does not have a subset named "
                             f"{s[field]!r}")
    cur = await _get(agent, service)
    if cur is not None and cur["Phase"] == "progressing":
        raise HTTPError(f"canary: {service!r} already has a canary in progress (to {cur['ToSubset']} at "
                        f"{cur['Weight']:g}%): promote or abort it first", 409)
    previous = await _entry(agent, "service-splitter", service)  # what a rollback or an abort puts back
    state = canary.start(s, {k: v for k, v in (previous or {}).items() if k not in ("CreateIndex", "ModifyIndex")}
                         or None, time.time())
    await _write_splitter(agent, state, state["Weight"])
    if not await _put(agent, state, cur["ModifyIndex"] if cur is not None else 0):
        raise HTTPError("canary: started concurrently by someone else; look at its status", 409)
    log.info("canary %s: started, %g%% to %s", service, state["Weight"], s["ToSubset"])
    return json_response(request, _public(state))


@routes.get("/v1/connect/canary/{service}")
async def status(request: web.Request) -> web.Response:
    check_common(request)
    state = await _get(request.app[AGENT], request.match_info["service"])
    if state is None:
        raise NotFoundHTTP(f"no canary for service {request.match_info['service']!r}")
    return json_response(request, _public(state))


@routes.get("/v1/connect/canaries")
async def list_all(request: web.Request) -> web.Response:
    check_common(request)
    _, rows = await request.app[AGENT].backend.query("table.list", {"table": TABLE})
    return json_response(request, [_public(r) for r in rows if str(r.get("Service", "")) and "ToSubset" in r])


async def _finish(request: web.Request, action: str) -> web.Response:
    check_common(request)
    agent, service = request.app[AGENT], request.match_info["service"]
    state = await _get(agent, service)
    if state is None:
        raise NotFoundHTTP(f"no canary for service {service!r}")
    if state["Phase"] != "progressing":
        raise HTTPError(f"canary: {service!r} is not in progress (it was {state['Phase']})", 409)
    now = time.time()
    if action == "promote":
        await _write_splitter(agent, state, 100.0)
        v = canary.Verdict("promote", 100.0, "promoted by hand")
    else:
        await _restore(agent, state)
        v = canary.Verdict("rollback", 0.0, "aborted by hand")
    new = canary.applied(state, v, None, now)
    if action == "abort":
        new["Phase"] = "aborted"
    if not await _put(agent, new, state["ModifyIndex"]):
        raise HTTPError("canary: changed concurrently; look at its status", 409)
    log.info("canary %s: %s", service, v.reason)
    return json_response(request, _public(new))


@routes.post("/v1/connect/canary/{service}/promote")
async def promote(request: web.Request) -> web.Response:
    return await _finish(request, "promote")


@routes.post("/v1/connect/canary/{service}/abort")
async def abort(request: web.Request) -> web.Response:
    return await _finish(request, "abort")


# ---------------------------------------------------------------------- the leader's loop
async def health(agent: Any, stats: ProxyStats, baselines: Baselines, s: dict[str, Any]) -> canary.Health | None:
    """What the canary subset's sidecars measured of their callers since the canary's last step (the first
    sample after it is the baseline); None while there is nothing to go on yet."""
    resolver = await _entry(agent, "service-resolver", s["Service"]) or {}
    flt = ((resolver.get("Subsets") or {}).get(s["ToSubset"]) or {}).get("Filter") or ""
    _, entries = await agent.backend.query("health.service", {"name": s["Service"], "connect": True})
    try:
        pred = compile_filter(flt) if flt else None
    except FilterError:
        return None
    rows = [{"ServiceKind": e["Service"].get("Kind"), "ServiceID": e["Service"].get("ID"), "Node": e["Node"]["Node"],
             "ServicePort": e["Service"].get("Port"), "ServiceProxy": e["Service"].get("Proxy"),
             "ServiceAddress": e["Service"].get("Address"), "Address": e["Node"].get("Address")}
            for e in entries or [] if pred is None or pred(e)]
    latest = await stats.latest(targets(rows, agent.config.node_name))
    key = (s["Service"], s["LastStepAt"])
    for old in [k for k in baselines if k[0] == s["Service"] and k != key]:
        del baselines[old]
    base = baselines.setdefault(key, {})
    for k, sample in latest.items():
        base.setdefault(k, sample)
    pairs = [(new, base[k]) for k, new in latest.items() if new.at > base[k].at]
    links = list(link_metrics(pairs)["Downstreams"].values()) if pairs else []
    if not links:
        return None
    p99s = [m["P99Ms"] for m in links if m.get("P99Ms") is not None]
    return canary.Health(requests=sum(m["Requests"] for m in links), errors=sum(m["Errors"] for m in links),
                         p99_ms=max(p99s) if p99s else None, window_s=max(m["Window"] for m in links))


async def step_all(agent: Any, stats: ProxyStats, baselines: Baselines) -> None:
    """One look at every progressing canary."""
    _, rows = await agent.backend.query("table.list", {"table": TABLE})
    for s in rows:
        if not str(s.get("ToSubset", "")) or s.get("Phase") != "progressing":
            continue
        now = time.time()
        h = await health(agent, stats, baselines, s)
        v = canary.decide(s, h, now)
        if v.action == "hold":
            if s.get("Reason") != v.reason and h is not None and h.requests:
                await _put(agent, canary.applied(s, v, h, now), s["ModifyIndex"])
            continue
        if v.action == "rollback":
            await _restore(agent, s)
            log.warning("canary %s: rolled back: %s", s["Service"], v.reason)
        else:
            await _write_splitter(agent, s, v.weight)
            log.info("canary %s: %s", s["Service"], v.reason)
        await _put(agent, canary.applied(s, v, h, now), s["ModifyIndex"])


async def run(agent: Any, stop: asyncio.Event) -> None:
    """While this server leads: look at the canaries every TICK seconds."""
    stats, baselines = ProxyStats(), {}  # type: ignore[var-annotated]
    while not stop.is_set():
        if not await agent.wait_leadership(stop):
            return
        try:
            await step_all(agent, stats, baselines)
        except Exception as e:  # leadership moved, a write raced: the next look starts over
            log.warning("canary: %s", e)
        try:
            await asyncio.wait_for(stop.wait(), TICK)
        except TimeoutError:
            pass


def attach(agent: Any) -> None:
    if agent.server is not None:
        agent.listeners.append(run)
    agent.http_routes.append(routes)
