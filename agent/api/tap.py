"""/v1/agent/connect/tap/:service: the requests passing a service's sidecar proxies, live (beyond Consul;
Linkerd's `viz tap`).

The agent finds the service's proxies in the catalog and their admin listeners by the rule they bind by
(`agent/observe/proxy_stats.py`), opens each one's `/tap` stream with the caller's filter, and streams the
merged events as newline-delimited JSON, each with the `proxy` it came from. A blank line is a heartbeat
(every few seconds when nothing passes), so a caller that went away is noticed and every proxy's watcher
ends — a proxy nobody taps does no tap work at all. The proxies bound and sample what they send
(`connect/proxy/tap.py`); this relay holds at most `RELAY_MAX` events and drops (and counts) past it.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
from aiohttp import web

from proconsul.agent.api.errors import BadRequest, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import check_common, consistency_mode
from proconsul.agent.observe.proxy_stats import Target, targets
from proconsul.connect.proxy.tap import TapError, TapFilter, parse_rate

routes = web.RouteTableDef()
RELAY_MAX = 4096
HEARTBEAT = 2.0
PARAMS = ("path_prefix", "status", "method", "direction", "max_rps")


async def _follow(session: aiohttp.ClientSession, t: Target, params: dict[str, str],
                  out: asyncio.Queue[bytes], lost: list[int]) -> None:
    """One proxy's stream into the relay queue; a proxy that cannot be reached says so once, as an event."""
    try:
        async with session.get(f"http://{t.address}/tap", params=params) as resp:
            if resp.status != 200:
                raise aiohttp.ClientError(f"HTTP {resp.status}: {(await resp.text()).strip()}")
            async for line in resp.content:
                line = line.strip()
                if not line:
                    continue
                ev = orjson.loads(line)
                ev["proxy"] = t.proxy_id
                try:
                    out.put_nowait(orjson.dumps(ev) + b"\n")
                except asyncio.QueueFull:
                    lost[0] += 1
    except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as e:
        with contextlib.suppress(asyncio.QueueFull):
            out.put_nowait(orjson.dumps({"proxy": t.proxy_id, "error": f"tap of {t.address}: {e}"}) + b"\n")


@routes.get("/v1/agent/connect/tap/{service}")
async def tap(request: web.Request) -> web.StreamResponse:
    check_common(request)
    service = request.match_info["service"]
    try:
        TapFilter.parse(request.query)
        parse_rate(request.query.get("max_rps"))
    except TapError as e:
        raise BadRequest(f"tap: {e}") from None
    agent = request.app[AGENT]
    _, rows = await agent.backend.query("catalog.service", {"name": service, "tags": None, "node_meta": None,
                                                            "connect": True}, 0, 0.0, consistency_mode(request))
    proxies = targets(rows or [], agent.config.node_name)
    if not proxies:
        raise NotFoundHTTP(f"service {service!r} has no sidecar proxy registered")
    readable = [t for t in proxies if t.host]
    if not readable:
        raise BadRequest(f"tap: no proxy of {service!r} can be reached from this agent: "
                         + "; ".join(t.problem for t in proxies))
    params = {k: request.query[k] for k in PARAMS if request.query.get(k)}
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    queue: asyncio.Queue[bytes] = asyncio.Queue(RELAY_MAX)
    lost = [0]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0)) as session:
        tasks = [asyncio.ensure_future(_follow(session, t, params, queue, lost)) for t in readable]
        try:
            for t in proxies:
                if not t.host:
                    await resp.write(orjson.dumps({"proxy": t.proxy_id, "error": t.problem}) + b"\n")
            await resp.write(b"\n")  # the stream is open: the caller may start sending requests
            while True:
                try:
                    line = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except TimeoutError:
                    await resp.write(b"\n")
                    continue
                if lost[0]:
                    line = line[:-2] + b',"relay_dropped":' + str(lost[0]).encode() + b"}\n"
                    lost[0] = 0
                await resp.write(line)
        except (ConnectionResetError, RuntimeError):  # the caller went away
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return resp


