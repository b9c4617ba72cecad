"""An informer over the Kubernetes API: list, then watch from the list's resourceVersion with bookmarks;
when the watch ends, watch again from the last version seen; on 410 Expired (history compacted) or an
error that cannot be resumed, list again — the cache is replaced whole, so whatever changed while the
watch was down (deletions included) is seen, and the caller diffs from the full state.

Requests are made through kubernetes_asyncio's generated API (configuration, auth, URL building) with
`_preload_content=False`, and bodies are decoded with orjson into plain dicts: the syncer reads a handful
of fields from thousands of objects, which the generated models would make slow.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("proconsul.k8s_sync")
Obj = dict[str, Any]
Key = tuple[str, str]
ListCall = Callable[..., Awaitable[Any]]
Changed = Callable[[Key | None, Obj | None, Obj | None], None]  # (key, before, after); key None: everything
PAGE = 500


class Expired(Exception):
    """410 Gone/Expired: the resourceVersion is older than the server's history."""


class Informer:
    """Keeps `cache` equal to the server's objects of one kind; calls `changed(key, before, after)` after every
    change, and `changed(None, None, None)` after a full list (everything may have changed)."""

    def __init__(self, name: str, call: ListCall, changed: Changed, *, label_selector: str = "",
                 rng: random.Random | None = None, watch_seconds: tuple[int, int] = (300, 600)) -> None:
        self.name, self.call, self.changed = name, call, changed
        self.label_selector = label_selector
        self.cache: dict[Key, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self.rng = rng or random.Random()
        self.watch_seconds = watch_seconds

    @staticmethod
    def key(obj: Obj) -> Key:
        meta = obj.get("metadata") or {}
        return meta.get("namespace", ""), meta.get("name", "")

    async def _request(self, **kw: Any) -> aiohttp.ClientResponse:
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        resp = await self.call(_preload_content=False, **kw)
        if resp.status == 410:
            resp.release()
            raise Expired(f"{self.name}: 410 Expired")
        if resp.status >= 300:
            raw = await resp.read()
            resp.release()
            try:
                status = orjson.loads(raw)
                why = f"{status.get('reason', '')}: {status.get('message', '')}"
            except ValueError:
                why = raw[:200].decode(errors="replace")
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=why)
        return resp

    async def list(self) -> None:
        """Replace the cache with a full, paginated list (one consistent snapshot)."""
        items: dict[Key, Obj] = {}
        cont, rv = "", ""
        while True:
            resp = await self._request(limit=PAGE, _continue=cont or None)
            body = orjson.loads(await resp.read())
            for obj in body.get("items") or []:
                items[self.key(obj)] = obj
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion", rv)
            cont = meta.get("continue") or ""
            if not cont:
                break
        self.cache = items
        self.resource_version = rv
        self.relists += 1
        self.synced.set()
        self.changed(None, None, None)

    async def watch_once(self) -> None:
        """One watch request from the current resourceVersion until the server ends it."""
        seconds = self.rng.randint(*self.watch_seconds)
        resp = await self._request(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                                   timeout_seconds=seconds,
                                   _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                                                          sock_read=seconds + 60))
        try:
            async for line in resp.content:
                if not line.strip():
                    continue
                ev = orjson.loads(line)
                typ, obj = ev.get("type"), ev.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(f"{self.name}: 410 Expired ({obj.get('message', '')})")
                    raise aiohttp.ClientPayloadError(f"{self.name}: watch error {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if typ == "BOOKMARK":
                    continue
                key = self.key(obj)
                before = self.cache.get(key)
                if typ == "DELETED":
                    self.cache.pop(key, None)
                    self.changed(key, before, None)
                else:
                    self.cache[key] = obj
                    self.changed(key, before, obj)
        finally:
            resp.release()

    async def run(self) -> None:
        """List, then watch forever; re-list on 410; back off on errors (0.1 s doubling to 5 s)."""
        delay = 0.1
        need_list = True
        failing = False
        while True:
            try:
                if need_list:
                    await self.list()
                    need_list = False
                await self.watch_once()
                delay = 0.1
                if failing:
                    log.info("%s: watching again", self.name)
                failing = False
            except Expired as e:
                log.info("%s; listing again and diffing from the full state", e)
                need_list = True
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                what = f"{e.status} {e.message}" if isinstance(e, aiohttp.ClientResponseError) else f"{type(e).__name__}: {e}"
                # once per outage at warning level; the retries after it at debug
                log.log(logging.DEBUG if failing else logging.WARNING, "%s: %s; retrying (backing off up to 5s)",
                        self.name, what)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
