"""HTTP/2 and gRPC on an upstream's local port (`protocol = "http2"` or `"grpc"`): each stream is routed on its
own through the upstream's discovery chain — path (a gRPC method is `/package.Service/Method`), headers (gRPC
metadata), methods, splits, subsets, failover — and relayed to the chosen instance's sidecar over mTLS, where
streams of every application connection to that instance share one HTTP/2 connection.

h2 (python-hyper's sans-I/O HTTP/2) does the framing on both sides; this module pairs streams and moves
headers, data and trailers (gRPC's status travels in trailers) between them, within HTTP/2 flow control:
data the other side cannot take yet waits in the stream's buffer and goes out on its WINDOW_UPDATE. The
application speaks cleartext HTTP/2 with prior knowledge (as gRPC clients do to a local port); the callee's
sidecar carries the bytes to its application at L4 (intentions per connection). Not done here yet: retries,
timeouts, circuit breaking, access logs, tracing and the tap for HTTP/2 streams.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from proconsul.connect.proxy.balancer import NoHealthyInstance
from proconsul.connect.proxy.config import Upstream
from proconsul.connect.proxy.dial import DialRefused, dial, instance_key

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

log = logging.getLogger("proconsul.proxy")
Headers = list[tuple[bytes, bytes]]
Acker = Callable[[int], None]


class _Stream:
    """A request stream from the application and the stream it became on an instance's connection."""

    __slots__ = ("front", "fsid", "back", "bsid", "waiting", "responded", "grpc")

    def __init__(self, front: H2UpstreamFront, fsid: int, grpc: bool) -> None:
        self.front, self.fsid = front, fsid
        self.back: H2Back | None = None
        self.bsid = 0
        # ("open"|"headers"|"data", payload, end) until the instance's connection is up; data is (bytes, acker)
        self.waiting: list[tuple[str, Any, bool]] = []
        self.responded = False
        self.grpc = grpc


class _H2Side(asyncio.Protocol):
    """One HTTP/2 connection: the h2 state machine over a transport, with per-stream send buffers."""

    def __init__(self, client: bool) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False))
        self.transport: asyncio.Transport | None = None
        self.outbox: dict[int, list[list[Any]]] = {}  # stream id -> [[data, end, on_sent], …] waiting for window
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_headers(self, sid: int, headers: Headers, end: bool) -> None:
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
            if on_sent is not None and data:
                on_sent(len(data))

    def pump(self, sid: int) -> None:
        box = self.outbox.get(sid)
        while box:
            data, end, on_sent = box[0]
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
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
            self.closed = True
            self.transport.close()


