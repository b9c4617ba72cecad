"""The asyncio shell around one `core.Membership`: a UDP and a TCP listener on the pool's port.

The core decides; this module only moves bytes and keeps time. After every input it drains the core's
effect lists (`out`, `timers`, `streams`, `events`, see core.py): datagrams go out of the one UDP socket,
timers become `loop.call_at`, stream exchanges (push-pull, the fallback ping) run as tasks over TCP
(4-byte big-endian length, then a frame), events go to the owner's callback. Time is CLOCK_MONOTONIC,
the loop's clock, read at full resolution (`now`).

Gossip encryption plugs in here, at the edge, and nowhere else: a `Sealer` (`keyring.GossipSealer`,
AES-GCM under the gossip keyring) seals every frame the core produced just before it leaves
(datagram or stream frame) and opens every frame before the core sees it. With no sealer frames
travel as the codec makes them; a frame that does not open is dropped and counted under the reason
the sealer gives (`dropped_key`, `dropped_plaintext`), like any malformed input. A TCP peer whose
first frame does not open is told why in one plaintext error frame (it carries no secret), so a
joining agent with the wrong key reports "no installed gossip key opens it" instead of a reset.

Requests: a stream frame holding one `request` message (codec type 21) is not the core's: it goes to
the owner's `on_request(name, payload, sealed)` and its answer goes back as a `response`. `request`
sends one to a member and returns the answer. The keyring's install/use/remove/list travel this way
(agent/cluster/keyring.py); `sealed` says whether the request arrived encrypted, so the owner can
refuse operations that must be authenticated by the gossip key.

Bad input never crashes the listener: a datagram or frame that does not decode is counted and dropped
by the core; a TCP peer that sends a frame larger than `MAX_INBOUND_FRAME`, stalls past the pool's
`tcp_timeout`, or breaks mid-frame is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from . import codec as c
from .codec import FLAG_ENCRYPTED, STREAM_HEADER
from .core import S_PING, S_PUSH_PULL, Membership
from .errors import JoinError, Malformed, Refused

log = logging.getLogger("proconsul.membership")

MAX_INBOUND_FRAME = 32 << 20  # a push-pull reply of ~50,000 members; the port is unauthenticated
MAX_STREAMS = 128  # TCP exchanges running at once (each direction); beyond that new ones are refused
Event = tuple[str, str, Any]
RequestHandler = Callable[[str, bytes, bool], bytes]  # (name, payload, arrived sealed) -> answer; RequestRefused
DROP_LOG_INTERVAL = 10.0  # seconds between two warnings about frames that did not open


class RequestRefused(Exception):
    """Raised by an `on_request` handler to answer a request with an error (the text travels back)."""


class Sealer(Protocol):
    """The gossip-encryption hook (AES-GCM under the keyring, in the security issue)."""

    def seal(self, frame: bytes) -> bytes:
        """The bytes to send for one frame the core produced."""
        ...

    def open(self, data: bytes) -> bytes:
        """The frame inside received bytes; raises `Malformed` when they do not open."""
        ...


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """host, host:port or [v6]:port, as Consul's -join takes them."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise JoinError(f"join address {text!r} has no host")
    try:
        p = int(port) if port else default_port
    except ValueError:
        raise JoinError(f"join address {text!r}: port {port!r} is not a number") from None
    if not 0 < p < 65536:
        raise JoinError(f"join address {text!r}: port {p} is out of range")
    return host, p


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.pool._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable for a dead peer: expected
        log.debug("gossip: UDP error: %s", exc)


