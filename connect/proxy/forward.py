"""Moving bytes: two asyncio protocols joined back to back (no streams, no per-chunk tasks).

Each `Side` is the protocol of one socket. Bytes received on one side are written straight to the
other side's transport; back-pressure is asyncio's own: when a side's write buffer passes its high
mark the loop calls its `pause_writing`, which pauses reading on the other side until the buffer
drains. Bytes that arrive before the other side exists (the upstream is still connecting) wait in a
bounded buffer with reading paused. When one side closes, the other is closed after its buffered
bytes are flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("proconsul.proxy")

HIGH_WATER = 256 * 1024  # per transport: write buffer size that pauses the other side's reading
LOW_WATER = 64 * 1024


class Side(asyncio.Protocol):
    """One socket of a proxied connection."""

    __slots__ = ("transport", "peer", "_pending", "_closed", "on_bytes", "on_close", "_eof")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self._pending: list[bytes] = []
        self._closed = False
        self._eof = False
        self.on_bytes: Callable[[int], None] | None = None  # count bytes received on this side
        self.on_close: Callable[[Side], None] | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self._pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()  # no more until the other side exists

    def eof_received(self) -> bool | None:
        self._eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()  # half-close: the other direction may still flow…
            if peer._eof:  # …unless it has ended too: both sockets are done, close them (else they linger open)
                peer.close()
                return False
            # …unless this side is TLS: asyncio closes a TLS transport on EOF whatever we answer.
            return None if self.transport is None or self.transport.get_extra_info("sslcontext") else True
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.transport = None
        peer = self.peer
        if peer is not None:
            peer.close()
        if self.on_close is not None:
            self.on_close(self)
        self.peer = self.on_close = self.on_bytes = None  # no cycles left: freed by reference counting

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.resume_reading()

    # ------------------------------------------------------------------ joining and closing
    def join(self, peer: Side) -> None:
        """Pair with `peer` and flush what each side received before the pairing."""
        self.peer, peer.peer = peer, self
        for side in (self, peer):
            other = side.peer
            assert other is not None
            if side._pending and other.transport is not None:
                other.transport.write(b"".join(side._pending))
                side._pending.clear()
            if side.transport is not None and not side._closed:
                side.transport.resume_reading()
            if side._eof and other.transport is not None:
                if other.transport.can_write_eof():
                    other.transport.write_eof()
                else:
                    other.close()

    def close(self) -> None:
        """Close after flushing what is buffered for this side."""
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping anything buffered (a refused or revoked connection)."""
        if self.transport is not None:
            self._closed = True
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self._closed
