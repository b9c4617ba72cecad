"""The admin listener every proxy kind serves (`/ready`, `/stats`, `/metrics`, …): one small aiohttp app on a
HOST:PORT of its own, started and stopped with the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_route(snapshot: Callable[[], Any]) -> Handler:
    """A route answering `snapshot()` as JSON."""

    async def handle(_: web.Request) -> web.Response:
        return web.json_response(snapshot())

    return handle


def prometheus_route(render: Callable[[], str]) -> Handler:
    """A route answering `render()` as Prometheus text."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    return handle


def ready_route(ready: asyncio.Event) -> Handler:
    """`/ready`: 200 once `ready` is set, 503 before (what a load balancer or test waits on)."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text="ready\n" if ready.is_set() else "starting\n", status=200 if ready.is_set() else 503)

    return handle


async def start_admin(host: str, port: int, routes: Mapping[str, Handler]) -> tuple[web.AppRunner, int]:
    """Serve `routes` (GET) on host:port (0: any free port); the runner (to `cleanup()`) and the bound port."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    return runner, port