class Pool:
    """One gossip pool member on a real network: `start`, `join`, `leave`, `stop`."""

    def __init__(self, core: Membership, bind: str, port: int, *, on_events: Callable[[list[Event]], None],
                 sealer: Sealer | None = None, on_request: RequestHandler | None = None,
                 allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self.core = core
        # serf_lan_allowed_cidrs / serf_wan_allowed_cidrs: packets and connections from elsewhere are dropped
        # (counted as dropped_cidr) before anything reads them; empty: from anywhere.
        self.allowed = tuple(allowed)
        self.bind = bind
        self.port = port
        self.on_events = on_events
        self.sealer = sealer
        self.on_request = on_request
        self._last_drop_log = float("-inf")
        self.blocked: set[tuple[str, int]] = set()  # peer addresses we drop traffic to and from (fault tests)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # exchanges we started
        self._conns: set[asyncio.StreamWriter] = set()  # exchanges peers started
        self._timers: set[asyncio.TimerHandle] = set()
        self._left = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        """Bind UDP and TCP on the same port (the bound one when `port` is 0) and start the core."""
        loop = self._loop = asyncio.get_running_loop()
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), local_addr=(self.bind,
                                                                                                    self.port))
            bound = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve, self.bind, bound)
            except OSError:
                transport.close()
                if self.port or attempt == 19:  # a fixed port taken for TCP is the caller's error
                    raise
                continue
            self._udp = transport  # type: ignore[assignment]
            self.port = bound
            break
        self.core.start(self.now())
        self._drain()
        return self.port

    def now(self) -> float:
        # CLOCK_MONOTONIC, the clock both asyncio's and uvloop's loop.time() read — but uvloop's ticks in
        # whole milliseconds, too coarse for the probe round trips that network coordinates are made of.
        return time.monotonic()

    async def stop(self) -> None:
        """Stop at once (after `leave` when leaving gracefully): no more probes, listeners closed."""
        self.core.stop()
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for w in list(self._conns):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def leave(self, timeout: float) -> bool:
        """Broadcast that we leave and wait (up to `timeout`) until the news has been sent as often as news
        is. Returns whether it was."""
        self.core.leave(self.now())
        self._drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._left.wait(), timeout)
        return self._left.is_set()

    async def join(self, addresses: list[str], default_port: int) -> int:
        """A push-pull with each address; returns how many answered. Raises JoinError if none did."""
        ok, errors = 0, []
        for text in addresses:
            try:
                host, port = parse_address(text, default_port)
                err = await self._exchange(S_PUSH_PULL, (host, port), self.core.push_pull_open(True), "join",
                                           self.now() + self.core.t.tcp_timeout)
                if err:
                    raise JoinError(err)
                ok += 1
            except (JoinError, OSError) as e:
                errors.append(f"{text}: {e or type(e).__name__}")
        if not ok:
            raise JoinError("could not join any of " + "; ".join(errors))
        return ok

    # ------------------------------------------------------------------ the core's effects
    def flush(self) -> None:
        """Carry out what the core asked for after a call made on it from outside (a user event)."""
        self._drain()

    def _drain(self) -> None:
        core = self.core
        if core.out:
            out, core.out = core.out, []
            udp = self._udp
            for dest, data in out:
                if udp is None or dest in self.blocked:
                    continue
                if self.sealer is not None:
                    data = self.sealer.seal(data)
                with contextlib.suppress(OSError):
                    udp.sendto(data, dest)
        if core.timers:
            timers, core.timers = core.timers, []
            loop = self._loop
            assert loop is not None
            for when, kind, token in timers:
                holder: list[asyncio.TimerHandle] = []
                h = loop.call_at(when, self._fire, kind, token, holder)
                holder.append(h)
                self._timers.add(h)
        if core.streams:
            streams, core.streams = core.streams, []
            for kind, dest, body, token, deadline in streams:
                if len(self._tasks) >= MAX_STREAMS:
                    core.stream_failed(self.now(), kind, token)
                    continue
                self._spawn(self._exchange(kind, dest, body, token, deadline))
        if core.events:
            events, core.events = core.events, []
            try:
                self.on_events(events)
            except Exception:  # the owner's bug must not stop membership
                log.exception("gossip: event handler failed")
        if core.left and not self._left.is_set() and core.leave_spread:
            self._left.set()

    def _fire(self, kind: int, token: Any, holder: list[asyncio.TimerHandle]) -> None:
        if holder:
            self._timers.discard(holder[0])
        try:
            self.core.on_timer(self.now(), kind, token)
        except Exception:  # a bug must not silently end probing: say so loudly, keep the pool running
            log.exception("gossip: timer %d failed", kind)
        self._drain()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ UDP in
    def _refused_source(self, addr: tuple[Any, ...]) -> bool:
        """Whether `addr` is outside the allowed networks (counted and, now and then, logged)."""
        if not self.allowed:
            return False
        try:
            ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
        except ValueError:
            ip = None
        if ip is not None and any(ip in net for net in self.allowed):
            return False
        self.core.count("dropped_cidr")
        now = self.now()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.warning("gossip: dropped traffic from %s:%s, outside the allowed networks (%s)", addr[0], addr[1],
                        ", ".join(str(n) for n in self.allowed))
        return True

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if (addr[0], addr[1]) in self.blocked or (self.allowed and self._refused_source(addr)):
            return
        if self.sealer is not None:
            try:
                data = self.sealer.open(data)
            except Malformed as e:
                self._dropped(e, addr)
                return
        try:
            self.core.on_packet(self.now(), data)
        except Exception:  # the core drops what it cannot parse; anything else is our bug, not the peer's
            self.core.count("dropped_error")
            log.exception("gossip: a datagram from %s:%s could not be handled", addr[0], addr[1])
        self._drain()

    def _dropped(self, e: Malformed, addr: tuple[Any, ...]) -> None:
        """Count a frame that did not open; say so in the log now and then (a wrong key floods otherwise)."""
        self.core.count("dropped_" + e.reason)
        now = self.now()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.warning("gossip: dropped a frame from %s:%s: %s (dropped so far: %d no key, %d plaintext)",
                        addr[0], addr[1], e, self.core.stats.get("dropped_key", 0),
                        self.core.stats.get("dropped_plaintext", 0))

    # ------------------------------------------------------------------ TCP
    async def _read_raw(self, reader: asyncio.StreamReader, deadline: float) -> bytes:
        timeout = max(0.001, deadline - self.now())
        head = await asyncio.wait_for(reader.readexactly(STREAM_HEADER.size), timeout)
        (size,) = STREAM_HEADER.unpack(head)
        if size > MAX_INBOUND_FRAME:
            raise Malformed("oversized", f"a {size}-byte frame")
        return await asyncio.wait_for(reader.readexactly(size), max(0.001, deadline - self.now()))

    async def _read_frame(self, reader: asyncio.StreamReader, deadline: float) -> bytes:
        """The next reply of a peer we opened an exchange with, opened. A reply that does not open but
        is the peer's plaintext error frame (it could not open ours) raises `Refused` with its text."""
        data = await self._read_raw(reader, deadline)
        if self.sealer is None:
            return data
        try:
            return self.sealer.open(data)
        except Malformed:
            if not data[1:2] or data[1] & FLAG_ENCRYPTED:
                raise
            try:
                m = self.core.codec.message(data, c.PP_ERROR)
            except Malformed:
                raise Malformed("plaintext", "the peer answered in plaintext, and this pool's gossip is "
                                             "encrypted") from None
            raise Refused(m[1]) from None

    def _frame(self, body: bytes, seal: bool = True) -> bytes:
        if seal and self.sealer is not None:
            body = self.sealer.seal(body)
        return struct.pack(">I", len(body)) + body

    def _answer(self, body: bytes, sealed: bool) -> bytes:
        """Our `response` frame to one `request` frame."""
        codec = self.core.codec
        try:
            m = codec.message(body, c.REQUEST)
        except Malformed as e:
            self.core.count("dropped_" + e.reason)
            return codec.body(c.response(f"malformed request: {e}"))
        if self.on_request is None:
            return codec.body(c.response(f"this member does not answer {m[1]!r} requests"))
        self.core.count("requests_served")
        try:
            return codec.body(c.response("", self.on_request(m[1], m[2], sealed)))
        except RequestRefused as e:
            return codec.body(c.response(str(e) or "refused"))
        except Exception:  # the owner's bug must not break the listener; the asker gets a reason
            log.exception("gossip: %r request failed", m[1])
            return codec.body(c.response(f"{m[1]!r} failed on this member (see its log)"))

    async def request(self, dest: tuple[str, int], name: str, payload: bytes, timeout: float) -> bytes:
        """Send one request to the member at `dest` and return its answer's payload. Raises `Refused`
        (the member answered with an error), `Malformed`, `OSError` or `TimeoutError`."""
        if dest in self.blocked:
            raise ConnectionRefusedError("blocked")
        deadline = self.now() + timeout
        reader, writer = await asyncio.wait_for(asyncio.open_connection(dest[0], dest[1]), timeout)
        try:
            writer.write(self._frame(self.core.codec.body(c.request(name, payload))))
            await asyncio.wait_for(writer.drain(), max(0.001, deadline - self.now()))
            reply = await self._read_frame(reader, deadline)
            try:
                m = self.core.codec.message(reply, c.RESPONSE)
            except Malformed:
                m = self.core.codec.message(reply, c.PP_ERROR)  # an older member, or a refusal
                raise Refused(m[1]) from None
            if m[1]:
                raise Refused(m[1])
            return bytes(m[2])
        except asyncio.IncompleteReadError:
            raise Malformed("truncated", "the member closed the connection without an answer") from None
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        core = self.core
        try:
            if len(self._conns) >= MAX_STREAMS or (peer[0], peer[1]) in self.blocked or (
                    self.allowed and self._refused_source(peer)):
                return
            self._conns.add(writer)
            deadline = self.now() + core.t.tcp_timeout
            while True:
                try:
                    raw = await self._read_raw(reader, deadline)
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        core.count("dropped_truncated")
                    return
                body = raw
                if self.sealer is not None:
                    try:
                        body = self.sealer.open(raw)
                    except Malformed as e:
                        self._dropped(e, peer)
                        if e.reason in ("key", "plaintext"):  # tell the peer why, in clear: it cannot read ours
                            why = str(e).split(": ", 1)[-1]
                            writer.write(self._frame(core.codec.body(c.pp_error(f"gossip encryption: {why}")),
                                                     seal=False))
                            await asyncio.wait_for(writer.drain(), max(0.001, deadline - self.now()))
                        return
                if core.codec.is_request(body):
                    writer.write(self._frame(self._answer(body, len(raw) > 1 and bool(raw[1] & FLAG_ENCRYPTED))))
                    await asyncio.wait_for(writer.drain(), max(0.001, deadline - self.now()))
                    return
                reply = core.on_stream(self.now(), body)
                self._drain()
                if reply is None:
                    return
                writer.write(self._frame(reply))
                await asyncio.wait_for(writer.drain(), max(0.001, deadline - self.now()))
        except Malformed as e:
            core.count("dropped_" + e.reason)
        except (OSError, TimeoutError) as e:
            log.debug("gossip: TCP peer %s dropped: %s", peer, e or type(e).__name__)
        except Exception:  # never let a peer hurt the listener
            log.exception("gossip: TCP exchange with %s failed", peer)
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _exchange(self, kind: int, dest: tuple[str, int], body: bytes, token: Any, deadline: float) -> str:
        """Run one stream exchange we start; "" when it completed, else why not."""
        core = self.core
        writer = None
        try:
            if dest in self.blocked:
                raise ConnectionRefusedError("blocked")
            reader, writer = await asyncio.wait_for(asyncio.open_connection(dest[0], dest[1]),
                                                    max(0.001, deadline - self.now()))
            nxt: bytes | None = body
            while nxt is not None:
                writer.write(self._frame(nxt))
                await asyncio.wait_for(writer.drain(), max(0.001, deadline - self.now()))
                reply = await self._read_frame(reader, deadline)
                nxt = core.stream_reply(self.now(), kind, token, reply)
                self._drain()
            return ""
        except Refused as e:
            log.warning("gossip: %s:%d refused us: %s", dest[0], dest[1], e)
            core.stream_failed(self.now(), kind, token)
            return f"refused: {e}"
        except (Malformed, OSError, TimeoutError, EOFError) as e:
            if kind != S_PING:
                log.debug("gossip: exchange with %s:%d failed: %s", dest[0], dest[1], e or type(e).__name__)
            core.stream_failed(self.now(), kind, token)
            return str(e) or type(e).__name__
        finally:
            if writer is not None:
                writer.close()
            self._drain()
