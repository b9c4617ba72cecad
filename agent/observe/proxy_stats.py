"""The agent reads its sidecar proxies' `/stats` for the UI's golden metrics per link.

Where each proxy listens comes from the catalog (`connect/proxy/admin_address.py`, the rule the proxy
itself binds by). Samples are taken only when someone asks (a topology page open), at most one fetch per
proxy every `FRESH` seconds however many tabs ask, with a short timeout: a proxy that does not answer
gives "no metrics" for its links, never an error or a wait. Each proxy keeps the samples of the last
`WINDOW` seconds (and one before); rates are over the span from the oldest of them to the newest
(`link_metrics.py`), and a proxy nobody asked about for `IDLE` seconds is forgotten.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proconsul.agent.observe.link_metrics import Sample, StatsFormatError, link_metrics, parse_stats
from proconsul.connect.proxy.admin_address import AdminAddress, admin_address
from proconsul.connect.proxy.config import ProxyConfigError

log = logging.getLogger("proconsul.agent.ui")

FETCH_TIMEOUT = 1.0  # seconds for one proxy's /stats, connection included
DEADLINE = 1.5  # seconds one answer waits for all of a service's proxies
FRESH = 0.5  # a sample younger than this is reused rather than fetched again
WINDOW = 30.0  # rates are over (at most) the last WINDOW seconds
IDLE = 300.0  # a proxy nobody asked about for this long is forgotten
MAX_PROXIES = 4096  # proxies remembered at once (least recently asked about go first)
MAX_BODY = 4 << 20


@dataclass(frozen=True, slots=True)
class Target:
    """One proxy of a service, and where this agent can read its stats ("" host: it cannot)."""

    proxy_id: str
    node: str
    host: str
    port: int
    problem: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.node, self.proxy_id

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def targets(rows: list[dict[str, Any]], own_node: str) -> list[Target]:
    """The connect-proxy rows of `/v1/catalog/connect/:service` as places to read stats from this node.

    An admin listener on every address is read at the proxy's service (or node) address — over loopback
    when the proxy runs on this node; one on loopback only from this node."""
    out = []
    for row in rows:
        if row.get("ServiceKind") != "connect-proxy":
            continue
        pid, node = str(row.get("ServiceID", "")), str(row.get("Node", ""))
        try:
            where: AdminAddress = admin_address({"Port": row.get("ServicePort"), "Proxy": row.get("ServiceProxy")})
        except ProxyConfigError as e:
            out.append(Target(pid, node, "", 0, str(e)))
            continue
        host, local = where.host, node == own_node
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if local else str(row.get("ServiceAddress") or row.get("Address") or "")
        if _loopback(host) and not local:
            out.append(Target(pid, node, "", where.port, f"its metrics listener {where} is on node {node}'s "
                              "loopback: set Proxy.Config.envoy_prometheus_bind_addr to an address this agent "
                              "can reach"))
            continue
        out.append(Target(pid, node, host, where.port))
    return out


def reference(samples: list[Sample]) -> Sample:
    """The sample to measure the newest against: the oldest within `WINDOW` of it, else (the first look
    after a pause) the last one before that — the answer's `Window` says how long it spans."""
    newest = samples[-1]
    within = [s for s in samples[:-1] if newest.at - s.at <= WINDOW]
    return within[0] if within else samples[-2]


