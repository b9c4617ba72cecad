"""HTTP checks: 2xx passing, 429 warning, anything else critical; the body's first 4 KiB as output."""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any

import aiohttp

from proconsul.catalog.store import CRITICAL, PASSING, WARNING

from .checks import RUNNERS, CheckManager, IntervalRunner, ResultSink

DEFAULT_OUTPUT_MAX = 4096


def session_for(manager: CheckManager) -> aiohttp.ClientSession:
    """One pooled client session per agent for every HTTP check (closed with the manager)."""
    session = manager.context.get("http_session")
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=8, ttl_dns_cache=60)
        session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": "Proconsul Health Check"})
        manager.context["http_session"] = session
        manager.closers.append(session.close)
    return session


class HTTPRunner(IntervalRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: CheckManager) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.manager = manager
        self.url = defn["HTTP"]
        self.method = (defn.get("Method") or "GET").upper()
        self.headers = [(k, v) for k, values in (defn.get("Header") or {}).items() for v in values]
        self.body = (defn.get("Body") or "").encode()
        self.output_max = int(defn.get("OutputMaxSize") or DEFAULT_OUTPUT_MAX)
        self.ssl: ssl.SSLContext | bool | None = None
        if self.url.startswith("https://") and defn.get("TLSSkipVerify"):
            self.ssl = False
        self.server_name = defn.get("TLSServerName") or None
        self.redirects = not defn.get("DisableRedirects")

    async def probe(self) -> tuple[str, str]:
        session = session_for(self.manager)
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=self.timeout),
                                  "allow_redirects": self.redirects}
        if self.ssl is not None:
            kwargs["ssl"] = self.ssl
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        try:
            async with session.request(self.method, self.url, headers=self.headers, data=self.body or None,
                                       **kwargs) as resp:
                chunk = await resp.content.read(self.output_max)
                status = resp.status
                reason = resp.reason or ""
        except TimeoutError:
            return CRITICAL, f"{self.method} {self.url}: timed out after {self.timeout:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return CRITICAL, f"{self.method} {self.url}: {type(e).__name__}: {e}"
        output = f"HTTP {self.method} {self.url}: {status} {reason} Output: {chunk.decode(errors='replace')}"
        if 200 <= status < 300:
            return PASSING, output
        if status == 429:
            return WARNING, output
        return CRITICAL, output


RUNNERS["http"] = HTTPRunner
__all__ = ["HTTPRunner", "asyncio"]
