"""The DNS server's asyncio front: the query handler, UDP and TCP listeners, and recursors.

`DNSHandler` turns query bytes into response bytes (sans-I/O apart from `recurse`), answering from
the wire cache when it can and from the pure core (answer.py) when it cannot. The UDP listener
reads its socket directly from the event loop's reader callback and drains it in batches, so a
cached answer costs one `recvfrom`, a dictionary lookup, an ID patch and one `sendto` — no
transport or protocol objects in between. Nothing a peer sends can stop the listener: packets too
short for a header are dropped, unparseable ones get FORMERR, a bug answering one question gets
SERVFAIL and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from .answer import Answerer, CatalogView, QueryAnswer
from .cache import WireCache
from .errors import BadRecursor, ListenError, RemoteDNSError, ViewUnavailable
from .mmsg import SLOT, BatchSocket
from .wan_view import WanView

log = logging.getLogger("proconsul.dns")

RECV_SIZE = 4096  # queries are small; a longer datagram is cut and answered FORMERR
BATCH = 256  # datagrams handled per wake-up before yielding to the rest of the event loop
MAX_SEND_BACKLOG = 1024  # answers waiting for a full socket buffer to drain; beyond this they are dropped
MAX_RELAYS = 512  # questions in flight to recursors; beyond this the answer is SERVFAIL at once
MAX_TCP_CLIENTS = 512
TCP_IDLE = 30.0
RCVBUF = 4 << 20


def error_reply(packet: bytes, rcode: int) -> bytes | None:
    """A bare reply with `rcode` and no sections, from a packet's header; None if there is no header."""
    if len(packet) < 12:
        return None
    ident, flags = struct.unpack(">HH", packet[:4])
    opcode = (flags >> 11) & 0xF
    out_flags = 0x8000 | (opcode << 11) | (flags & 0x0100) | (rcode & 0xF)
    return struct.pack(">HHHHHH", ident, out_flags, 0, 0, 0, 0)


def _name_ok(name: object) -> bool:
    """RFC 1035 limits: labels of at most 63 bytes, names of at most 255 on the wire."""
    labels = getattr(name, "label", ())
    return all(0 < len(lab) <= 63 for lab in labels) and sum(len(lab) + 1 for lab in labels) + 1 <= 255


