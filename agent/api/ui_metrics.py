"""Golden metrics per topology link for the UI, and Consul's metrics proxy.

- `GET /v1/internal/ui/service-metrics/:service` (ours): request rate, success rate and p99 of each of the
  service's links, read from its sidecar proxies' `/stats` (`agent/observe/proxy_stats.py`). A blocking
  query over time: the index is a 5-second period, and `?index=N` answers when period N+1 begins, so the
  UI follows it like any other watch (one request for every open tab) and an idle agent does nothing.
  The topology answer (`ui.py`) carries the same figures per link.
- `GET /v1/internal/ui/metrics-proxy/*` (Consul's): with `ui_config { metrics_proxy { base_url } }`, a
  read-only pass-through to a metrics backend such as Prometheus, limited to `path_allowlist`.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from proconsul.agent.api.errors import HTTPError, NotFoundHTTP
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common, consistency_mode
from proconsul.agent.api.responses import consul_headers, dumps
from proconsul.agent.observe.prometheus_links import prometheus_links
from proconsul.agent.observe.proxy_stats import ProxyStats, targets

PERIOD = 5.0  # seconds between the metrics answers a watching page gets
PROXY_TIMEOUT = 10.0  # seconds for the metrics backend behind metrics-proxy
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "content-encoding"}

routes = web.RouteTableDef()


async def service_links(request: web.Request, service: str) -> dict[str, Any]:
    """`{Provider, Upstreams: {dst: m}, Downstreams: {src: m}, Proxies: [...], Error}` for one service."""
    agent = request.app[AGENT]
    cfg = agent.config
    dc = request.query.get("dc", "")
    if cfg.ui_metrics_provider == "prometheus":  # Prometheus scrapes every proxy; its series carry no dc
        return {"Provider": "prometheus", "Proxies": [],
                **await prometheus_links(cfg.ui_metrics_proxy_base_url, cfg.ui_metrics_proxy_add_headers, service)}
    out: dict[str, Any] = {"Provider": "proxies", "Upstreams": {}, "Downstreams": {}, "Proxies": [], "Error": ""}
    if dc and dc != cfg.datacenter:
        out["Error"] = f"the proxies of datacenter {dc!r} are read by the agents there"
        return out
    _, rows = await agent.backend.query("catalog.service", {"name": service, "tags": None, "node_meta": None,
                                                            "connect": True}, 0, 0.0, consistency_mode(request))
    stats: ProxyStats = agent.proxy_stats
    out.update(await stats.service_metrics(targets(rows or [], agent.config.node_name)))
    if not out["Proxies"]:
        out["Error"] = f"{service} has no sidecar proxy registered"
    return out


@routes.get("/v1/internal/ui/service-metrics/{service}")
async def service_metrics(request: web.Request) -> web.Response:
    """Request rate, success rate and p99 of each of a service's links (from its sidecars, or Prometheus);
    blocking over 5-second periods: `?index=N` answers when period N+1 begins."""
    check_common(request)
    b = blocking_params(request)
    period = int(time.time() // PERIOD)
    if b.index and b.index >= period:
        # Wait for the next period (never longer than asked): the sample then is a new answer.
        await asyncio.sleep(max(0.0, min(b.wait, (b.index + 1) * PERIOD - time.time())))
        period = max(int(time.time() // PERIOD), b.index + 1)
    body = await service_links(request, request.match_info["service"])
    body["Period"] = PERIOD
    return web.Response(body=dumps(body), content_type="application/json", headers=consul_headers(request, period))


# ---------------------------------------------------------------------- Consul's metrics proxy
@routes.get("/v1/internal/ui/metrics-proxy/{tail:.*}")
async def metrics_proxy(request: web.Request) -> web.StreamResponse:
    """Consul's read-only pass-through to `ui_config.metrics_proxy.base_url` (Prometheus for the
    `prometheus` provider): paths outside `path_allowlist` are 403, the ACL token is not passed on."""
    cfg = request.app[AGENT].config
    if not cfg.ui_enabled:
        raise NotFoundHTTP("UI is not enabled")
    base = cfg.ui_metrics_proxy_base_url
    if not base:
        raise NotFoundHTTP("Metrics proxy is not enabled")
    sub = "/" + request.match_info["tail"]
    target = base.rstrip("/") + sub
    path = posixpath.normpath(urlsplit(target).path)
    if not target.startswith(base.rstrip("/")) or ".." in sub.split("/"):
        raise HTTPError("Invalid path.", 400)
    allow = cfg.ui_metrics_proxy_path_allowlist
    if allow and path not in allow and posixpath.normpath(sub) not in allow:  # Consul: the full path; also ours
        return web.Response(status=403, text=f"path {path} is not in ui_config.metrics_proxy.path_allowlist\n")
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "x-consul-token", "authorization",
                                                                     "accept-encoding")}
    for name, value in cfg.ui_metrics_proxy_add_headers:
        headers[name] = value
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT)) as session, \
                session.get(target, params=request.query, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            out = web.Response(status=resp.status, body=body)
            for k, v in resp.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    out.headers[k] = v
            return out
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise HTTPError(f"metrics proxy: cannot reach {base}: {e or type(e).__name__}", 502) from None


def attach(agent: Any) -> None:
    agent.proxy_stats = ProxyStats()
    agent.http_routes.append(routes)
