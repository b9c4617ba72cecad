"""Work that must not outlive the agent's stop: one helper for every loop that awaits something long (a
blocking query, a sync waiting for servers) while the agent may be asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


async def until_stopped(work: Awaitable[Any], stop: asyncio.Event) -> asyncio.Future[Any] | None:
    """Run `work` until it ends — its finished future (read `.result()` / `.exception()`) — or until `stop`
    is set: then it is cancelled and None is returned."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None
