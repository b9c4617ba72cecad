"""Joined sides (connect/proxy/forward.py) over real sockets: a connection whose two directions both end
with a half-close is closed on both sockets (it lingered open before, one file descriptor per connection at
a mesh gateway, where both sides are plain TCP)."""

from __future__ import annotations

import asyncio

from support import until

from proconsul.connect.proxy.forward import Side


async def _relay_half_closed_both_ways() -> tuple[Side, Side, bytes]:
    loop = asyncio.get_running_loop()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to the client's EOF
        writer.write(b"echo:" + data)
        writer.write_eof()  # half-close: the client's direction already ended
        await reader.read()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    sides: list[Side] = []

    def inbound() -> Side:
        side = Side()
        sides.append(side)

        async def dial() -> None:
            _, out = await loop.create_connection(Side, "127.0.0.1", backend_port)
            sides.append(out)
            out.join(side)

        loop.create_task(dial())
        return side

    relay = await loop.create_server(inbound, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.sockets[0].getsockname()[1])
    writer.write(b"hello")
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 5)
    await until(lambda: len(sides) == 2 and all(s.transport is None for s in sides), 5,
                message="both of the relay's sockets to close")
    writer.close()
    relay.close()
    server.close()
    return sides[0], sides[1], answer


def test_both_directions_half_closed_closes_both_sockets() -> None:
    inbound, outbound, answer = asyncio.run(_relay_half_closed_both_ways())
    assert answer == b"echo:hello"
    assert inbound.closed and outbound.closed and inbound.transport is None and outbound.transport is None