class H2Back(_H2Side):
    """The HTTP/2 connection to one instance's sidecar (over mTLS), shared by the streams sent there."""

    def __init__(self, rt: Runtime, key: str) -> None:
        super().__init__(client=True)
        self.rt, self.key = rt, key
        self.streams: dict[int, _Stream] = {}

    def open(self, s: _Stream, headers: Headers, end: bool) -> None:
        s.back, s.bsid = self, self.conn.get_next_available_stream_id()
        self.streams[s.bsid] = s
        self.send_headers(s.bsid, headers, end)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("h2: the instance's sidecar broke the protocol: %s", e)
            self.close()
            return
        for ev in events:
            s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and s is not None:
                s.responded = True
                s.front.send_headers(s.fsid, ev.headers, ev.stream_ended is not None)
                self._ended(s, ev.stream_ended is not None)
            elif isinstance(ev, h2.events.DataReceived) and s is not None:
                self.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))  # padding: nothing to forward
                s.front.send_data(s.fsid, ev.data, ev.stream_ended is not None, partial(self.ack, ev.stream_id))
                self._ended(s, ev.stream_ended is not None)
            elif isinstance(ev, h2.events.TrailersReceived) and s is not None:
                s.front.send_headers(s.fsid, ev.headers, True)
                self._ended(s, True)
            elif isinstance(ev, h2.events.StreamReset) and s is not None:
                self.streams.pop(ev.stream_id, None)
                s.front.reset(s.fsid, ev.error_code or h2.errors.ErrorCodes.CANCEL)
            elif isinstance(ev, h2.events.StreamEnded):
                self.streams.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updated(ev)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.close()
        self.flush()

    def _ended(self, s: _Stream, ended: bool) -> None:
        """The response is complete: the stream is done on both connections."""
        if ended:
            self.streams.pop(s.bsid, None)
            s.front.streams.pop(s.fsid, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for sid in list(self.outbox):
            self.drop(sid)
        if self.rt.h2_backs.get(self.key) is self:
            del self.rt.h2_backs[self.key]
        for s in self.streams.values():
            if s.responded:
                s.front.reset(s.fsid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            else:
                s.front.fail(s, 502, 14, "upstream connection lost before the response")
        self.streams.clear()


class H2UpstreamFront(_H2Side):
    """The application's HTTP/2 (h2c) connection on an upstream's local port."""

    def __init__(self, rt: Runtime, up: Upstream) -> None:
        super().__init__(client=False)
        self.rt, self.up = rt, up
        self.streams: dict[int, _Stream] = {}
        self.link = rt.metrics.upstream_link(up.destination_name)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.link.active += 1

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.debug("upstream %s: not HTTP/2 from the application: %s", self.up.destination_name, e)
            self.flush()
            self.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev.stream_id, ev.headers, ev.stream_ended is not None)
                continue
            s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.DataReceived) and s is not None:
                self.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))  # padding: nothing to forward
                self._forward(s, "data", (ev.data, partial(self.ack, ev.stream_id)), ev.stream_ended is not None)
            elif isinstance(ev, h2.events.TrailersReceived) and s is not None:
                self._forward(s, "headers", ev.headers, True)
            elif isinstance(ev, h2.events.StreamReset) and s is not None:
                self.streams.pop(ev.stream_id, None)
                if s.back is not None:
                    s.back.reset(s.bsid)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updated(ev)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.close()
        self.flush()

    def _forward(self, s: _Stream, kind: str, payload: Any, end: bool) -> None:
        if s.back is None:
            s.waiting.append((kind, payload, end))
        elif kind == "data":
            s.back.send_data(s.bsid, payload[0], end, payload[1])
        else:
            s.back.send_headers(s.bsid, payload, end)

    def _request(self, sid: int, headers: Headers, end: bool) -> None:
        """A new stream: route it through the chain, pick an instance, send it on that instance's connection."""
        self.link.requests += 1
        self.rt.budget.request(time.monotonic())
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        plain = [(k.lower(), v) for k, v in headers if not k.startswith(b":")]
        grpc = any(k == b"content-type" and v.startswith(b"application/grpc") for k, v in plain)
        s = self.streams[sid] = _Stream(self, sid, grpc)
        method, path = pseudo.get(b":method", b"GET"), pseudo.get(b":path", b"/")
        table = self.rt.chains.get(self.up.key)
        d = table.decide(method, path, plain, self.rt.rng.random()) if table is not None else None
        if table is not None and d is None:
            return self.fail(s, 404, 12, "no route matched")  # gRPC 12: UNIMPLEMENTED
        if d is not None:
            if d.target is not None:
                headers = [(k, d.target if k == b":path" else v) for k, v in headers]
            if d.request_ops is not None:
                headers = [h for h in headers if h[0].startswith(b":")] + d.request_ops.apply(plain)
        now = time.monotonic()
        targets = (d.leg.target, *d.leg.failover) if d is not None else (None,)
        for target in targets:
            pool = self.rt.pools.get(self.up.key) if target is None else self.rt.pool_for(self.up, target)
            if pool is None:
                continue
            try:
                inst = pool.pick(now, self.rt.rng, set())
            except NoHealthyInstance:
                continue
            back = self.rt.h2_backs.get(instance_key(inst))
            if back is not None and not back.closed:
                back.open(s, headers, end)
            else:
                s.waiting.insert(0, ("open", headers, end))
                self.rt.spawn(self._dial(s, pool, inst))
            return
        self.fail(s, 503, 14, "no healthy upstream")  # gRPC 14: UNAVAILABLE

    async def _dial(self, s: _Stream, pool: Any, inst: Any) -> None:
        key = instance_key(inst)
        rt = self.rt
        try:
            back = rt.h2_backs.get(key)
            if back is None or back.closed:
                back = await dial(rt, self.up, inst, self.link, lambda _ctx, k: H2Back(rt, k))
                rt.h2_backs[key] = back
        except (OSError, TimeoutError, ssl.SSLError, DialRefused) as e:
            pool.failed(inst, time.monotonic(), rt.rng.random())
            log.warning("upstream %s: HTTP/2 stream to %s:%d failed: %s", self.up.destination_name, inst.address,
                        inst.port, e or "connect timed out")
            return self.fail(s, 502, 14, "upstream connect error")
        if self.closed or s.fsid not in self.streams:
            return
        for kind, payload, end in s.waiting:
            if kind == "open":
                back.open(s, payload, end)
            elif kind == "data":
                back.send_data(s.bsid, payload[0], end, payload[1])
            else:
                back.send_headers(s.bsid, payload, end)
        s.waiting.clear()

    def fail(self, s: _Stream, status: int, grpc_status: int, message: str) -> None:
        """Answer a stream here: gRPC's trailers-only response for a gRPC call, else an HTTP status."""
        self.streams.pop(s.fsid, None)
        for kind, payload, _ in s.waiting:  # what the application sent for it will not be forwarded: release it
            if kind == "data":
                payload[1](len(payload[0]))
        s.waiting.clear()
        self.link.failed += 1
        if s.grpc:
            headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                       (b"grpc-status", str(grpc_status).encode()), (b"grpc-message", message.encode())]
        else:
            headers = [(b":status", str(status).encode()), (b"content-type", b"text/plain")]
        self.send_headers(s.fsid, headers, end=s.grpc)
        if not s.grpc:
            self.send_data(s.fsid, message.encode() + b"\n", True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.link.active -= 1
        for sid in list(self.outbox):  # responses nobody will read: release them on the shared connections
            self.drop(sid)
        for s in self.streams.values():
            if s.back is not None:
                s.back.streams.pop(s.bsid, None)
                s.back.reset(s.bsid)
        self.streams.clear()
