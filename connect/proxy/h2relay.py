"""HTTP/2 and gRPC (`protocol = "http2"` or `"grpc"`) in L7 mode, on both sides of a hop.

Caller's side (an upstream's local port): each stream from the application is routed on its own through the
upstream's discovery chain — path (a gRPC method is `/package.Service/Method`), headers (gRPC metadata),
methods, splits, subsets, failover — admitted by the upstream's circuit breaker, given the route's request
timeout and retry policy, and relayed to the chosen instance's sidecar over mTLS, where streams of every
application connection to that instance share one HTTP/2 connection.

Callee's side (the public listener of an http2/grpc service): each stream from a peer's sidecar is checked
against L7 intentions (the method's path, headers) and the instance's rate limits, then relayed to the local
application over one cleartext HTTP/2 connection, with `X-Forwarded-Client-Cert` naming the caller.

The decisions are HTTP/1.1's (l7.py): the instance pick, the timeout, the retry conditions and the retry
budget, the breaker, the rate limiter, the intention gate, and the access-log line, tap event and span of
each finished stream. What the proxy answers itself is, for a gRPC call, a trailers-only response with the
gRPC status (l7.grpc_status_for) and the reason in `grpc-message`; other HTTP/2 requests get the HTTP status.

h2 (python-hyper's sans-I/O HTTP/2) does the framing; this module pairs streams and moves headers, data and
trailers (gRPC's status travels in trailers) between them, within HTTP/2 flow control: data the other side
cannot take yet waits in the stream's buffer and goes out on its WINDOW_UPDATE. A request body up to
h1.RETRY_BODY_MAX is also kept, so the stream can be sent again to another instance until its response starts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from proconsul.connect.proxy import l7
from proconsul.connect.proxy.accesslog import DETAILS
from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance, UpstreamPool
from proconsul.connect.proxy.breaker import REFUSE, SEND
from proconsul.connect.proxy.config import Upstream
from proconsul.connect.proxy.dial import DialRefused, dial, instance_key
from proconsul.connect.proxy.h1 import RETRY_BODY_MAX
from proconsul.connect.proxy.metrics import Link
from proconsul.connect.proxy.routing import Decision
from proconsul.connect.proxy.tracing import CLIENT, SERVER, TraceContext

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

log = logging.getLogger("proconsul.proxy")
Headers = list[tuple[bytes, bytes]]
Acker = Callable[[int], None]
LOCAL_APP = "local-app"  # rt.h2_backs key of the callee side's connection to its application
GRPC_FAILED = frozenset({2, 4, 13, 14, 15})  # gRPC statuses counted as a 5xx by outlier detection (Envoy's map)


class H2Stream:
    """A request stream from the caller and the stream it became on a back connection, with what one
    attempt after another needs (held request, route decision, instance, timer) and what the log says."""

    __slots__ = ("front", "fsid", "back", "bsid", "waiting", "held", "held_size", "req_ended", "responded",
                 "grpc", "method", "path", "headers", "decision", "attempt", "tried", "inst", "pool",
                 "timer", "admitted", "status", "grpc_status", "flag", "bytes_in", "bytes_out", "started",
                 "trace", "done", "denied", "why", "up", "authority")

    def __init__(self, front: _H2Front, fsid: int, method: bytes, path: bytes, headers: Headers,
                 grpc: bool) -> None:
        self.front, self.fsid = front, fsid
        self.back: H2Back | None = None
        self.bsid = 0
        # ("data", (bytes, acker|None), end) | ("headers", trailers, True) not yet on a back connection
        self.waiting: list[tuple[str, Any, bool]] = []
        self.held: list[tuple[str, Any, bool]] | None = []  # the request body so far (None: too big to retry)
        self.held_size = 0
        self.req_ended = False
        self.responded = False
        self.grpc = grpc
        self.method, self.path, self.headers = method, path, headers
        self.decision: Decision | None = None
        self.attempt = 0
        self.tried: set[str] = set()
        self.inst: Instance | None = None
        self.pool: UpstreamPool | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.admitted: bool | None = None  # by the circuit breaker: True in flight, False queued, None not
        self.status = 0
        self.grpc_status: int | None = None
        self.flag = "-"
        self.bytes_in = self.bytes_out = 0
        self.started = time.monotonic()
        self.trace: TraceContext | None = None
        self.done = False
        self.denied = False
        self.why = ""  # the intention that denied it
        self.up: Upstream | None = None  # caller's side: the upstream the stream goes to
        self.authority = ""


class _H2Side(asyncio.Protocol):
    """One HTTP/2 connection: the h2 state machine over a transport, with per-stream send buffers."""

    def __init__(self, client: bool) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False))
        self.transport: asyncio.Transport | None = None
        self.outbox: dict[int, list[list[Any]]] = {}  # stream id -> [[data, end, on_sent], …] waiting for window
        self.closed = False
        self._flush_soon = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        """Write what h2 has for the other side, once per event-loop turn: the frames of every stream touched
        while one read (of any connection) is handled leave in one write — one TLS record, one syscall."""
        if not self._flush_soon and not self.closed:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_soon = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_headers(self, sid: int, headers: Headers, end: bool) -> None:
        box = self.outbox.get(sid)
        if box:  # trailers go after the data still waiting for window
            box.append([headers, end, None])
            return
        try:
            self.conn.send_headers(sid, headers, end_stream=end)
        except (h2.exceptions.ProtocolError, KeyError) as e:  # the stream went away meanwhile
            log.debug("h2: cannot send headers on stream %d: %s", sid, e)
        self.flush()

    def send_data(self, sid: int, data: bytes, end: bool, on_sent: Acker | None = None) -> None:
        """Queue `data` on stream `sid` and send what the windows allow; `on_sent(n)` as bytes go out (it opens
        the window of the connection they came from, so a slow reader holds its writer back rather than
        filling memory here)."""
        self.outbox.setdefault(sid, []).append([data, end, on_sent])
        self.pump(sid)

    def drop(self, sid: int) -> None:
        """Forget what waits on stream `sid`, releasing its bytes on the connections they came from."""
        for data, _, on_sent in self.outbox.pop(sid, None) or ():
            if on_sent is not None and data.__class__ is bytes:
                on_sent(len(data))

    def pump(self, sid: int) -> None:
        box = self.outbox.get(sid)
        while box:
            data, end, on_sent = box[0]
            if data.__class__ is list:  # trailers queued behind data
                box.pop(0)
                try:
                    self.conn.send_headers(sid, data, end_stream=end)
                except (h2.exceptions.ProtocolError, KeyError) as e:
                    log.debug("h2: cannot send trailers on stream %d: %s", sid, e)
                continue
            try:
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            except (h2.exceptions.ProtocolError, KeyError):
                self.drop(sid)
                return
            if not data:
                if end:
                    self.conn.end_stream(sid)
                box.pop(0)
                continue
            if window <= 0:
                break
            chunk, rest = data[:window], data[window:]
            self.conn.send_data(sid, chunk, end_stream=end and not rest)
            if on_sent is not None:
                on_sent(len(chunk))
            if rest:
                box[0][0] = rest
            else:
                box.pop(0)
        if not box:
            self.outbox.pop(sid, None)
        self.flush()

    def ack(self, sid: int, n: int) -> None:
        """Open our receive window on stream `sid` by `n` bytes."""
        if n <= 0 or self.closed:
            return
        try:
            self.conn.acknowledge_received_data(n, sid)
        except (h2.exceptions.ProtocolError, KeyError):
            return  # the stream is gone: nothing to open
        self.flush()

    def reset(self, sid: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.drop(sid)
        try:
            self.conn.reset_stream(sid, code)
        except (h2.exceptions.ProtocolError, KeyError):
            pass
        self.flush()

    def window_updated(self, ev: h2.events.WindowUpdated) -> None:
        for sid in ([ev.stream_id] if ev.stream_id else list(self.outbox)):
            self.pump(sid)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            try:
                self.conn.close_connection()
                self.flush_now()
            except h2.exceptions.ProtocolError:
                pass
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class H2Back(_H2Side):
    """The HTTP/2 connection streams are sent on — to one instance's sidecar (over mTLS), or to the local
    application (cleartext) — shared by the streams of every front connection; it hands what arrives for a
    stream to that stream's front."""

    def __init__(self, rt: Runtime, key: str) -> None:
        super().__init__(client=True)
        self.rt, self.key = rt, key
        self.streams: dict[int, H2Stream] = {}

    def usable(self) -> bool:
        """Open, and the other side allows one more stream on it (its SETTINGS_MAX_CONCURRENT_STREAMS)."""
        conn = self.conn
        return not self.closed and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams

    def open(self, s: H2Stream) -> None:
        """Send `s` on this connection: its headers, then what waits of its request."""
        s.back, s.bsid = self, self.conn.get_next_available_stream_id()
        self.streams[s.bsid] = s
        waiting, s.waiting = s.waiting, []
        self.send_headers(s.bsid, s.headers, s.req_ended and not waiting)
        for kind, payload, end in waiting:
            if kind == "data":
                self.send_data(s.bsid, payload[0], end, payload[1])
            else:
                self.send_headers(s.bsid, payload, end)

    def detach(self, s: H2Stream) -> None:
        """`s` no longer wants this connection's stream (retry, timeout, caller gone): cancel it."""
        if s.back is self:
            self.streams.pop(s.bsid, None)
            self.reset(s.bsid)
            s.back = None

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("h2: the other side broke the protocol: %s", e)
            self.close()
            return
        for ev in events:
            s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and s is not None:
                s.front.on_response(s, ev.headers, ev.stream_ended is not None)
            elif isinstance(ev, h2.events.DataReceived) and s is None:
                self.ack(ev.stream_id, ev.flow_controlled_length)  # a stream we cancelled: open the window again
            elif isinstance(ev, h2.events.DataReceived):
                self.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))  # padding: nothing to forward
                s.front.on_data(s, ev.data, ev.stream_ended is not None, partial(self.ack, ev.stream_id))
            elif isinstance(ev, h2.events.TrailersReceived) and s is not None:
                s.front.on_trailers(s, ev.headers)
            elif isinstance(ev, h2.events.StreamReset) and s is not None:
                self.streams.pop(ev.stream_id, None)
                s.back = None
                s.front.on_back_reset(s, ev.error_code or h2.errors.ErrorCodes.CANCEL)
            elif isinstance(ev, h2.events.StreamEnded):
                self.streams.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updated(ev)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.close()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for sid in list(self.outbox):
            self.drop(sid)
        if self.rt.h2_backs.get(self.key) is self:
            del self.rt.h2_backs[self.key]
        streams, self.streams = self.streams, {}
        for s in streams.values():
            s.back = None
            s.front.on_back_reset(s, h2.errors.ErrorCodes.INTERNAL_ERROR)


