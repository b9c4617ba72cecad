"""The proxy's only way to learn anything: the local agent's HTTP API, followed with blocking queries.

Each `watch_*` loop long-polls one endpoint (`?index=` or `?hash=`) and hands every new answer to a
callback, so a change in the catalog reaches the proxy within one round trip; errors back off
(0.1 s doubling to 5 s) and are logged once per outage, never ending the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger("proconsul.proxy")
WAIT = "60s"


class AgentAPIError(Exception):
    """The agent answered with an error (the message is its one-line body) or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AgentAPI:
    def __init__(self, address: str, token: str = "", rng: random.Random | None = None) -> None:
        if "://" not in address:
            address = "http://" + address
        self.base = address.rstrip("/")
        self.token = token
        self.rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None

    async def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"X-Consul-Token": self.token} if self.token else {}
            self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=None,
                                                                                                 connect=5))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, params: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
        """(JSON body, headers); AgentAPIError on a non-200 answer or a network failure."""
        session = await self._ensure()
        try:
            async with session.get(self.base + path, params=params or {},
                                   timeout=aiohttp.ClientTimeout(total=90)) as resp:
                if resp.status != 200:
                    text = (await resp.text()).strip().splitlines()
                    raise AgentAPIError(f"GET {path}: {resp.status} {text[0] if text else ''}".strip(), resp.status)
                return await resp.json(), dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise AgentAPIError(f"GET {path}: cannot reach the agent at {self.base}: {e}") from None

    async def put(self, path: str, body: Any) -> Any:
        """PUT a JSON body (a gateway's `-register`); AgentAPIError on a non-200 answer."""
        session = await self._ensure()
        try:
            async with session.put(self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    first = text.strip().splitlines()
                    raise AgentAPIError(f"PUT {path}: {resp.status} {first[0] if first else ''}".strip(), resp.status)
                return text
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise AgentAPIError(f"PUT {path}: cannot reach the agent at {self.base}: {e}") from None

    # ------------------------------------------------------------------ one-shot reads
    async def service(self, service_id: str) -> dict[str, Any]:
        body, _ = await self.get(f"/v1/agent/service/{quote(service_id, safe='')}")
        return body

    async def services(self) -> dict[str, Any]:
        body, _ = await self.get("/v1/agent/services")
        return body

    async def self_info(self) -> dict[str, Any]:
        body, _ = await self.get("/v1/agent/self")
        return body

    # ------------------------------------------------------------------ blocking watches
    async def watch(self, path: str, params: dict[str, str], on_change: Callable[[Any], Awaitable[None] | None],
                    stop: asyncio.Event, *, by_hash: bool = False) -> None:
        """Follow `path` until `stop`: on_change(body) for the first answer and every change after it."""
        index = ""
        delay = 0.1
        failing = False
        while not stop.is_set():
            q = dict(params)
            if index:
                q.update({"hash" if by_hash else "index": index, "wait": WAIT})
            try:
                body, headers = await self.get(path, q)
            except AgentAPIError as e:
                if not failing:
                    log.warning("%s (retrying)", e)
                    failing = True
                await _sleep_or_stop(stop, delay * (0.5 + self.rng.random()))
                delay = min(delay * 2, 5.0)
                continue
            if failing:
                log.info("GET %s works again", path)
                failing = False
            delay = 0.1
            new = headers.get("X-Consul-ContentHash", "") if by_hash else headers.get("X-Consul-Index", "")
            if by_hash and not new and isinstance(body, dict):
                new = str(body.get("ContentHash", ""))
            if new and new == index:
                continue  # the wait ran out with nothing new
            if not by_hash and index and new and int(new) < int(index):
                new = ""  # the index went backwards (a restored snapshot): start over, as Consul's clients do
            index = new
            try:
                result = on_change(body)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a bad answer must not end the watch (nor the proxy)
                log.exception("GET %s: cannot use the agent's answer", path)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def wait_registered(api: AgentAPI, service_id: str, stop: asyncio.Event, waiting: str,
                          logger: logging.Logger = log) -> dict[str, Any] | None:
    """The agent's registration of `service_id` (`/v1/agent/service/:id`), asked for every second until it
    exists; `waiting` is logged once meanwhile. None when `stop` is set first."""
    said = False
    while not stop.is_set():
        try:
            return await api.service(service_id)
        except AgentAPIError as e:
            if e.status != 404:
                raise
        if not said:
            logger.warning("%s", waiting)
            said = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return None
