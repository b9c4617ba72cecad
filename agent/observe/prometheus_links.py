"""Golden metrics per link from Prometheus, for `ui_config { metrics_provider = "prometheus" }`.

Prometheus scrapes every proxy's `/metrics` (their admin listeners; see docs/connect.md), so an agent can
show links whose proxies it cannot reach itself (other nodes, loopback listeners). The agent asks
`metrics_proxy.base_url` + `/api/v1/query` — the path Consul's metrics proxy allows — for each counter's
growth over the last minute and turns the answers into the same figures as the built-in reader
(`link_metrics.from_prometheus`). A Prometheus that does not answer in time means no figures, not an error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from proconsul.agent.observe.link_metrics import StatsFormatError, from_prometheus, prometheus_queries

WINDOW = "1m"
WINDOW_SECONDS = 60.0
TIMEOUT = 2.0


async def prometheus_links(base_url: str, headers: list[tuple[str, str]], service: str,
                           timeout: float = TIMEOUT) -> dict[str, Any]:
    """`{"Upstreams": {dst: m}, "Downstreams": {src: m}, "Error": ""}` of `service` from Prometheus."""
    queries = prometheus_queries(service, WINDOW)
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                         headers=dict(headers)) as session:
            async def one(query: str) -> list[dict[str, Any]]:
                async with session.get(url, params={"query": query}) as resp:
                    body = await resp.json(content_type=None)
                if not isinstance(body, dict) or body.get("status") != "success":
                    why = body.get("error") if isinstance(body, dict) else None
                    raise StatsFormatError(f"HTTP {resp.status}: {why or 'not a Prometheus query answer'}")
                result = (body.get("data") or {}).get("result")
                if not isinstance(result, list):
                    raise StatsFormatError("the answer has no result vector")
                return result

            answers = await asyncio.gather(*(one(q) for q in queries.values()))
        links = from_prometheus(dict(zip(queries, answers, strict=True)), WINDOW_SECONDS)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
        return {"Upstreams": {}, "Downstreams": {}, "Error": f"Prometheus at {base_url}: {e or type(e).__name__}"}
    return {**links, "Error": ""}