async def connection(rt: Runtime, key: str, make: Callable[[], Awaitable[H2Back]]) -> H2Back:
    """The shared connection `key` names, dialed with `make` when there is none (or it is full): streams
    that want it while it is being dialed wait for that one dial rather than each making their own."""
    back = rt.h2_backs.get(key)
    if back is not None and back.usable():
        return back
    pending = rt.h2_dialing.get(key)
    if pending is None:
        pending = rt.h2_dialing[key] = asyncio.ensure_future(make())

        def dialed(f: asyncio.Future[H2Back]) -> None:
            if rt.h2_dialing.get(key) is f:
                del rt.h2_dialing[key]
            if not f.cancelled() and f.exception() is None:
                rt.h2_backs[key] = f.result()

        pending.add_done_callback(dialed)
    return await asyncio.shield(pending)


class _H2Front(_H2Side):
    """A connection that sends us streams (the application's, or a peer sidecar's); subclasses decide where
    each stream goes."""

    inbound = False

    def __init__(self, rt: Runtime, link: Link | None) -> None:
        super().__init__(client=False)
        self.rt = rt
        self.link = link
        self.streams: dict[int, H2Stream] = {}
        self.peer = ""

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.debug("%s: not HTTP/2: %s", self.describe(), e)
            self.flush()
            self.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev.stream_id, ev.headers, ev.stream_ended is not None)
                continue
            s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.DataReceived) and s is None:
                self.ack(ev.stream_id, ev.flow_controlled_length)  # a stream that is over: open the window again
            elif isinstance(ev, h2.events.DataReceived):
                self.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))  # padding: nothing to forward
                s.bytes_in += len(ev.data)
                self._forward(s, "data", (ev.data, partial(self.ack, ev.stream_id)), ev.stream_ended is not None)
            elif isinstance(ev, h2.events.TrailersReceived) and s is not None:
                self._forward(s, "headers", ev.headers, True)
            elif isinstance(ev, h2.events.StreamReset) and s is not None:
                self._cancelled(s)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updated(ev)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.close()
        self.flush()

    def _request(self, sid: int, headers: Headers, end: bool) -> None:
        """A new stream from the caller."""
        if self.link is not None:
            self.link.requests += 1
        method = path = authority = b""
        plain: Headers = []
        for k, v in headers:
            if k == b":method":
                method = v
            elif k == b":path":
                path = v
            elif k == b":authority":
                authority = v
            elif not k.startswith(b":"):
                plain.append((k.lower(), v))
        grpc = any(k == b"content-type" and v.startswith(b"application/grpc") for k, v in plain)
        s = self.streams[sid] = H2Stream(self, sid, method or b"GET", path or b"/", headers, grpc)
        s.req_ended = end
        s.authority = authority.decode("latin-1")
        self.start(s, plain)

    def _forward(self, s: H2Stream, kind: str, payload: Any, end: bool) -> None:
        """A part of the request: to the back stream, or waiting for one; and kept while a retry is possible."""
        if end:
            s.req_ended = True
        if s.held is not None:
            if kind == "data":
                s.held_size += len(payload[0])
            if s.held_size > RETRY_BODY_MAX:
                s.held = None  # too big to keep: this request is sent once
            else:
                s.held.append((kind, (payload[0], None) if kind == "data" else payload, end))
        if s.denied or s.done:
            if kind == "data":
                payload[1](len(payload[0]))  # answered already: the bytes are read and forgotten
            if end:
                self.streams.pop(s.fsid, None)
        elif s.back is None:
            s.waiting.append((kind, payload, end))
        elif kind == "data":
            s.back.send_data(s.bsid, payload[0], end, payload[1])
        else:
            s.back.send_headers(s.bsid, payload, end)

    def _release_waiting(self, s: H2Stream) -> None:
        for kind, payload, _ in s.waiting:  # not forwarded after all: open their window on the caller's side
            if kind == "data" and payload[1] is not None:
                payload[1](len(payload[0]))
        s.waiting.clear()

    # ------------------------------------------------------------------ what comes back
    def on_response(self, s: H2Stream, headers: Headers, ended: bool) -> None:
        status = 0
        grpc_status = None
        for k, v in headers:
            if k == b":status":
                status = int(v) if v.isdigit() else 0
            elif k == b"grpc-status" and ended:
                grpc_status = int(v) if v.isdigit() else None
        if not s.responded and self.retry_response(s, status, grpc_status):
            return
        s.responded = True
        s.status, s.grpc_status = status, grpc_status
        self.responded(s)
        d = s.decision
        if d is not None and d.response_ops is not None:
            headers = [h for h in headers if h[0].startswith(b":")] + d.response_ops.apply(
                [h for h in headers if not h[0].startswith(b":")])
        self.send_headers(s.fsid, headers, ended)
        if ended:
            self.finish(s)

    def on_data(self, s: H2Stream, data: bytes, ended: bool, acker: Acker) -> None:
        s.bytes_out += len(data)
        self.send_data(s.fsid, data, ended, acker)
        if ended:
            self.finish(s)

    def on_trailers(self, s: H2Stream, headers: Headers) -> None:
        for k, v in headers:
            if k == b"grpc-status" and v.isdigit():
                s.grpc_status = int(v)
        self.send_headers(s.fsid, headers, True)
        self.finish(s)

    def on_back_reset(self, s: H2Stream, code: int) -> None:
        """The back stream (or its whole connection) went away before the response ended."""
        if s.done:
            return
        if s.responded:
            self.reset(s.fsid, h2.errors.ErrorCodes.INTERNAL_ERROR if code == h2.errors.ErrorCodes.NO_ERROR
                       else code)
            s.flag = "UR"
            self.finish(s)
        else:
            self.attempt_failed(s, f"the stream was reset (HTTP/2 error {int(code)})")

    # ------------------------------------------------------------------ answering here, finishing
    def fail(self, s: H2Stream, status: int, message: str, flag: str = "-") -> None:
        """Answer a stream here: gRPC's trailers-only response for a gRPC call, else an HTTP status."""
        if s.done:
            return
        if s.back is not None:
            s.back.detach(s)
        self._release_waiting(s)
        s.responded = True
        s.status, s.flag = status, flag
        if s.grpc:
            s.grpc_status = l7.grpc_status_for(status)
            self.send_headers(s.fsid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                       (b"grpc-status", str(s.grpc_status).encode()),
                                       (b"grpc-message", message.encode())], True)
        else:
            self.send_headers(s.fsid, [(b":status", str(status).encode()), (b"content-type", b"text/plain")], False)
            self.send_data(s.fsid, message.encode() + b"\n", True)
        self.responded(s)
        self.finish(s)

    def responded(self, s: H2Stream) -> None:
        if self.link is not None:
            self.link.response(s.status)

    def finish(self, s: H2Stream) -> None:
        """`s` is over (answered, failed, or its caller went away): account for it and tell who listens."""
        if s.done:
            return
        s.done = True
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.req_ended:
            self.streams.pop(s.fsid, None)
        else:  # answered before the caller finished sending: what it still sends is read and dropped (_forward)
            if s.back is not None:
                s.back.detach(s)  # and the rest of the request is not sent on (the back stream would stay open)
        self.released(s)
        now = time.monotonic()
        if self.link is not None:
            self.link.latency.observe(now - s.started)
        if l7.wants_record(self.rt, s.trace):
            rec = self.log_record(s, now)
            l7.publish(self.rt, rec, s.started, now, self.inbound, s.trace, s.status, s.flag,
                       {"rpc.system": "grpc", "rpc.grpc.status_code": s.grpc_status} if s.grpc else None)

    def _timed_out(self, s: H2Stream) -> None:
        """`s`'s timer fired (the route's timeout outbound, the application's inbound): 504 with Envoy's `UT`,
        or, once the response has begun, the stream reset."""
        s.timer = None
        if s.done:
            return
        assert self.link is not None
        self.link.failed += 1
        log.warning("%s", self.timeout_warning(s))
        if s.back is not None:
            s.back.detach(s)
        if s.responded:
            s.flag = "UT"
            self.reset(s.fsid, h2.errors.ErrorCodes.CANCEL)
            self.finish(s)
        else:
            self.fail(s, 504, "upstream request timeout", "UT")

    def timeout_warning(self, s: H2Stream) -> str:
        raise NotImplementedError

    def _cancelled(self, s: H2Stream) -> None:
        """The caller reset its stream."""
        self.streams.pop(s.fsid, None)
        if s.back is not None:
            s.back.detach(s)
        self._release_waiting(s)
        if not s.done:
            s.flag = "DC"  # Envoy's: downstream connection termination
            self.finish(s)

    def log_record(self, s: H2Stream, now: float) -> dict[str, Any]:
        """The access-log fields of `s` (Envoy's names, as an HTTP/1.1 request's)."""
        if not self.peer and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
        rec = {"start_time": time.time() - (now - s.started), "method": s.method.decode("latin-1"),
               "path": s.path.decode("latin-1"), "protocol": "HTTP/2", "response_code": s.status,
               "response_flags": s.flag,
               "response_code_details": DETAILS.get(s.flag, "via_upstream" if s.status else ""),
               "bytes_received": s.bytes_in, "bytes_sent": s.bytes_out, "duration": int((now - s.started) * 1000),
               "downstream_remote_address": self.peer, "headers": s.headers, "grpc_status": s.grpc_status}
        if s.authority:
            rec["authority"] = s.authority
        return rec

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for sid in list(self.outbox):  # responses nobody will read: release them on the shared connections
            self.drop(sid)
        streams, self.streams = self.streams, {}
        for s in streams.values():
            if s.back is not None:
                s.back.detach(s)
            s.waiting.clear()
            if not s.done:
                s.flag = "DC"
                self.finish(s)
        self.lost()

    # ------------------------------------------------------------------ what a side decides
    def start(self, s: H2Stream, plain: Headers) -> None:
        raise NotImplementedError

    def retry_response(self, s: H2Stream, status: int, grpc_status: int | None) -> bool:
        """Whether this response is dropped for another attempt (it was then started)."""
        return False

    def attempt_failed(self, s: H2Stream, why: str) -> None:
        raise NotImplementedError

    def released(self, s: H2Stream) -> None:
        """`s` no longer holds an instance or a breaker's place."""

    @staticmethod
    def let_go(s: H2Stream) -> None:
        """`s` no longer counts on its instance (least_request's count; done once)."""
        if s.inst is not None and s.pool is not None:
            s.pool.finished(s.inst)
            s.pool = None

    def lost(self) -> None:
        """The connection is gone (accounting)."""

    def describe(self) -> str:
        return "HTTP/2 connection"


