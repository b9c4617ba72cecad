"""HTTP/1.1 connections for the proxy's HTTP mode: an h11 state machine over an asyncio stream, and the
pool of idle kept-alive connections to upstream instances."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11

from proconsul.connect.proxy.balancer import Instance

READ = 64 * 1024
FLUSH_HIGH = 256 * 1024  # wait for the peer to read only past this many unsent bytes
POOL_IDLE_MAX = 32  # idle connections kept per upstream instance


class Peer:
    """One HTTP/1.1 connection with its h11 state machine (client or server role)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: Any) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(role, max_incomplete_event_size=64 * 1024)
        self._out: list[bytes] = []

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ)
            self.h11.receive_data(data)  # b"" tells h11 the peer closed

    def queue(self, *events: Any) -> None:
        """Encode events now, send them with the next flush (one write: one TLS record, one syscall)."""
        for event in events:
            data = self.h11.send(event)
            if data:
                self._out.append(data)

    async def flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()
        transport = self.writer.transport
        if transport is not None and transport.get_write_buffer_size() > FLUSH_HIGH:
            await self.writer.drain()

    async def send(self, *events: Any) -> None:
        self.queue(*events)
        await self.flush()

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


class InstanceConnections:
    """Idle kept-alive mTLS connections per upstream instance."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Peer]] = {}

    def take(self, inst: Instance) -> Peer | None:
        idle = self._idle.get(inst.id)
        while idle:
            peer = idle.pop()
            if not peer.reader.at_eof() and peer.reusable():
                peer.h11.start_next_cycle()
                return peer
            peer.close()
        return None

    def give(self, inst: Instance, peer: Peer) -> None:
        idle = self._idle.setdefault(inst.id, [])
        if peer.reusable() and len(idle) < POOL_IDLE_MAX:
            idle.append(peer)
        else:
            peer.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for p in idle:
                p.close()
        self._idle.clear()