class ProxyStats:
    """Samples of proxies' `/stats`, taken on demand and shared by every caller."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, timeout: float = FETCH_TIMEOUT) -> None:
        self.clock = clock
        self.timeout = timeout
        self._history: OrderedDict[tuple[str, str], list[Sample]] = OrderedDict()
        self._asked: dict[tuple[str, str], float] = {}
        self._errors: dict[tuple[str, str], str] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.fetches = 0  # for tests and the benchmark: how many /stats requests were made

    async def service_metrics(self, proxies: list[Target]) -> dict[str, Any]:
        """Per-link golden metrics of the service these proxies front, and each proxy's state:
        `{"Upstreams": {dst: m}, "Downstreams": {src: m}, "Proxies": [{ID, Node, Address, Status, Error}]}`.
        Status is `ok`, `measuring` (one sample so far: rates need two), `unreachable` or `unavailable`."""
        now = self.clock()
        self._forget(now)
        readable = [t for t in proxies if t.host]
        waiting = []
        for t in readable:
            self._asked[t.key] = now
            samples = self._history.get(t.key)
            if samples and now - samples[-1].at < FRESH:
                continue
            task = self._inflight.get(t.key)
            if task is None:
                task = self._inflight[t.key] = asyncio.ensure_future(self._sample(t))
                task.add_done_callback(lambda _, k=t.key: self._inflight.pop(k, None))
            waiting.append(task)
        if waiting:
            await asyncio.wait(waiting, timeout=DEADLINE)  # a slow proxy's fetch ends on its own timeout
        pairs, states = [], []
        for t in proxies:
            state = {"ID": t.proxy_id, "Node": t.node, "Address": t.address if t.port else "", "Status": "ok",
                     "Error": t.problem}
            samples = self._history.get(t.key) or []
            error = self._errors.get(t.key, "")
            if not t.host:
                state["Status"] = "unavailable"
            elif error or not samples:
                state.update(Status="unreachable", Error=error or "no answer within the deadline")
            elif len(samples) < 2:
                state["Status"] = "measuring"
            else:
                pairs.append((samples[-1], reference(samples)))
            states.append(state)
        out: dict[str, Any] = link_metrics(pairs)
        out["Proxies"] = states
        return out

    async def latest(self, proxies: list[Target]) -> dict[tuple[str, str], Sample]:
        """The newest sample of each readable proxy (fetched now unless one is younger than FRESH), for a
        caller that measures from a baseline of its own (the canaries: since their last step)."""
        await self.service_metrics(proxies)
        return {t.key: h[-1] for t in proxies if (h := self._history.get(t.key))}

    async def _sample(self, t: Target) -> None:
        url = f"http://{t.address}/stats"
        self.fetches += 1
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session, \
                    session.get(url) as resp:
                if resp.status != 200:
                    raise StatsFormatError(f"GET {url}: HTTP {resp.status}")
                body = b""
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise StatsFormatError(f"GET {url}: the answer is larger than {MAX_BODY >> 20} MiB")
            at = self.clock()
            sample = parse_stats(orjson.loads(body), at)
            if sample.proxy_id != t.proxy_id:
                raise StatsFormatError(f"{t.address} is the admin listener of proxy {sample.proxy_id!r}, "
                                       f"not {t.proxy_id!r}")
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError, TypeError) as e:  # StatsFormatError, JSON
            reason = str(e) or type(e).__name__
            if self._errors.get(t.key) != reason:
                log.info("proxy %s on %s: no stats from %s: %s", t.proxy_id, t.node, url, reason)
            self._errors[t.key] = reason
            self._history.pop(t.key, None)  # a gap: rates start over when it answers again
            return
        self._errors.pop(t.key, None)
        samples = self._history.setdefault(t.key, [])
        self._history.move_to_end(t.key)
        if samples and samples[-1].proxy_id == sample.proxy_id and sample.at > samples[-1].at:
            samples.append(sample)
        else:
            samples[:] = [sample]
        while len(samples) > 1 and sample.at - samples[1].at > WINDOW:  # one sample past the window at most
            samples.pop(0)
        while len(self._history) > MAX_PROXIES:
            old, _ = self._history.popitem(last=False)
            self._asked.pop(old, None)

    def _forget(self, now: float) -> None:
        for key in [k for k, at in self._asked.items() if now - at > IDLE]:
            self._asked.pop(key, None)
            self._history.pop(key, None)
            self._errors.pop(key, None)