# ---------------------------------------------------------------------- the caller's side: app → instances
class H2UpstreamFront(_H2Front):
    """The application's HTTP/2 (h2c) connection on an upstream's local port."""

    def __init__(self, rt: Runtime, up: Upstream) -> None:
        super().__init__(rt, rt.metrics.upstream_link(up.destination_name))
        self.up = up

    def describe(self) -> str:
        return f"upstream {self.up.destination_name}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.link is not None
        self.link.active += 1

    def lost(self) -> None:
        assert self.link is not None
        self.link.active -= 1

    def upstream_of(self, s: H2Stream) -> Upstream | None:
        """The upstream a new stream goes to (an ingress listener picks it by the stream's authority)."""
        return self.up

    def start(self, s: H2Stream, plain: Headers) -> None:
        """Route a new stream through the chain, start its timer, and send it when the breaker admits it."""
        rt = self.rt
        rt.budget.request(time.monotonic())
        up = s.up = self.upstream_of(s)
        if up is None:
            return self.fail(s, 404, f"no service for authority {s.authority!r}", "NR")
        table = rt.chains.get(up.key)
        if table is not None:
            d = table.decide(s.method, s.path, plain, rt.rng.random())
            if d is None:
                return self.fail(s, 404, "no route matched", "NR")
            s.decision = d
            if d.target is not None:
                s.headers = [(k, d.target if k == b":path" else v) for k, v in s.headers]
            if d.request_ops is not None:
                s.headers = [h for h in s.headers if h[0].startswith(b":")] + d.request_ops.apply(plain)
        if rt.tracer is not None:
            s.trace, s.headers = rt.tracer.start(s.headers, CLIENT)
        s.timer = asyncio.get_running_loop().call_later(l7.request_timeout(up, s.decision), self._timed_out, s)
        breaker = rt.breakers.get(up.key)
        verdict = breaker.admit(s) if breaker is not None else SEND
        if verdict == REFUSE:
            assert self.link is not None
            self.link.failed += 1
            return self.fail(s, 503, "upstream overflow: circuit breaker open", "UO")
        s.admitted = verdict == SEND
        if s.admitted:
            self.send(s)

    def send(self, s: H2Stream) -> None:
        """One attempt: an instance (not tried yet for this stream) and its shared connection."""
        d = s.decision
        key = None
        if d is not None and d.leg.lb.hash_policies:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            key = d.leg.lb.hash_key([h for h in s.headers if not h[0].startswith(b":")], s.path,
                                    peer[0] if peer else "")
        try:
            assert s.up is not None
            pool, inst = l7.pick(self.rt, s.up, d, s.tried, key, time.monotonic())
        except NoHealthyInstance as e:
            return self._give_up(s, str(e), no_instance=True)
        s.inst, s.pool = inst, pool
        s.tried.add(inst.id)
        pool.started(inst)
        back = self.rt.h2_backs.get(instance_key(inst))
        if back is not None and back.usable():
            back.open(s)
        else:
            self.rt.spawn(self._dial(s, inst))

    async def _dial(self, s: H2Stream, inst: Instance) -> None:
        rt, key = self.rt, instance_key(inst)
        assert self.link is not None
        link = self.link
        assert s.up is not None
        up = l7.dial_settings(s.up, s.decision, inst)
        try:
            back = await connection(rt, key, lambda: dial(rt, up, inst, link, lambda _ctx, k: H2Back(rt, k)))
        except (OSError, TimeoutError, ssl.SSLError, DialRefused) as e:
            if not s.done:
                self.attempt_failed(s, f"{inst.address}:{inst.port}: {e or 'connect timed out'}")
            return
        if self.closed or s.done or s.inst is not inst:
            return
        back.open(s)

    def retry_response(self, s: H2Stream, status: int, grpc_status: int | None) -> bool:
        d = s.decision
        if not l7.retry_on_response(d, self.rt.config.retry.retry_on_5xx, s.method, status, s.held is not None,
                                    grpc_status):
            return False
        now = time.monotonic()
        assert s.up is not None
        if not l7.another_instance(self.rt, s.up, d, s.tried, now) or not l7.another_attempt(self.rt, d, s.attempt,
                                                                                              now):
            return False
        self._retry(s, f"{s.inst.id if s.inst else '?'} answered {status}"
                       f"{f' (grpc-status {grpc_status})' if grpc_status is not None else ''}")
        return True

    def attempt_failed(self, s: H2Stream, why: str) -> None:
        """A connect failure, or the stream reset or its connection lost before the response: another
        instance if the request is still held, the route retries such failures and the budget allows."""
        d = s.decision
        assert s.up is not None
        now = time.monotonic()
        retryable = s.held is not None and l7.retry_on_failure(d) and l7.another_instance(self.rt, s.up, d, s.tried,
                                                                                          now)
        if retryable and l7.another_attempt(self.rt, d, s.attempt, now):
            return self._retry(s, why)
        self._ended_on_instance(s, failed=True)
        if retryable and s.attempt < l7.num_retries(self.rt, d):
            why += "; retry budget exhausted"
        self._give_up(s, why)

    def _retry(self, s: H2Stream, why: str) -> None:
        log.info("%s: retrying %s: %s", self.describe(), s.path.decode("latin-1"), why)
        if s.back is not None:
            s.back.detach(s)
        self._ended_on_instance(s, failed=True)
        self._release_waiting(s)
        assert s.held is not None and self.link is not None
        s.waiting = list(s.held)
        s.attempt += 1
        self.link.retries += 1
        self.send(s)

    def _ended_on_instance(self, s: H2Stream, failed: bool) -> None:
        """The attempt on `s.inst` is over (`s.inst` stays: the log names it)."""
        inst, pool = s.inst, s.pool
        if inst is None or pool is None:
            return
        s.pool = None
        pool.finished(inst)
        self._outcome(pool, inst, failed)

    def _outcome(self, pool: UpstreamPool, inst: Instance, failed: bool) -> None:
        """Passive health checking: a failure counts towards ejection, a success resets the count."""
        if not failed:
            pool.succeeded(inst)
        elif pool.failed(inst, time.monotonic(), self.rt.rng.random()):
            log.warning("upstream %s: ejected %s after %d failures in a row", inst.service, inst.id,
                        pool.outlier.max_failures)

    def responded(self, s: H2Stream) -> None:
        super().responded(s)
        if s.inst is not None and s.pool is not None and s.flag == "-":
            self._outcome(s.pool, s.inst, s.status >= 500 or s.grpc_status in GRPC_FAILED)

    def _give_up(self, s: H2Stream, why: str, no_instance: bool = False) -> None:
        assert self.link is not None
        self.link.failed += 1
        log.warning("%s: %s %s failed: %s", self.describe(), s.method.decode("latin-1"),
                    s.path.decode("latin-1"), why)
        if no_instance:
            self.fail(s, 503, "no healthy upstream", "UH")
        else:
            self.fail(s, 502, "upstream connect error or disconnect/reset before headers", "UF")

    def timeout_warning(self, s: H2Stream) -> str:
        assert s.up is not None
        return f"{self.describe()}: {s.path.decode('latin-1')} timed out after " \
               f"{l7.request_timeout(s.up, s.decision):.1f}s"

    def released(self, s: H2Stream) -> None:
        self.let_go(s)
        breaker = self.rt.breakers.get(s.up.key) if s.up is not None else None
        admitted, s.admitted = s.admitted, None
        nxt = breaker.leave(s, admitted, _waits) if breaker is not None else None
        if nxt is not None:
            nxt.admitted = True
            assert isinstance(nxt.front, H2UpstreamFront)
            nxt.front.send(nxt)

    def log_record(self, s: H2Stream, now: float) -> dict[str, Any]:
        rec = super().log_record(s, now)
        l7.upstream_fields(rec, s.up or self.up, s.decision, s.inst)
        return rec


