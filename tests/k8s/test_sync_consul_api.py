"""k8s-sync's blocking queries against a scripted HTTP server: index handling and the rate limit."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from proconsul.k8s_sync.consul_api import ConsulAPI


async def test_follow_resets_when_the_index_goes_backwards_and_keeps_its_rate() -> None:
    answers = [(5, "a"), (5, "a"), (9, "b"), (3, "restored"), (4, "c")]
    seen_queries: list[tuple[float, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen_queries.append((time.monotonic(), request.query.get("index", "")))
        index, body = answers[min(len(seen_queries) - 1, len(answers) - 1)]
        return web.json_response({"v": body}, headers={"X-Consul-Index": str(index)})

    app = web.Application()
    app.router.add_get("/v1/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api = ConsulAPI(f"127.0.0.1:{port}")
    got: list[tuple[int, str]] = []
    done = asyncio.Event()

    def handle(index: int, body: dict[str, str]) -> None:
        got.append((index, body["v"]))
        if len(got) == 4:
            done.set()

    task = asyncio.ensure_future(api.follow("/v1/x", handle, min_interval=0.05))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await api.close()
        await runner.cleanup()
    assert got == [(5, "a"), (9, "b"), (3, "restored"), (4, "c")]  # the repeated index 5 is no change
    assert [q for _, q in seen_queries[:5]] == ["", "5", "5", "9", ""]  # after going backwards: from 0
    gaps = [b - a for (a, _), (b, _) in zip(seen_queries, seen_queries[1:], strict=False)]
    # Never faster than the rate limit. The gaps are seen at the server, so one request delayed on its way more than
    # the next shortens a gap by that jitter (seen: 43 ms under load); without a limit they would be ~1 ms.
    assert sum(gaps) / len(gaps) >= 0.045 and min(gaps) >= 0.025, gaps
