"""HTTP mode (`protocol = "http"`): the proxy reads HTTP/1.1 and decides per request.

Inbound (public listener): every request is checked against L7 intentions (path, method, headers) and
answered 403 when denied; allowed requests go to the local application over a kept-alive connection
with a request timeout, and the application learns the caller's identity from
`X-Forwarded-Client-Cert` (Envoy's header).

Outbound (upstream listener): every request picks an instance (so keep-alive connections from the
application still spread over instances) and reuses a pooled mTLS connection to it. A connect failure
is retried on another instance; an idempotent request with a small body answered 502/503/504 is
retried too — all within the retry budget. No healthy instance: 503 at once; a slow upstream: 504 at
the request timeout. Each request counts in the golden metrics (rate, status class, latency).

Shape: like L4, protocol-level transports and no task per request. A `Front` is the connection that
sends us requests (the application, or a peer's sidecar), a `Back` the one we send them on (an
instance's sidecar, or the application); an `Exchange` is one request and its response between them.
Bytes are parsed by httptools (`h1`) in the transports' callbacks and written straight on; only a
dial is a task. Requests on one connection are served in order (pipelined ones wait, bounded).
Upgrades (websockets) become an L4 tunnel once the server answers 101.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from proconsul.connect.proxy import h1, l7
from proconsul.connect.proxy.accesslog import DETAILS
from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance, UpstreamPool
from proconsul.connect.proxy.breaker import REFUSE, SEND
from proconsul.connect.proxy.config import Upstream
from proconsul.connect.proxy.dial import DialRefused, dial, instance_key
from proconsul.connect.proxy.metrics import Link
from proconsul.connect.proxy.routing import Decision
from proconsul.connect.proxy.tls import MeshClientContext
from proconsul.connect.proxy.tracing import CLIENT, SERVER, TraceContext

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

log = logging.getLogger("proconsul.proxy")
MAX_QUEUED = 16  # pipelined requests read ahead of the one being served
HIGH_WATER = 256 * 1024


# ---------------------------------------------------------------------- the connection we send requests on
class Back(asyncio.Protocol):
    """A connection requests go out on: an instance's sidecar (mTLS, pooled) or the local application."""

    __slots__ = ("transport", "reader", "exchange", "closed", "key", "link", "tunnel", "_ctx", "_ssl_object", "loop",
                 "timer", "timer_at")

    def __init__(self, link: Link | None, key: str = "", ctx: MeshClientContext | None = None) -> None:
        self.transport: Any = None
        self.reader = h1.ResponseReader(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.key = key
        self.link = link
        self.tunnel: Front | None = None
        self._ctx = ctx  # hands the TLS session back for resumption (see tls.MeshClientContext)
        self._ssl_object: Any = None
        self.loop = asyncio.get_running_loop()
        # The request timeout of the exchange in flight: one timer per connection, re-armed lazily. A timer per
        # request (call_later, then cancel) cost ~2 µs a request on each side; this one fires at most once per
        # timeout period while the connection is busy, and then only re-arms for the exchange now in flight.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def arm(self, deadline: float) -> None:
        """The exchange in flight times out at `deadline` (loop time)."""
        if self.timer is not None:
            if self.timer_at <= deadline:
                return  # fires first and re-arms for what is left
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._deadline)
        self.timer_at = deadline

    def _deadline(self) -> None:
        self.timer = None
        ex = self.exchange
        if ex is None or not ex.deadline or self.closed:
            return
        if self.loop.time() >= ex.deadline - 0.001:  # the loop's clock has millisecond steps
            ex.timed_out()
        else:
            self.arm(ex.deadline)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]
        if self._ctx is not None:
            self._ssl_object = transport.get_extra_info("ssl_object")
            if not self._ctx.wants_session(self.key, self._ssl_object, time.monotonic()):
                self._ctx = None

    def data_received(self, data: bytes) -> None:
        if self._ctx is not None:
            self._ctx.keep_session(self.key, self._ssl_object, time.monotonic())
            self._ctx = None
        if self.link is not None:
            self.link.bytes_in += len(data)
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        ex = self.exchange
        try:
            rest = self.reader.feed(data)
        except h1.BadMessage as e:
            self._broken(f"bad response: {e}")
            return
        finally:
            if ex is not None:
                ex.front.flush()  # head and body of a small response leave in one write (one TLS record)
        if rest is not None and self.tunnel is not None:  # 101: the bytes after the head are the new protocol
            if rest:
                self.tunnel.transport.write(rest)

    def _broken(self, why: str) -> None:
        ex, self.exchange = self.exchange, None
        self.abort()
        if ex is not None:
            ex.back_failed(why)

    # h1 sink: the response
    def on_head(self, head: h1.Head) -> None:
        if self.exchange is not None:
            self.exchange.response_head(self, head)

    def on_body(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(data)

    def on_end(self) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.response_end(self)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.front.pause()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.front.resume()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None and self.tunnel.transport.can_write_eof():
            self.tunnel.transport.write_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tunnel is not None:
            self.tunnel.transport.close()
            return
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.back_failed(f"connection closed{': ' + str(exc) if exc else ''}")

    def reusable(self) -> bool:
        return not self.closed and self.exchange is None and self.tunnel is None

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()


# ---------------------------------------------------------------------- one request and its response
class Exchange:
    """One request from a Front and its response, over one or more attempts on Backs."""

    __slots__ = ("front", "head", "held", "held_size", "streaming", "request_done", "back", "attempt", "tried",
                 "inst", "deadline", "responded", "draining", "resp_chunked", "started", "close_after", "denied",
                 "dispatched", "pending_tunnel", "interim", "until_close", "decision", "pool",
                 "admitted", "status", "flag", "bytes_in", "bytes_out", "trace", "why")

    def __init__(self, front: Front, head: h1.Head) -> None:
        self.front = front
        self.head = head
        self.held: list[bytes] = []  # request body kept for a retry (until it grows past RETRY_BODY_MAX)
        self.held_size = 0
        self.streaming = False  # the body goes straight to the Back as it arrives (no retry possible)
        self.request_done = False
        self.back: Back | None = None
        self.attempt = 0
        self.tried: set[str] = set()
        self.inst: Instance | None = None
        self.deadline = 0.0  # when the attempt in flight times out (its Back's loop time), 0 when none
        self.responded = False  # a response head went to the Front: no retry, no error page any more
        self.draining = False  # reading a retryable 5xx to the end before trying elsewhere
        self.resp_chunked = False
        self.started = time.monotonic()
        self.close_after = not head.keep_alive
        self.denied = False
        self.why = ""  # the intention that denied it
        self.dispatched = False
        self.pending_tunnel = b""
        self.interim = False  # a 1xx before the real response
        self.until_close = False  # the response body ends when the Back closes (no length, not chunked)
        self.decision: Decision | None = None  # the discovery chain's route and split for this request
        self.pool: UpstreamPool | None = None  # where `inst` came from
        self.admitted: bool | None = None  # by the circuit breaker: True in flight, False queued, None not yet
        self.status = 0  # the response status the caller got
        self.flag = "-"  # Envoy's response flag when the proxy answered (UH, UO, UT, UF, NR, RL)
        self.bytes_in = 0  # request body bytes from the caller
        self.bytes_out = 0  # response body bytes to the caller
        self.trace: TraceContext | None = None  # this side's span, when tracing is on

    # ------------------------------------------------------------------ the request, from the Front
    def request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.denied:
            return
        if self.streaming and self.back is not None:
            self.back.send(h1.chunk(data) if self.head.chunked else data)
            return
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > h1.RETRY_BODY_MAX:
            if not self.streaming:
                self.streaming = True  # too big to hold: send as it comes, without retries
                self.front.dispatch(self)
            elif self.held_size > 4 * h1.RETRY_BODY_MAX:
                self.front.pause()  # still dialing: wait for the connection before reading more

    def request_end(self) -> None:
        self.request_done = True
        if self.streaming and self.back is not None and not self.denied:
            if self.head.chunked:
                self.back.send(h1.LAST_CHUNK)
        elif not self.dispatched:
            self.front.dispatch(self)

    @property
    def retryable_body(self) -> bool:
        return not self.streaming and self.request_done

    # ------------------------------------------------------------------ sending on a Back
    def send_on(self, back: Back, extra: list[bytes], timeout: float) -> None:
        """Write the request (head and what is held of the body) on `back` and wait for its response."""
        self.back = back
        back.exchange = self
        if self.head.method == b"HEAD":
            back.reader.expect_no_body()
        parts = [h1.request_head(self.head, extra, b"x-forwarded-client-cert", self.front.host)]
        if self.head.chunked:
            parts += [h1.chunk(c) for c in self.held]
            if self.request_done and not self.streaming:
                parts.append(h1.LAST_CHUNK)
        else:
            parts += self.held
        if self.streaming:
            self.held = []
            if self.request_done and self.head.chunked:
                parts.append(h1.LAST_CHUNK)
        back.send(b"".join(parts))
        self.deadline = back.loop.time() + timeout
        back.arm(self.deadline)
        if self.front.paused_by_back and back.transport.get_write_buffer_size() < HIGH_WATER:
            self.front.resume()

    def cancel_timer(self) -> None:
        self.deadline = 0.0

    # ------------------------------------------------------------------ the response, from the Back
    def response_head(self, back: Back, head: h1.Head) -> None:
        front = self.front
        if 100 <= head.status < 200 and not head.upgrade:
            self.interim = True  # 100 Continue and the like: the proxy answered Expect itself
            return
        if not self.responded and front.should_retry(self, head.status):
            self.draining = True
            return
        self.responded = True
        self.status = head.status
        front.responded(self, head.status)
        if self.decision is not None and self.decision.response_ops is not None:
            head.headers = self.decision.response_ops.apply(head.headers)
        if head.upgrade and self.head.upgrade:
            front.write(h1.response_head(head, False, False))
            front.flush()
            self.cancel_timer()
            front.become_tunnel(back)
            return
        http10 = self.head.version == b"1.0"
        self.until_close = not head.chunked and head.length < 0 and head.status not in h1.NO_BODY_STATUS \
            and self.head.method != b"HEAD"
        # Close after: when asked; when the request is not all read (an early answer); after a refused
        # upgrade; when the body ends with the close; for an HTTP/1.0 client of a chunked body (it gets
        # the body unchunked, ended by the close).
        close = self.close_after or not self.request_done or self.head.upgrade or self.until_close or \
            (http10 and head.chunked)
        self.close_after = close
        self.resp_chunked = head.chunked and not http10
        front.write(h1.response_head(head, http10, close))

    def response_body(self, data: bytes) -> None:
        if self.draining:
            return
        self.bytes_out += len(data)
        self.front.link.bytes_out_to_client(len(data))
        self.front.write(h1.chunk(data) if self.resp_chunked else data)

    def response_end(self, back: Back) -> None:
        if self.interim:
            self.interim = False
            back.exchange = self  # the real response follows on the same connection
            return
        self.cancel_timer()
        self.back = None
        if self.draining:
            self.draining = False
            self.front.release(back, self, reusable=True)
            self.front.retry(self, f"{self.inst.id if self.inst else '?'} answered 5xx")
            return
        if self.resp_chunked:
            self.front.write(h1.LAST_CHUNK)
        self.front.release(back, self, reusable=self.request_done)
        self.front.finish(self)

    def back_failed(self, why: str) -> None:
        self.cancel_timer()
        self.back = None
        if self.responded and not self.draining:
            if self.until_close:
                self.front.abandon(self)
                self.front.finish(self)  # the close is how this response ends
            else:
                self.front.abort()  # part of a response went out: the connection cannot carry an error now
            return
        self.draining = False
        self.front.attempt_failed(self, why)

    def timed_out(self) -> None:
        self.deadline = 0.0
        back, self.back = self.back, None
        if back is not None:
            back.exchange = None
            back.abort()
        self.front.timed_out(self)


# ---------------------------------------------------------------------- the connection requests come in on
class Front(asyncio.Protocol):
    """A connection that sends us requests; subclasses decide where they go."""

    __slots__ = ("rt", "transport", "reader", "queue", "link", "closed", "paused_by_back", "_paused", "tunnel_back",
                 "bad", "out", "host", "peer", "fixed")

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: Any = None
        self.reader = h1.RequestReader(self)
        self.queue: deque[Exchange] = deque()
        self.link: Any = None
        self.closed = False
        self.paused_by_back = False
        self._paused = False
        self.tunnel_back: Back | None = None
        self.bad = False
        self.out: list[bytes] = []  # response bytes gathered while a Back's input is parsed, written at once
        self.host = b""  # Host for an HTTP/1.0 request without one
        self.peer = ""  # "address:port" of the caller, for access logs (looked up on first use)
        self.fixed: dict[tuple[int, int, int], l7.Fixed] = {}  # per route and instance, for logs and spans

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.tunnel_back is not None:
            self.link.bytes_in_from_client(len(data))
            self.tunnel_back.send(data)
            return
        if self.bad:
            return
        self.link.bytes_in_from_client(len(data))
        try:
            rest = self.reader.feed(data)
        except h1.BadMessage as e:
            self.bad_request(str(e))
            return
        if rest is not None:  # an upgrade request: what follows waits for the server's 101
            if self.queue:
                self.queue[-1].pending_tunnel += rest
            self.transport.pause_reading()
            self._paused = True
        elif len(self.queue) > MAX_QUEUED and not self._paused:
            self.transport.pause_reading()
            self._paused = True

    # h1 sink: requests
    def on_head(self, head: h1.Head) -> None:
        ex = Exchange(self, head)
        self.queue.append(ex)
        self.link.link.requests += 1
        self.admit(ex)
        if not ex.denied and head.expect_continue and head.version == b"1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the body is read here, not upstream
        if head.upgrade and not ex.denied and len(self.queue) == 1:
            ex.streaming = True
            self.dispatch(ex)

    def on_body(self, data: bytes) -> None:
        self.queue[-1].request_body(data)

    def on_end(self) -> None:
        ex = self.queue[-1]
        if ex.head.upgrade and not ex.denied:
            ex.request_done = True
            return
        ex.request_end()

    # ------------------------------------------------------------------ serving in order
    def dispatch(self, ex: Exchange) -> None:
        """Send `ex` on when it is first in line (a pipelined request waits for the one before)."""
        if self.queue and self.queue[0] is ex and not ex.dispatched:
            ex.dispatched = True
            self.send(ex)

    def finish(self, ex: Exchange) -> None:
        """`ex` is answered: account for it and serve the next request, or close."""
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.done(ex)
        if ex.close_after or not ex.request_done:
            self.close()
            return
        if self.queue:
            nxt = self.queue[0]
            if nxt.request_done or nxt.streaming or nxt.head.upgrade:
                if nxt.head.upgrade:
                    nxt.streaming = True
                self.dispatch(nxt)
        if self._paused and len(self.queue) <= MAX_QUEUED and not self.paused_by_back and self.tunnel_back is None:
            self._paused = False
            self.transport.resume_reading()

    def become_tunnel(self, back: Back) -> None:
        """The server switched protocols: from now on both sides are joined byte for byte (L4)."""
        ex = self.queue.popleft() if self.queue else None
        if ex is not None:
            self.done(ex)
            self.abandon(ex)  # the instance's request is over; the tunnel is a connection of its own
        self.tunnel_back = back
        back.tunnel = self
        back.exchange = None
        pending = ex.pending_tunnel if ex is not None else b""
        if pending:
            back.send(pending)
        self._paused = False
        self.transport.resume_reading()

    def reply(self, ex: Exchange, status: int, text: str, flag: str = "-") -> None:
        """Answer `ex` ourselves (403, 502, 503, 504) with Envoy's response flag for the access log."""
        ex.responded = True
        ex.status = status
        ex.flag = flag
        self.link.link.response(status)
        close = ex.close_after or not ex.request_done
        ex.close_after = close
        self.write(h1.simple_response(status, text, close))
        self.flush()
        self.finish(ex)

    def bad_request(self, why: str) -> None:
        self.bad = True
        log.debug("%s: bad request: %s", self.describe(), why)
        if not any(ex.responded for ex in self.queue) and self.transport is not None:
            self.transport.write(h1.simple_response(400, "bad request", close=True))
        self.close()

    # ------------------------------------------------------------------ flow control
    def pause(self) -> None:
        """The Back's write buffer is full: stop reading request bytes until it drains."""
        if not self.paused_by_back and self.transport is not None:
            self.paused_by_back = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused_by_back and self.transport is not None:
            self.paused_by_back = False
            if not self._paused:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        back = self.tunnel_back or (self.queue[0].back if self.queue else None)
        if back is not None and back.transport is not None:
            back.transport.pause_reading()

    def resume_writing(self) -> None:
        back = self.tunnel_back or (self.queue[0].back if self.queue else None)
        if back is not None and back.transport is not None:
            back.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.tunnel_back is not None and self.tunnel_back.transport.can_write_eof():
            self.tunnel_back.transport.write_eof()
            return None if self.transport.get_extra_info("sslcontext") else True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel_back is not None:
            self.tunnel_back.close()
        for ex in self.queue:
            ex.cancel_timer()
            if ex.back is not None:
                ex.back.exchange = None
                ex.back.abort()
                self.abandon(ex)
        self.queue.clear()
        self.lost()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.flush()
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.out.clear()
            self.transport.abort()

    # ------------------------------------------------------------------ what a mode decides
    def admit(self, ex: Exchange) -> None:
        """Check a request when its head arrives (inbound: L7 intentions)."""

    def send(self, ex: Exchange) -> None:
        raise NotImplementedError

    def should_retry(self, ex: Exchange, status: int) -> bool:
        return False

    def retry(self, ex: Exchange, why: str) -> None:
        self.attempt_failed(ex, why)

    def attempt_failed(self, ex: Exchange, why: str) -> None:
        raise NotImplementedError

    def timed_out(self, ex: Exchange) -> None:
        raise NotImplementedError

    def release(self, back: Back, ex: Exchange, reusable: bool) -> None:
        raise NotImplementedError

    def responded(self, ex: Exchange, status: int) -> None:
        self.link.link.response(status)

    def done(self, ex: Exchange) -> None:
        now = time.monotonic()
        self.link.link.latency.observe(now - ex.started)
        rt = self.rt
        alog, tracer, trace = rt.access_log, rt.tracer, ex.trace
        sampled = trace is not None and trace.sampled and tracer is not None
        if alog is None and not sampled and rt.tap is None:
            return  # nobody reads the record (no access log, no tap watcher, no sampled span): not even built
        if rt.tap is None and not ex.denied and (alog is None or alog.default_format):
            # The common case, without the record: the line and the span are kept as what is at hand here (the
            # request's head, times, outcome, and what the connection's fixed part is made from) and made in
            # the log's and the exporter's batches, where what the connection, its route and instance decide
            # is looked up (`fixed_of`). Measured: a µs of Python in the request's path costs the whole proxy
            # 2–3 µs, in a batch's loop about its loop figure.
            if not self.peer:
                self.peer_address()  # read now: a closed connection's transport may no longer say it
            scope = self.scope()  # what can change before the batch is made is taken now
            if alog is not None:
                alog.later((time.time(), now - ex.started, ex.head, ex.status, ex.flag, ex.bytes_in, ex.bytes_out,
                            self, ex.decision, ex.inst, scope))
            if sampled:
                head = ex.head  # its method and target only: the span keeps nothing else of the request
                tracer.later((trace, time.time_ns(), ex.status, ex.flag, head.method, head.target,  # type: ignore[union-attr]
                              self, ex.decision, ex.inst, scope))
            return
        l7.publish(rt, self.log_record(ex, now), ex.started, now, self.link.inbound, trace, ex.status, ex.flag)

    def log_record(self, ex: Exchange, now: float) -> dict[str, Any]:
        """The access-log fields of `ex` (Envoy's names) this side knows."""
        head = ex.head
        return {"start_time": time.time() - (now - ex.started), "method": head.method.decode("latin-1"),
                "path": head.target.decode("latin-1"), "protocol": "HTTP/" + head.version.decode(),
                "response_code": ex.status, "response_flags": ex.flag,
                "response_code_details": DETAILS.get(ex.flag, "via_upstream" if ex.status else ""),
                "bytes_received": ex.bytes_in,
                "bytes_sent": ex.bytes_out, "duration": int((now - ex.started) * 1000),
                "headers": head.headers, **self.fixed_fields(ex.decision, ex.inst, self.scope())}

    def fixed_of(self, d: Decision | None, inst: Instance | None, scope: object) -> l7.Fixed:
        """What is told about this connection's requests that took route decision `d` to `inst` (`scope`:
        what `scope()` said then), made once (`fixed_fields`)."""
        return l7.Fixed.of(self.fixed, d, inst, scope, self.fixed_fields)

    def peer_address(self) -> str:
        """"address:port" of the caller (looked up once)."""
        if not self.peer and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
        return self.peer

    def fixed_fields(self, d: Decision | None, inst: Instance | None, scope: object) -> dict[str, Any]:
        """The access-log fields the connection, a request's route decision `d`, its instance and `scope` (what
        `scope()` returned for it) decide: the same for every request of the connection that took that route
        to that instance."""
        return {"downstream_remote_address": self.peer_address()}

    def scope(self) -> object:
        """What `fixed_fields` reads besides the route and the instance (a new one makes them again)."""
        return self.rt.config

    def abandon(self, ex: Exchange) -> None:
        """The caller went away while `ex` was in flight (accounting)."""

    def lost(self) -> None:
        """The connection is gone (accounting)."""

    def describe(self) -> str:
        return "connection"


class _Counts:
    """Byte counting for a Front's link: `bytes_out` is what went out to the network peer, whichever side
    that is for the mode (the application's requests upstream; the responses to an inbound caller)."""

    __slots__ = ("link", "inbound")

    def __init__(self, link: Link, inbound: bool) -> None:
        self.link = link
        self.inbound = inbound

    @property
    def requests(self) -> int:
        return self.link.requests

    @requests.setter
    def requests(self, n: int) -> None:
        self.link.requests = n

    def bytes_in_from_client(self, n: int) -> None:
        if self.inbound:
            self.link.bytes_in += n
        else:
            self.link.bytes_out += n

    def bytes_out_to_client(self, n: int) -> None:
        if self.inbound:
            self.link.bytes_out += n


# ---------------------------------------------------------------------- outbound: app → upstream instances
class UpstreamFront(Front):
    """The application's connection on an upstream's local port: each request goes to a healthy instance,
    chosen through the upstream's discovery chain when it has one (route, split, subset, failover)."""

    __slots__ = ("up", "conns")

    def __init__(self, rt: Runtime, up: Upstream) -> None:
        super().__init__(rt)
        self.up = up
        self.conns: h1.InstanceConnections = rt.http_connections
        self.link = _Counts(rt.metrics.upstream_link(up.destination_name), inbound=False)
        self.host = up.destination_name.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.link.link.active += 1

    def lost(self) -> None:
        self.link.link.active -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests still queued by the circuit breaker, or dialing (no Back yet), are not abandoned by the
        # base class: free their places here (the dial, when it ends, finds the front closed).
        for ex in self.queue:
            if ex.back is None:
                self._release(ex)
        super().connection_lost(exc)

    def describe(self) -> str:
        return f"upstream {self.up.destination_name}"

    def on_head(self, head: h1.Head) -> None:
        super().on_head(head)
        self.rt.budget.request(time.monotonic())

    def _route(self, ex: Exchange) -> bool:
        """Apply the discovery chain to a new request (once, before its first attempt): False when it
        was answered here (no route)."""
        table = self.rt.chains.get(self.up.key)
        if table is None:
            return True
        head = ex.head
        d = table.decide(head.method, head.target, head.headers, self.rt.rng.random())
        if d is None:
            self.reply(ex, 404, "no route matched", "NR")
            return False
        ex.decision = d
        if d.target is not None:
            head.target = d.target
        if d.request_ops is not None:
            head.headers = d.request_ops.apply(head.headers)
        return True

    def _pick(self, ex: Exchange) -> tuple[UpstreamPool, Instance]:
        """An instance for the next attempt: the route's target, else its failover targets in order."""
        d = ex.decision
        key = None
        if d is not None and d.leg.lb.hash_policies:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            key = d.leg.lb.hash_key(ex.head.headers, ex.head.target, peer[0] if peer else "")
        return l7.pick(self.rt, self.up, d, ex.tried, key, time.monotonic())

    def _timeout(self, ex: Exchange) -> float:
        return l7.request_timeout(self.up, ex.decision)

    def send(self, ex: Exchange) -> None:
        rt = self.rt
        if self.closed:
            return
        if ex.admitted is None:
            if not self._route(ex):
                return
            if rt.tracer is not None and ex.trace is None:
                ex.trace, ex.head.headers = rt.tracer.start(ex.head.headers, CLIENT)
            breaker = rt.breakers.get(self.up.key)
            verdict = breaker.admit(ex) if breaker is not None else SEND
            if verdict == REFUSE:
                self.link.link.failed += 1
                self.reply(ex, 503, "upstream overflow: circuit breaker open", "UO")
                return
            ex.admitted = verdict == SEND
            if not ex.admitted:
                return  # queued: `done` of a request in flight sends it
        try:
            pool, inst = self._pick(ex)
        except NoHealthyInstance as e:
            self._give_up(ex, str(e), no_instance=True)
            return
        ex.inst = inst
        ex.pool = pool
        ex.tried.add(inst.id)
        pool.started(inst)
        back = self.conns.take(instance_key(inst))
        if back is not None:
            ex.send_on(back, [], self._timeout(ex))
        else:
            rt.spawn(self._dial(ex, inst))

    async def _dial(self, ex: Exchange, inst: Instance) -> None:
        link = self.link.link
        up = l7.dial_settings(self.up, ex.decision, inst)
        try:
            back = await dial(self.rt, up, inst, link, lambda ctx, key: Back(link, key, ctx))
        except (OSError, TimeoutError, ssl.SSLError, DialRefused) as e:
            if not self.closed:
                ex.back_failed(f"{inst.address}:{inst.port}: {e or 'connect timed out'}")
            elif ex.pool is not None:
                ex.pool.finished(inst)
            return
        if self.closed:
            back.close()
            if ex.pool is not None:
                ex.pool.finished(inst)
            return
        ex.send_on(back, [], self._timeout(ex))

    def should_retry(self, ex: Exchange, status: int) -> bool:
        d = ex.decision
        now = time.monotonic()
        return l7.retry_on_response(d, self.rt.config.retry.retry_on_5xx, ex.head.method, status,
                                    ex.retryable_body) and \
            l7.another_instance(self.rt, self.up, d, ex.tried, now) and l7.another_attempt(self.rt, d, ex.attempt, now)

    def release(self, back: Back, ex: Exchange, reusable: bool) -> None:
        inst, pool = ex.inst, ex.pool
        if inst is not None and pool is not None:
            pool.finished(inst)
        if reusable:
            self.conns.give(back)
        else:
            back.close()

    def responded(self, ex: Exchange, status: int) -> None:
        super().responded(ex, status)
        link, inst, pool = self.link.link, ex.inst, ex.pool
        link.connections += 1
        if inst is not None and pool is not None:
            if status >= 500:
                self._failed(pool, inst)
            else:
                pool.succeeded(inst)

    def retry(self, ex: Exchange, why: str) -> None:
        """A retryable 5xx was read to its end: the budget already allowed one more attempt."""
        if ex.inst is not None and ex.pool is not None:
            self._failed(ex.pool, ex.inst)
        ex.attempt += 1
        self.link.link.retries += 1
        ex.dispatched = True
        self.send(ex)

    def attempt_failed(self, ex: Exchange, why: str) -> None:
        """A connect, TLS or identity failure, or a connection lost before the response: another instance
        if the request can be sent again (its body is still held) and the budget allows."""
        inst, pool = ex.inst, ex.pool
        if inst is not None and pool is not None:
            pool.finished(inst)
            self._failed(pool, inst)
        rt = self.rt
        d = ex.decision
        now = time.monotonic()
        if not ex.streaming and ex.attempt < l7.num_retries(rt, d) and l7.retry_on_failure(d) and \
                l7.another_instance(rt, self.up, d, ex.tried, now):
            if rt.budget.try_retry(now):
                ex.attempt += 1
                self.link.link.retries += 1
                self.send(ex)
                return
            why += "; retry budget exhausted"
        self._give_up(ex, why)

    def abandon(self, ex: Exchange) -> None:
        if ex.inst is not None and ex.pool is not None:
            ex.pool.finished(ex.inst)
        self._release(ex)

    def done(self, ex: Exchange) -> None:
        super().done(ex)
        self._release(ex)

    def _release(self, ex: Exchange) -> None:
        """`ex` no longer counts against the circuit breaker: the next queued request goes."""
        breaker = self.rt.breakers.get(self.up.key)
        admitted, ex.admitted = ex.admitted, None
        nxt = breaker.leave(ex, admitted, _waits) if breaker is not None else None
        if nxt is not None:
            nxt.admitted = True
            nxt.front.send(nxt)

    def fixed_fields(self, d: Decision | None, inst: Instance | None, scope: object) -> dict[str, Any]:
        rec = super().fixed_fields(d, inst, scope)
        l7.upstream_fields(rec, scope, d, inst)  # type: ignore[arg-type]  # scope: the Upstream
        return rec

    def scope(self) -> object:
        return self.up

    def _failed(self, pool: UpstreamPool, inst: Instance) -> None:
        if pool.failed(inst, time.monotonic(), self.rt.rng.random()):
            log.warning("upstream %s: ejected %s after %d failures in a row", self.up.destination_name, inst.id,
                        pool.outlier.max_failures)

    def _give_up(self, ex: Exchange, why: str, no_instance: bool = False) -> None:
        self.link.link.failed += 1
        log.warning("upstream %s: %s %s failed: %s", self.up.destination_name, ex.head.method.decode(),
                    ex.head.target.decode("latin-1"), why)
        if no_instance:
            self.reply(ex, 503, "no healthy upstream", "UH")
        else:
            self.reply(ex, 502, "upstream connect error or disconnect/reset before headers", "UF")

    def timed_out(self, ex: Exchange) -> None:
        inst, pool = ex.inst, ex.pool
        if inst is not None and pool is not None:
            pool.finished(inst)
        log.warning("upstream %s: request %s %s timed out after %.1fs", self.up.destination_name,
                    ex.head.method.decode(), ex.head.target.decode("latin-1"), self._timeout(ex))
        self.link.link.failed += 1
        if ex.responded:
            ex.flag = "UT"
            self.abort()
        else:
            self.reply(ex, 504, "upstream request timeout", "UT")


def _waits(ex: Exchange) -> bool:
    """A queued request whose caller is still there."""
    return not ex.front.closed


# ---------------------------------------------------------------------- inbound: public listener → app
class InboundFront(Front):
    """A peer sidecar's mTLS connection on the public listener: each request is checked, then sent to
    the local application on one kept-alive connection."""

    __slots__ = ("uri", "source", "app", "_xfcc", "_gate")

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.uri = ""
        self.source = ""
        self.app: Back | None = None
        self._xfcc = b""
        self._gate = l7.IntentionGate()
        self.host = rt.config.service.encode()

    def describe(self) -> str:
        return f"inbound from {self.source or self.uri or 'unknown'}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        rt = self.rt
        self.uri, decision = rt.admit(transport.get_extra_info("ssl_object"))
        self.source = decision.source
        if not decision.allowed:
            self._refuse(decision.source, decision.reason)
            return
        self.link = _Counts(rt.inbound_accepted(decision, transport.get_extra_info("ssl_object")), inbound=True)
        self._xfcc = f"x-forwarded-client-cert: By={rt.service_uri};URI={self.uri}\r\n".encode()
        rt.inbound_opened(self)

    def _refuse(self, source: str, reason: str) -> None:
        self.rt.refused(source, reason)
        self.bad = True
        self.abort()

    def lost(self) -> None:
        if self.app is not None:
            self.app.close()
        if self.link is not None:
            self.link.link.active -= 1
            self.rt.inbound_closed(self)

    def admit(self, ex: Exchange) -> None:
        head = ex.head
        if self._gate.denies(self.rt, self.uri, head.method, head.path, head.target, head.headers):
            ex.denied, ex.why = True, self._gate.reason

    def send(self, ex: Exchange) -> None:
        tracer = self.rt.tracer
        if tracer is not None and ex.trace is None:
            ex.trace, ex.head.headers = tracer.start(ex.head.headers, SERVER)
        if ex.denied:
            self.reply(ex, 403, "RBAC: access denied")
            return
        limiter = self.rt.rate_limiter
        if limiter is not None and not limiter.allow(ex.head.path, time.monotonic()):
            self.reply(ex, 429, "local_rate_limited", "RL")
            return
        self.to_app(ex)

    def to_app(self, ex: Exchange) -> None:
        """Send an admitted request on to the application (its kept-alive connection, or a new one)."""
        app = self.app
        if app is not None and app.reusable():
            ex.send_on(app, [self._xfcc], self.rt.config.local_request_timeout)
        else:
            self.rt.spawn(self._dial_app(ex))

    async def _dial_app(self, ex: Exchange) -> None:
        cfg = self.rt.config
        try:
            async with asyncio.timeout(cfg.local_connect_timeout):
                _, app = await asyncio.get_running_loop().create_connection(
                    lambda: Back(None), cfg.local_address, cfg.local_port)
        except (OSError, TimeoutError) as e:
            if not self.closed:
                ex.back_failed(f"cannot reach the local application at {cfg.local_address}:"
                                         f"{cfg.local_port}: {e or 'timed out'}")
            return
        if self.closed:
            app.close()
            return
        self.app = app
        ex.send_on(app, [self._xfcc], cfg.local_request_timeout)

    def release(self, back: Back, ex: Exchange, reusable: bool) -> None:
        if not reusable:
            back.close()
            if self.app is back:
                self.app = None

    def log_record(self, ex: Exchange, now: float) -> dict[str, Any]:
        rec = super().log_record(ex, now)
        if ex.denied:
            l7.denied_fields(rec, ex.why)
        return rec

    def fixed_fields(self, d: Decision | None, inst: Instance | None, scope: object) -> dict[str, Any]:
        rec = super().fixed_fields(d, inst, scope)
        l7.inbound_fields(rec, self.rt, self.uri, False, cfg=scope)  # type: ignore[arg-type]  # scope: the config
        return rec

    def attempt_failed(self, ex: Exchange, why: str) -> None:
        self.link.link.failed += 1
        log.warning("inbound %s %s from %s: %s", ex.head.method.decode(), ex.head.target.decode("latin-1"),
                    self.source, why)
        self.app = None
        self.reply(ex, 502, "upstream connect error or disconnect/reset before headers")

    def timed_out(self, ex: Exchange) -> None:
        self.link.link.failed += 1
        self.app = None
        log.warning("%s", l7.app_timeout_warning(ex.head.method, ex.head.target, self.source,
                                                 self.rt.config.local_request_timeout))
        if ex.responded:
            ex.flag = "UT"
            self.abort()
        else:
            self.reply(ex, 504, "upstream request timeout", "UT")


def inbound_factory(rt: Runtime) -> Any:
    return lambda: InboundFront(rt)


def upstream_factory(rt: Runtime, up: Upstream) -> Any:
    return lambda: UpstreamFront(rt, up)