def _waits(s: H2Stream) -> bool:
    """A queued stream whose caller is still there."""
    return not s.front.closed and not s.done


# ---------------------------------------------------------------------- the callee's side: peer → local app
class H2InboundFront(_H2Front):
    """A peer sidecar's mTLS connection on the public listener of an http2/grpc service: each stream is checked
    (L7 intentions, rate limits) and relayed to the local application's HTTP/2 connection."""

    inbound = True

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, None)
        self.uri = ""
        self.source = ""
        self._xfcc = b""
        self._gate = l7.IntentionGate()

    def describe(self) -> str:
        return f"inbound HTTP/2 from {self.source or self.uri or 'unknown'}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        rt = self.rt
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        self.uri, decision = rt.admit(ssl_object)
        self.source = decision.source
        if not decision.allowed:
            rt.refused(decision.source, decision.reason)
            self.abort()
            return
        self.link = rt.inbound_accepted(decision, ssl_object)
        self._xfcc = f"By={rt.service_uri};URI={self.uri}".encode()
        rt.inbound_opened(self)
        super().connection_made(transport)

    def lost(self) -> None:
        if self.link is not None:
            self.link.active -= 1
            self.rt.inbound_closed(self)

    def start(self, s: H2Stream, plain: Headers) -> None:
        rt = self.rt
        if rt.tracer is not None:
            s.trace, s.headers = rt.tracer.start(s.headers, SERVER)
        if self._gate.denies(rt, self.uri, s.method, s.path.split(b"?", 1)[0].decode("latin-1"), s.path, plain):
            s.denied, s.why = True, self._gate.reason
            return self.fail(s, 403, "RBAC: access denied")
        limiter = rt.rate_limiter
        if limiter is not None and not limiter.allow(s.path.split(b"?", 1)[0].decode("latin-1"), time.monotonic()):
            return self.fail(s, 429, "local_rate_limited", "RL")
        s.headers = [h for h in s.headers if h[0] != b"x-forwarded-client-cert"] + \
            [(b"x-forwarded-client-cert", self._xfcc)]
        # The application's time to answer (local_request_timeout_ms, as Envoy's route timeout to local_app:
        # the whole exchange, a streamed response included; at a terminating gateway the linked service's
        # resolver RequestTimeout).
        s.timer = asyncio.get_running_loop().call_later(rt.config.local_request_timeout, self._timed_out, s)
        self.to_app(s)

    def to_app(self, s: H2Stream) -> None:
        """Relay an admitted stream to the application's shared connection (dialed when there is none)."""
        back = self.rt.h2_backs.get(LOCAL_APP)
        if back is not None and back.usable():
            back.open(s)
        else:
            self.rt.spawn(self._dial_app(s))

    async def _dial_app(self, s: H2Stream) -> None:
        try:
            back = await connection(self.rt, LOCAL_APP, self._dial_local)
        except (OSError, TimeoutError) as e:
            if not s.done:
                cfg = self.rt.config
                self.attempt_failed(s, f"cannot reach the local application at {cfg.local_address}:"
                                       f"{cfg.local_port}: {e or 'timed out'}")
            return
        if not self.closed and not s.done:
            back.open(s)

    async def _dial_local(self) -> H2Back:
        """The HTTP/2 connection the streams are relayed to: the local application's."""
        rt, cfg = self.rt, self.rt.config
        async with asyncio.timeout(cfg.local_connect_timeout):
            _, back = await asyncio.get_running_loop().create_connection(
                lambda: H2Back(rt, LOCAL_APP), cfg.local_address, cfg.local_port)
        return back

    def attempt_failed(self, s: H2Stream, why: str) -> None:
        assert self.link is not None
        self.link.failed += 1
        log.warning("inbound %s %s from %s: %s", s.method.decode("latin-1"), s.path.decode("latin-1"), self.source,
                    why)
        self.fail(s, 502, "upstream connect error or disconnect/reset before headers")

    def timeout_warning(self, s: H2Stream) -> str:
        return l7.app_timeout_warning(s.method, s.path, self.source, self.rt.config.local_request_timeout)

    def log_record(self, s: H2Stream, now: float) -> dict[str, Any]:
        rec = super().log_record(s, now)
        l7.inbound_fields(rec, self.rt, self.uri, s.denied, s.why)
        return rec


def inbound_factory(rt: Runtime) -> Callable[[], H2InboundFront]:
    return lambda: H2InboundFront(rt)
