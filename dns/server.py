"""The DNS server's asyncio front: UDP and TCP listeners, the wire cache, and recursors.

A repeated question costs one dictionary lookup and a 2-byte ID patch: the cache is keyed by the
query packet after its ID (so name case, type, flags and EDNS options are all part of the key) and
is emptied whenever the catalog changes. Each key keeps a few differently shuffled answers and
rotates through them, keeping Consul's per-response shuffle without recomputing. Malformed packets
are answered with FORMERR when they carry a header and dropped when they do not; nothing a peer
sends can stop the listener.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable

from dnslib import RCODE, DNSError, DNSRecord

from .answer import Answerer, CatalogView

log = logging.getLogger("proconsul.dns")

VARIANTS = 4  # differently shuffled answers kept per question
MAX_CACHE = 20_000
TCP_IDLE = 30.0
MAX_TCP_MESSAGE = 65535


def error_reply(packet: bytes, rcode: int) -> bytes | None:
    """A bare reply with `rcode` and no sections, from a packet's header; None if there is no header."""
    if len(packet) < 12:
        return None
    ident, flags = struct.unpack(">HH", packet[:4])
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    out_flags = 0x8000 | (opcode << 11) | rd | (rcode & 0xF)
    return struct.pack(">HHHHHH", ident, out_flags, 0, 0, 0, 0)


def _name_ok(name: object) -> bool:
    """RFC 1035 limits: labels of at most 63 bytes, names of at most 255 on the wire."""
    labels = getattr(name, "label", ())
    return all(len(lab) <= 63 for lab in labels) and sum(len(lab) + 1 for lab in labels) + 1 <= 255


class DNSHandler:
    """Turns query bytes into response bytes (or a recursion request); shared by UDP and TCP."""

    def __init__(self, answerer: Answerer, view: CatalogView, recursors: list[tuple[str, int]],
                 recursor_timeout: float = 2.0, rng: random.Random | None = None) -> None:
        self.answerer = answerer
        self.view = view
        self.recursors = recursors
        self.recursor_timeout = recursor_timeout
        self.rng = rng or random.Random()
        # question bytes after the ID -> [next turn, answer bytes after the ID, …] (VARIANTS answers when full)
        self.cache: dict[bytes, list] = {}
        self.stats = {"queries": 0, "cache_hits": 0, "formerr": 0, "dropped": 0, "recursed": 0}

    def invalidate(self) -> None:
        """The catalog changed: every cached answer may be wrong now."""
        self.cache.clear()

    def cached(self, packet: bytes) -> bytes | None:
        entry = self.cache.get(packet[2:])
        if entry is None or len(entry) <= VARIANTS:
            return None
        turn = entry[0] = entry[0] % VARIANTS + 1
        self.stats["cache_hits"] += 1
        return packet[:2] + entry[turn]

    def handle(self, packet: bytes, udp: bool) -> tuple[bytes | None, bool]:
        """(response or None to drop, whether to relay to a recursor instead)."""
        packet = bytes(packet)
        self.stats["queries"] += 1
        hit = self.cached(packet) if udp else None
        if hit is not None:
            return hit, False
        try:
            request = DNSRecord.parse(packet)
        except (DNSError, ValueError, IndexError, KeyError, struct.error, UnicodeError, TypeError):
            reply = error_reply(packet, RCODE.FORMERR)
            self.stats["formerr" if reply else "dropped"] += 1
            return reply, False
        if request.header.qr:  # a response, not a question: never answer those
            self.stats["dropped"] += 1
            return None, False
        if not all(_name_ok(q.qname) for q in request.questions):
            self.stats["formerr"] += 1
            return error_reply(packet, RCODE.FORMERR), False
        try:
            outcome = self.answerer.answer(request, self.view, self.rng, udp, bool(self.recursors))
            data = bytes(outcome.response.pack())
        except Exception:  # a bug answering one question must not take the listener down
            log.exception("failed to answer a DNS question")
            return error_reply(packet, RCODE.SERVFAIL), False
        if outcome.recurse:
            return None, True
        if udp and len(self.cache) < MAX_CACHE:
            entry = self.cache.setdefault(packet[2:], [0])
            if len(entry) <= VARIANTS:
                entry.append(data[2:])
        return data, False

    async def recurse(self, packet: bytes) -> bytes:
        """Relay a question to the recursors in order; SERVFAIL when none answers in time."""
        self.stats["recursed"] += 1
        loop = asyncio.get_running_loop()
        for host, port in self.recursors:
            fut: asyncio.Future[bytes] = loop.create_future()
            transport = None
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda f=fut: _OneAnswer(f, packet[:2]),
                                                                   remote_addr=(host, port))
                transport.sendto(packet)
                return await asyncio.wait_for(fut, self.recursor_timeout)
            except (TimeoutError, OSError) as e:
                log.warning("recursor %s:%d did not answer: %s", host, port, e or "timeout")
            finally:
                if transport is not None:
                    transport.close()
        return error_reply(packet, RCODE.SERVFAIL) or b""


class _OneAnswer(asyncio.DatagramProtocol):
    """Resolves a future with the first datagram whose ID matches the relayed question's."""

    def __init__(self, fut: asyncio.Future[bytes], ident: bytes) -> None:
        self.fut = fut
        self.ident = ident

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.fut.done() and data[:2] == self.ident:
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: DNSHandler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sendto = transport.sendto  # type: ignore[attr-defined]
        self._cache = self.handler.cache

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # The hot path, inlined: one lookup, rotate among the shuffled answers, patch in the ID.
        entry = self._cache.get(data[2:])
        if entry is not None and len(entry) > VARIANTS:
            turn = entry[0] = entry[0] % VARIANTS + 1
            self._sendto(data[:2] + entry[turn], addr)
            return
        response, recurse = self.handler.handle(data, udp=True)
        if recurse:
            asyncio.get_running_loop().create_task(self._relay(data, addr))
        elif response is not None:
            self.transport.sendto(response, addr)  # type: ignore[union-attr]

    async def _relay(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = await self.handler.recurse(data)
        if answer and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors from clients that went away
        log.debug("DNS UDP error: %s", exc)


async def serve_tcp_client(handler: DNSHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Length-prefixed queries on one connection until the client closes or idles out."""
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = struct.unpack(">H", head)
                packet = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            response, recurse = handler.handle(packet, udp=False)
            if recurse:
                response = await handler.recurse(packet)
            if response:
                writer.write(struct.pack(">H", len(response)) + response)
                await writer.drain()
    except ConnectionError:
        return
    finally:
        writer.close()


async def serve(handler: DNSHandler, host: str, port: int, stop: asyncio.Event,
                on_ready: Callable[[int], None] | None = None) -> None:
    """Serve UDP and TCP on host:port until `stop` is set."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: UDPProtocol(handler), local_addr=(host, port))
    bound = transport.get_extra_info("sockname")[1]
    tcp = await asyncio.start_server(lambda r, w: serve_tcp_client(handler, r, w), host, bound)
    if on_ready is not None:
        on_ready(bound)
    log.info("DNS listening on %s:%d (UDP and TCP)", host, bound)
    try:
        await stop.wait()
    finally:
        transport.close()
        tcp.close()
        await tcp.wait_closed()