def parse_recursor(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (host, port); port 53 by default."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise BadRecursor(f"recursor {text!r}: expected [address]:port")
        host, port = text[1:end], text[end + 2:] or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRecursor(f"recursor {text!r}: expected host or host:port with a port from 1 to 65535")
    return host, int(port)


# Asks another datacenter's servers: (datacenter, question, udp) -> their answer; raises RemoteDNSError.
Remote = Callable[[str, bytes, bool, str], Awaitable[bytes | None]]  # (datacenter, packet, udp, wan_for)
# Runs a prepared query's definition in its failover datacenters: the first answer with instances, or None.
QueryFailover = Callable[[Mapping[str, Any]], Awaitable[QueryAnswer | None]]


class _FailedOver:
    """The catalog view with one prepared query answered by another datacenter (the answering core then
    builds the reply as for a local answer: TTL, shuffle, SRV or A records, truncation)."""

    def __init__(self, view: CatalogView, answer: QueryAnswer) -> None:
        self._view, self._answer = view, answer

    def prepared_query(self, name: str) -> QueryAnswer | None:
        return self._answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


class DNSHandler:
    """Query bytes in, response bytes out (or "relay this to a recursor"); shared by UDP and TCP."""

    def __init__(self, answerer: Answerer, view: CatalogView, recursors: list[tuple[str, int]],
                 recursor_timeout: float = 2.0, rng: random.Random | None = None,
                 remote: Remote | None = None, query_failover: QueryFailover | None = None,
                 wan_for: str = "") -> None:
        self.remote = remote
        # translate_wan_addrs: answers for an agent of this datacenter about another one carry WAN addresses
        # ("" = off). Questions relayed from other agents carry their own (`handle`/`recurse` argument).
        self.wan_for = wan_for
        self.query_failover = query_failover
        self.answerer = answerer
        self.view = view
        self.recursors = recursors
        self.recursor_timeout = recursor_timeout
        self.rng = rng or random.Random()
        self.udp_cache = WireCache()
        self.tcp_cache = WireCache()
        self.stats = {"answered": 0, "formerr": 0, "dropped": 0, "servfail": 0, "recursed": 0, "remote": 0,
                      "failover": 0}
        view.watch(self.invalidate)

    def invalidate(self, services: set[str] | None) -> None:
        """The catalog changed: drop the cached answers it may have made wrong."""
        self.udp_cache.invalidate(services)
        self.tcp_cache.invalidate(services)

    def handle(self, packet: bytes, udp: bool, wan_for: str | None = None) -> tuple[bytes | None, bool]:
        """(response or None to drop, whether to relay the packet to a recursor instead). `wan_for` names the
        asking agent's datacenter when it translates WAN addresses (None: this handler's own setting); an
        asker of another datacenter gets WAN addresses, answered without the wire cache."""
        packet = bytes(packet)
        wan_for = self.wan_for if wan_for is None else wan_for
        translate = self._translates(wan_for)
        cache = self.udp_cache if udp else self.tcp_cache
        hit = None if translate else cache.get(packet)
        if hit is not None:
            return hit, False
        if len(packet) < 12 or packet[2] & 0x80:  # no header, or a response: never answer those
            self.stats["dropped"] += 1
            return None, False
        try:
            request = DNSRecord.parse(packet)
            ok = all(_name_ok(q.qname) for q in request.questions)
        except Exception:  # dnslib raises several types on bad input; all of them mean FORMERR
            ok = False
        if not ok:
            self.stats["formerr"] += 1
            return error_reply(packet, RCODE.FORMERR), False
        key = packet[2:]
        opt = [r for r in request.ar if r.rtype == QTYPE.OPT]
        if opt and (opt[0].rdata or len(request.ar) > 1):
            # Options such as cookies differ per packet: key on the question with a bare OPT record.
            canon = DNSRecord(request.header, questions=request.questions,
                              ar=[EDNS0(udp_len=opt[0].rclass, ext_rcode=(opt[0].ttl >> 24) & 0xFF,
                                        version=(opt[0].ttl >> 16) & 0xFF,
                                        flags="do" if opt[0].ttl & 0x8000 else "")] * len(opt))
            canon.header.ar = len(opt)
            key = bytes(canon.pack())[2:]
            hit = None if translate else cache.lookup_key(key, packet[:2])
            if hit is not None:
                return hit, False
        view = WanView(self.view) if translate else self.view
        try:
            outcome = self.answerer.answer(request, view, self.rng, udp, bool(self.recursors))
            if outcome.recurse or (outcome.remote and self.remote is not None) or (
                    outcome.failover is not None and self.query_failover is not None):  # answered by `recurse`
                return None, True
            if self.recursors and outcome.response is not None and self._foreign_cnames(outcome.response):
                return None, True  # `recurse` adds the addresses of the hostnames it points to
            assert outcome.response is not None
            data = bytes(outcome.response.pack())
        except ViewUnavailable as e:
            log.warning("DNS: catalog view unavailable: %s", e)
            self.stats["servfail"] += 1
            return error_reply(packet, RCODE.SERVFAIL), False
        except Exception:  # a bug answering one question must not take the listener down
            log.exception("failed to answer a DNS question")
            self.stats["servfail"] += 1
            return error_reply(packet, RCODE.SERVFAIL), False
        self.stats["answered"] += 1
        if outcome.cacheable and not translate:
            cache.add(key, data, outcome.depends, outcome.shuffled)
        return data, False

    def _translates(self, wan_for: str) -> bool:
        """Whether an asker of datacenter `wan_for` (translate_wan_addrs; "" = off) gets WAN addresses."""
        return bool(wan_for) and wan_for.lower() != self.view.datacenter.lower()

    def _foreign_cnames(self, response: DNSRecord) -> list[str]:
        """The hostnames outside our domains that an A/AAAA answer points to with a CNAME (a service registered
        by hostname): Consul resolves them through its recursors and adds their addresses."""
        q = response.questions[0] if response.questions else None
        if q is None or q.qtype not in (QTYPE.A, QTYPE.AAAA):
            return []
        return [str(rr.rdata.label) for rr in response.rr if rr.rtype == QTYPE.CNAME
                and self.answerer.zone_of(str(rr.rdata.label)) is None]

    async def _chase(self, response: DNSRecord, targets: list[str], udp: bool) -> bytes:
        """`response` with the A/AAAA records of each foreign CNAME target, as the recursors give them (a
        target they cannot resolve keeps its CNAME alone). Not cached: the recursors' answers have their own
        lifetimes."""
        qtype = response.questions[0].qtype
        self.stats["cname_chased"] = self.stats.get("cname_chased", 0) + 1
        original = list(response.rr)
        for target in dict.fromkeys(targets):
            query = DNSRecord.question(target, QTYPE[qtype])
            data = await relay_to_recursors(self.recursors, self.recursor_timeout, bytes(query.pack()))
            try:
                found = DNSRecord.parse(data) if data else None
            except Exception:  # a malformed answer from a recursor: keep the CNAME alone
                found = None
            if found is None or found.header.rcode != RCODE.NOERROR:
                continue
            for rr in found.rr:
                if rr.rtype in (QTYPE.A, QTYPE.AAAA, QTYPE.CNAME):
                    response.add_answer(rr)
        data = bytes(response.pack())
        opt = [r for r in response.ar if r.rtype == QTYPE.OPT]
        if udp and len(data) > max(512, opt[0].rclass if opt else 512):
            response.rr = original  # the addresses do not fit a datagram: the CNAMEs alone, as before
            data = bytes(response.pack())
        return data

    async def recurse(self, packet: bytes, tcp: bool = False, wan_for: str | None = None) -> bytes | None:
        """Answer what `handle` could not at once: a question for another datacenter goes to its servers
        (NXDOMAIN for a datacenter nobody knows, SERVFAIL when none of its servers answers); anything
        else is relayed to the recursors in order, SERVFAIL when none answers within the timeout."""
        packet = bytes(packet)
        request = DNSRecord.parse(packet)
        wan_for = self.wan_for if wan_for is None else wan_for
        view = WanView(self.view) if self._translates(wan_for) else self.view
        outcome = self.answerer.answer(request, view, self.rng, not tcp, bool(self.recursors))
        if outcome.failover is not None and self.query_failover is not None:
            self.stats["failover"] += 1
            try:
                found = await self.query_failover(outcome.failover)
            except Exception:  # a bug failing over must answer like no instance, not kill the question
                log.exception("DNS: prepared query failover failed")
                found = None
            if found is None or not found.instances:
                assert outcome.response is not None
                return bytes(outcome.response.pack())  # NXDOMAIN with the SOA, as with no failover
            there = self.answerer.answer(request, _FailedOver(self.view, found), self.rng,  # type: ignore[arg-type]
                                         not tcp, bool(self.recursors))
            return bytes(there.response.pack()) if there.response is not None else error_reply(packet, RCODE.SERVFAIL)
        targets = self._foreign_cnames(outcome.response) if self.recursors and outcome.response is not None else []
        if targets:
            return await self._chase(outcome.response, targets, not tcp)
        if outcome.remote and self.remote is not None:
            self.stats["remote"] += 1
            try:
                answer = await self.remote(outcome.remote, packet, not tcp, wan_for)
            except RemoteDNSError as e:
                log.info("DNS: datacenter %s did not answer: %s", outcome.remote, e)
                if e.rcode == RCODE.NXDOMAIN and outcome.response is not None:
                    return bytes(outcome.response.pack())  # with the SOA, as for any unknown name
                return error_reply(packet, e.rcode)
            return packet[:2] + answer[2:] if answer else error_reply(packet, RCODE.SERVFAIL)
        self.stats["recursed"] += 1
        return await relay_to_recursors(self.recursors, self.recursor_timeout, packet, tcp)


async def relay_to_recursors(recursors: list[tuple[str, int]], timeout: float, packet: bytes,
                             tcp: bool = False) -> bytes | None:
    """Ask the recursors in order (over the client's transport); SERVFAIL when none answers in time."""
    for host, port in recursors:
        try:
            exchange = _exchange_tcp if tcp else _exchange_udp
            return await asyncio.wait_for(exchange(host, port, packet), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            log.warning("recursor %s:%d did not answer: %s", host, port, e or "timeout")
    reply = error_reply(packet, RCODE.SERVFAIL)
    if reply is not None:  # recursion is available, it just failed
        reply = reply[:3] + bytes([reply[3] | 0x80]) + reply[4:]
    return reply


async def _exchange_udp(host: str, port: int, packet: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _OneAnswer(fut, packet[:2]), remote_addr=(host, port))
    try:
        transport.sendto(packet)
        return await fut
    finally:
        transport.close()


async def _exchange_tcp(host: str, port: int, packet: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack(">H", len(packet)) + packet)
        await writer.drain()
        (length,) = struct.unpack(">H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()


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


class UDPServer:
    """The UDP listener: a non-blocking socket read from the loop's reader callback, in batches."""

    def __init__(self, handler: DNSHandler, sock: socket.socket, batched: bool = True) -> None:
        self.handler = handler
        self.sock = sock
        # recvmmsg/sendmmsg where the platform has them: one system call each way per wake-up.
        self._batch = BatchSocket.create(sock) if batched else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: deque[tuple[bytes, object]] = deque()
        self._relays: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable if self._batch is None else self._readable_batched)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
        for task in self._relays:
            task.cancel()
        self.sock.close()

    def _readable(self) -> None:
        # The hot path, inlined: a cached answer is one lookup and an ID patch.
        recv = self.sock.recvfrom
        get = self.handler.udp_cache.ready.get
        send = self.sock.sendto
        for _ in range(BATCH):
            try:
                data, addr = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ECONNREFUSED surfacing from an earlier ICMP error
                log.debug("DNS UDP receive error: %s", e)
                continue
            rotation = get(data[2:])
            if rotation is not None:
                out = data[:2] + next(rotation)
                try:
                    send(out, addr)
                except (BlockingIOError, InterruptedError):
                    self._defer(out, addr)
                except OSError as e:
                    log.debug("DNS UDP send error: %s", e)
            else:
                self.datagram_received(data, addr)

    def _readable_batched(self) -> None:
        # The same hot path over recvmmsg/sendmmsg: each cached answer is written over its question (the
        # ID is already in place) and the answers of one batch leave in one call (mmsg.py).
        b = self._batch
        assert b is not None
        get = self.handler.udp_cache.ready.get
        buf = b.rbuf
        out_len = b.out_len
        for _ in range(max(1, BATCH // b.slots)):
            try:
                n = b.recv()
            except OSError as e:  # e.g. ECONNREFUSED surfacing from an earlier ICMP error
                log.debug("DNS UDP receive error: %s", e)
                continue
            if not n:
                return
            misses = []
            run = 0  # first slot of the run of answers not sent yet
            for i, size in enumerate(b.lengths(n)):
                off = i * SLOT
                rotation = get(bytes(buf[off + 2:off + size])) if size >= 12 else None
                if rotation is not None:
                    body = next(rotation)
                    end = off + 2 + len(body)
                    if end - off <= SLOT:
                        buf[off + 2:end] = body
                        out_len[i] = end - off
                        continue
                    misses.append((i, bytes(buf[off:off + 2]) + body, None))  # too big for a slot: sendto
                else:
                    misses.append((i, bytes(buf[off:off + size]), True))
                if run < i:  # slot i is not answered in place: send the run before it
                    self._send_slots(run, i)
                run = i + 1
            if run < n:
                self._send_slots(run, n)
            for i, data, question in misses:  # before the next recv() reuses the slots
                if question:
                    self.datagram_received(data, b.addr(i))
                else:
                    self.sendto(data, b.addr(i))
            if n < b.slots:
                return

    def _send_slots(self, start: int, stop: int) -> None:
        b = self._batch
        assert b is not None
        for i in range(start + b.send(start, stop), stop):  # the socket is full: the rest wait for it
            self._defer(b.answer(i), b.addr(i))

    def datagram_received(self, data: bytes, addr: object) -> None:
        """Answer one datagram (the slow path: a cache miss, a recursion or bad input)."""
        response, recurse = self.handler.handle(data, udp=True)
        if recurse:
            self._relay(data, addr)
        elif response is not None:
            self.sendto(response, addr)

    def sendto(self, data: bytes, addr: object) -> None:
        if self._backlog:
            self._defer(data, addr)
            return
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._defer(data, addr)
        except OSError as e:
            log.debug("DNS UDP send error: %s", e)

    def _defer(self, data: bytes, addr: object) -> None:
        if len(self._backlog) >= MAX_SEND_BACKLOG:
            return  # the socket buffer is full and so is our backlog: shed load like a busy server
        if not self._backlog and self._loop is not None:
            self._loop.add_writer(self.sock.fileno(), self._writable)
        self._backlog.append((data, addr))

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("DNS UDP send error: %s", e)
            self._backlog.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())

    def _relay(self, data: bytes, addr: object) -> None:
        if len(self._relays) >= MAX_RELAYS or self._loop is None:
            reply = error_reply(data, RCODE.SERVFAIL)
            if reply is not None:
                self.sendto(reply, addr)
            return
        task = self._loop.create_task(self._relay_one(data, addr))
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    async def _relay_one(self, data: bytes, addr: object) -> None:
        answer = await self.handler.recurse(data)
        if answer and self.sock.fileno() >= 0:
            self.sendto(answer, addr)


class TCPServer:
    """Length-prefixed queries on each connection until the client closes or idles out."""

    def __init__(self, handler: DNSHandler) -> None:
        self.handler = handler
        self.clients = 0

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                    (length,) = struct.unpack(">H", head)
                    packet = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                response, recurse = self.handler.handle(packet, udp=False)
                if recurse:
                    response = await self.handler.recurse(packet, tcp=True)
                if response:
                    writer.write(struct.pack(">H", len(response)) + response)
                    await writer.drain()
        except ConnectionError:
            return
        finally:
            self.clients -= 1
            writer.close()


def bind_sockets(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind UDP and TCP on host:port (the same port for both when `port` is 0); ListenError if taken."""
    for _ in range(20 if port == 0 else 1):
        try:
            return _bind_pair(host, port)
        except ListenError:
            if port != 0:
                raise
    # With port 0 the kernel's free UDP port may be taken for TCP: a few tries find one free for both.
    return _bind_pair(host, port)


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]
    except socket.gaierror as e:
        raise ListenError(f"cannot listen for DNS on {host}:{port}: {e.strerror} (check client_addr)") from None
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        udp.setblocking(False)
        udp.bind((host, port))
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        bound = udp.getsockname()[1]
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.setblocking(False)
        tcp.bind((host, bound))
        tcp.listen(128)
    except OSError as e:
        udp.close()
        tcp.close()
        raise ListenError(f"cannot listen for DNS on {host}:{port}: {e.strerror} "
                          "(choose another --dns-port, or -1 to disable DNS)") from None
    return udp, tcp


async def serve(handler: DNSHandler, host: str, port: int, stop: asyncio.Event,
                on_ready: Callable[[int], None] | None = None,
                sockets: tuple[socket.socket, socket.socket] | None = None) -> None:
    """Serve UDP and TCP on host:port (or on already bound `sockets`) until `stop` is set, then close
    both sockets."""
    loop = asyncio.get_running_loop()
    udp_sock, tcp_sock = sockets or bind_sockets(host, port)
    bound = udp_sock.getsockname()[1]
    udp = UDPServer(handler, udp_sock)
    tcp = TCPServer(handler)
    server = None
    try:
        server = await asyncio.start_server(tcp.serve_client, sock=tcp_sock)
        udp.start(loop)
        if on_ready is not None:
            on_ready(bound)
        log.info("DNS listening on %s:%d (UDP and TCP)", host, bound)
        await stop.wait()
    finally:
        udp.close()
        if server is not None:
            server.close()
            await server.wait_closed()
        else:
            tcp_sock.close()
