"""HTTP checks: 2xx passing, 429 warning, anything else critical; the body's first 4 KiB as output.

Every HTTP check of an agent shares one aiohttp session. Its pool has no connection limit, so checks
whose targets hang can never hold back the others (each probe is bounded by its own timeout, and a
check never runs twice at once, so the number of connections is at most the number of checks).
Idempotent requests reuse kept-alive connections — cheaper than Consul's new connection per probe,
and aiohttp retries an idempotent request once when a reused connection turns out to be stale;
other methods ask the target to close the connection, so a probe never depends on an old socket.
"""

from __future__ import annotations

import random
import ssl
from typing import Any

import aiohttp
from multidict import CIMultiDict

from proconsul.agent.checks.agent_tls import check_context, uses_agent_tls
from proconsul.agent.checks.runner import (
    DEFAULT_OUTPUT_MAX,
    IntervalRunner,
    ResultSink,
    RunnerHost,
)
from proconsul.agent.config.duration import format_duration
from proconsul.catalog.store import CRITICAL, PASSING, WARNING

USER_AGENT = "Consul Health Check"  # Consul's; applications filter their access logs on it
ACCEPT = "text/plain, text/*, */*"
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}


def session_for(manager: RunnerHost) -> aiohttp.ClientSession:
    """One pooled client session per agent for every HTTP check (closed with the manager)."""
    session = manager.context.get("http_session")
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30)
        session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                        cookie_jar=aiohttp.DummyCookieJar())
        manager.context["http_session"] = session
        manager.closers.append(session.close)
    return session


def _ssl_for(defn: dict[str, Any], manager: RunnerHost) -> ssl.SSLContext | bool | None:
    if not defn["HTTP"].startswith("https://"):
        return None
    if uses_agent_tls(manager.context):  # enable_agent_tls_for_checks: the agent's certificate and CA
        return check_context(manager.context, bool(defn.get("TLSSkipVerify")))
    if defn.get("TLSSkipVerify"):
        return False
    return None  # aiohttp's default verifying context


class HTTPRunner(IntervalRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.manager = manager
        self.url = defn["HTTP"]
        self.method = (defn.get("Method") or "GET").upper()
        headers: CIMultiDict[str] = CIMultiDict()
        for name, values in (defn.get("Header") or {}).items():
            for v in values:
                headers.add(name, v)
        headers.setdefault("User-Agent", USER_AGENT)
        headers.setdefault("Accept", ACCEPT)
        if self.method not in IDEMPOTENT:
            headers.setdefault("Connection", "close")
        self.headers = headers
        self.body = (defn.get("Body") or "").encode() or None
        self.output_max = int(defn.get("OutputMaxSize") or DEFAULT_OUTPUT_MAX)
        self.kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=self.timeout),
                                       "allow_redirects": not defn.get("DisableRedirects"),
                                       "headers": self.headers, "data": self.body}
        tls = _ssl_for(defn, manager)
        if tls is not None:
            self.kwargs["ssl"] = tls
        if defn.get("TLSServerName") and self.url.startswith("https://"):
            self.kwargs["server_hostname"] = defn["TLSServerName"]

    async def probe(self) -> tuple[str, str]:
        session = session_for(self.manager)
        try:
            async with session.request(self.method, self.url, **self.kwargs) as resp:
                chunk = await resp.content.read(self.output_max)
                status = resp.status
                reason = resp.reason or ""
        except TimeoutError:
            return CRITICAL, f"{self.method} {self.url}: timed out after {format_duration(self.timeout)}"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return CRITICAL, f"{self.method} {self.url}: {_describe(e)}"
        output = f"HTTP {self.method} {self.url}: {status} {reason} Output: {chunk.decode(errors='replace')}"
        if 200 <= status < 300:
            return PASSING, output
        if status == 429:
            return WARNING, output
        return CRITICAL, output


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"dial tcp {e.host}:{e.port}: {e.os_error.strerror or e.os_error}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


