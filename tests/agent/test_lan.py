"""LAN gossip against peers that misbehave: the round survives, the join reports, nothing crashes."""

from __future__ import annotations

import asyncio
import struct

import pytest

from proconsul.agent.cluster.lan import JoinError, LANGossip
from proconsul.agent.cluster.membership import Member, MemberList


async def _peer(behaviour: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # take the push, then answer badly
        writer.write(behaviour)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("reply", [b"", b"\x00\x00", struct.pack(">I", 100) + b"short",
                                   struct.pack(">I", 3) + b"\xc1\xc1\xc1", struct.pack(">I", 1) + b"\x01"])
async def test_a_peer_that_dies_mid_exchange_or_answers_garbage_does_not_break_gossip(reply: bytes) -> None:
    server, port = await _peer(reply)
    try:
        members = MemberList(Member("me", "127.0.0.1", 1, {"dc": "dc1"}))
        members.merge([Member("bad", "127.0.0.1", port, {"dc": "dc1"}, heartbeat=1)], now=0.0)
        gossip = LANGossip(members, "dc1", "127.0.0.1", 0, loop_time=lambda: 0.0)
        await gossip.round()  # must not raise
        assert members.status("bad") == "alive"  # one failed exchange is not a verdict
        with pytest.raises(JoinError, match="could not join"):
            await gossip.join([f"127.0.0.1:{port}"])
    finally:
        server.close()
