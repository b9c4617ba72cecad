"""The syncer's only way into Proconsul: an agent's HTTP API (Consul's /v1 paths).

Blocking queries follow Consul's client rules: remember X-Consul-Index, ask again with ?index=; when the
index goes backwards (a restored or rebuilt server) start again from 0; never loop faster than a minimum
interval, so a flapping endpoint cannot turn into a query storm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .errors import ConsulError

log = logging.getLogger("proconsul.k8s_sync")
Obj = dict[str, Any]


class ConsulAPI:
    def __init__(self, address: str, token: str = "") -> None:
        if "://" not in address:
            address = "http://" + address
        self.base = address.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None
        self.txn_count = 0

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"X-Consul-Token": self.token} if self.token else {}
            self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=None,
                                                                                                 sock_connect=5))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None, raw: bytes | None = None) -> tuple[int, int, Any]:
        """(status, X-Consul-Index, decoded JSON) — raises ConsulError for transport errors and 5xx/4xx."""
        http = await self._http()
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        try:
            async with http.request(method, self.base + path, params=params, data=data) as resp:
                payload = await resp.read()
                index = int(resp.headers.get("X-Consul-Index", "0") or 0)
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ConsulError(f"agent at {self.base} unreachable: {type(e).__name__}: {e}") from None
        ctype_json = payload[:1] in (b"{", b"[") or payload in (b"true", b"false", b"null")
        decoded = orjson.loads(payload) if payload and ctype_json else payload.decode(errors="replace")
        if status >= 400 and not (status == 409 and path == "/v1/txn"):
            raise ConsulError(f"{method} {path}: {status} {str(decoded).strip()[:300]}", status)
        return status, index, decoded

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        _, index, body = await self.request("GET", path, params=params or None)
        return index, body

    async def txn(self, ops: list[Obj]) -> Obj:
        """One /v1/txn transaction (one Raft write); ConsulError carries the failing operations."""
        status, _, body = await self.request("PUT", "/v1/txn", body=ops)
        self.txn_count += 1
        if status == 409:
            errors = "; ".join(f"op {e.get('OpIndex')}: {e.get('What')}" for e in (body or {}).get("Errors") or [])
            raise ConsulError(f"transaction refused: {errors}", 409)
        return body

    async def session_create(self, node: str, name: str, ttl: str) -> str:
        _, _, body = await self.request("PUT", "/v1/session/create", body={
            "Node": node, "Name": name, "TTL": ttl, "Behavior": "release", "LockDelay": "0s", "Checks": []})
        return body["ID"]

    async def session_renew(self, sid: str) -> bool:
        try:
            await self.request("PUT", f"/v1/session/renew/{sid}")
            return True
        except ConsulError as e:
            if e.status == 404:
                return False
            raise

    async def session_info(self, sid: str) -> Obj | None:
        _, body = await self.get(f"/v1/session/info/{sid}")
        return body[0] if body else None

    async def session_destroy(self, sid: str) -> None:
        await self.request("PUT", f"/v1/session/destroy/{sid}")

    async def kv_get(self, key: str) -> Obj | None:
        try:
            _, body = await self.get(f"/v1/kv/{quote(key)}")
        except ConsulError as e:
            if e.status == 404:
                return None
            raise
        return body[0] if body else None

    async def kv_lock(self, key: str, sid: str, value: bytes, acquire: bool = True) -> bool:
        verb = "acquire" if acquire else "release"
        _, _, body = await self.request("PUT", f"/v1/kv/{quote(key)}", params={verb: sid}, raw=value)
        return body is True

    async def follow(self, path: str, handle: Callable[[int, Any], None], *, wait: str = "60s",
                     min_interval: float = 0.05, on_status: Callable[[bool], None] | None = None) -> None:
        """Blocking-query `path` forever, calling `handle(index, body)` for the first answer and every change.

        At most one query per `min_interval` (the rate limit); an index that goes backwards starts over from 0;
        errors back off from 0.1 s doubling to 5 s, logged once per outage.
        """
        index = 0
        delay = 0.1
        last = 0.0
        failing = False
        while True:
            gap = min_interval - (time.monotonic() - last)
            if gap > 0:
                await asyncio.sleep(gap)
            last = time.monotonic()
            try:
                params = {"index": str(index), "wait": wait} if index else {}
                new_index, body = await self.get(path, **params)
            except ConsulError as e:
                if on_status:
                    on_status(False)
                log.log(logging.DEBUG if failing else logging.WARNING, "%s; retrying (backing off up to 5s)", e)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if on_status:
                on_status(True)
            failing, delay = False, 0.1
            if index and new_index == index:
                continue  # the wait ended with nothing new
            if new_index < index:
                log.info("%s: index went backwards (%d < %d): starting over", path, new_index, index)
                index = 0
            else:
                index = max(new_index, 1)
            handle(new_index, body)
