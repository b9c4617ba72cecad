"""Distributed tracing in the proxy: W3C trace context (`traceparent`, `tracestate`; B3 read and written
when a request carries it), one span per request on each side of a hop (a client span where the
application calls out, a server span where a peer's request comes in), exported over OTLP/HTTP
(protobuf) to the collector `proxy-defaults` names:

    Config = { tracing = { otlp_endpoint = "http://127.0.0.1:4318/v1/traces", sampling_percent = 100 } }

A request without trace context gets a new trace; one with context keeps its trace id and sampling
decision (parent-based); `sampling_percent` decides for new traces. Spans wait in a bounded queue and are
sent in batches by one asyncio task: a collector that is down or slow costs requests nothing, and what
cannot be queued or sent is counted as dropped. With tracing off the proxy does one `is None` test per
request.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from binascii import hexlify
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("proconsul.proxy")
QUEUE_MAX = 4096
BATCH_MAX = 512
FLUSH_EVERY = 1.0
EXPORT_TIMEOUT = 2.0
SERVER, CLIENT = 2, 3  # OTLP SpanKind
ATTR_CACHE_MAX = 4096


class Rng(Protocol):
    def random(self) -> float: ...

    def getrandbits(self, k: int) -> int: ...


@dataclass(slots=True)
class TraceContext:
    """The span a request is in on this side of the hop (its ids, its parent, whether it is recorded)."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes, ours
    parent_id: bytes  # 8 bytes or b""
    sampled: bool
    kind: int
    start_ns: int
    b3: bool = False  # the request came with B3 headers: write them back too


@dataclass(slots=True)
class TracingSettings:
    endpoint: str
    sampling_percent: float = 100.0

    @staticmethod
    def from_config(raw: Any) -> TracingSettings | None:
        """proxy-defaults Config.tracing (None when absent or without an endpoint)."""
        if not isinstance(raw, dict) or not raw.get("otlp_endpoint"):
            return None
        return TracingSettings(str(raw["otlp_endpoint"]), float(raw.get("sampling_percent", 100.0)))


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) of a W3C traceparent; None when it is not one (then a new trace
    starts, as the spec says)."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff" or len(parts[1]) != 32 or len(parts[2]) != 16 \
            or len(parts[3]) != 2 or (parts[0] == b"00" and len(parts) != 4):
        return None
    try:
        trace_id, span_id, flags = bytes.fromhex(parts[1].decode()), bytes.fromhex(parts[2].decode()), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == bytes(16) or span_id == bytes(8):
        return None
    return trace_id, span_id, bool(flags & 1)


def _b3(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes, bool | None] | None:
    found = {k: v for k, v in headers if k in (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled")}
    tid, sid = found.get(b"x-b3-traceid", b""), found.get(b"x-b3-spanid", b"")
    try:
        trace_id = bytes.fromhex(tid.decode().rjust(32, "0")) if len(tid) in (16, 32) else b""
        span_id = bytes.fromhex(sid.decode()) if len(sid) == 16 else b""
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    sampled = found.get(b"x-b3-sampled")
    return trace_id, span_id, None if sampled is None else sampled in (b"1", b"true")


def _set(headers: list[tuple[bytes, bytes]], values: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k not in values] + list(values.items())


@dataclass(slots=True)
class _Span:
    ctx: TraceContext
    name: str
    end_ns: int
    status: int
    attributes: dict[str, Any]


@dataclass
class Tracer:
    service: str
    settings: TracingSettings
    rng: Rng
    queue: deque[_Span] = field(default_factory=deque)
    # Encoded span names and attribute sets (by their keys and values): a proxy's spans repeat the same few
    # (method, status, peer, route, cluster, instance), so most are encoded once (cleared past ATTR_CACHE_MAX).
    attr_cache: dict[Any, bytes] = field(default_factory=dict)
    exported: int = 0
    dropped: int = 0
    failures: int = 0
    _wake: asyncio.Event | None = None

    # ------------------------------------------------------------------ per request (pure but for the clock)
    def start(self, headers: list[tuple[bytes, bytes]], kind: int, now_ns: int | None = None
              ) -> tuple[TraceContext, list[tuple[bytes, bytes]]]:
        """The span of a request entering this side of the hop, and the headers to send on (traceparent with
        our span as the parent; tracestate passed unchanged; B3 rewritten when it came with B3)."""
        parent = None
        b3 = False
        maybe_b3 = False
        found = False
        for k, v in headers:
            if k == b"traceparent":
                parent = parse_traceparent(v)
                found = True
                break
            if k[0] == 120 and k.startswith(b"x-b3-"):  # 120: "x", no slice made for every other header
                maybe_b3 = True
        if parent is None and maybe_b3:
            got = _b3(headers)
            if got is not None:
                b3 = True
                sampled = got[2] if got[2] is not None else self._draw()
                parent = (got[0], got[1], sampled)
        rng = self.rng
        span_bits = rng.getrandbits(64) or 1
        span_id = span_bits.to_bytes(8, "big")
        if parent is None:
            trace_bits = rng.getrandbits(128) or 1
            trace_id, parent_id, sampled = trace_bits.to_bytes(16, "big"), b"", self._draw()
            traceparent = b"00-%032x-%016x-%s" % (trace_bits, span_bits, b"01" if sampled else b"00")
        else:
            trace_id, parent_id, sampled = parent
            traceparent = b"00-%s-%016x-%s" % (hexlify(trace_id), span_bits, b"01" if sampled else b"00")
        ctx = TraceContext(trace_id, span_id, parent_id, sampled, kind, now_ns or time.time_ns(), b3)
        if not b3:  # the common case: one header replaced (or added)
            if not found:
                return ctx, [*headers, (b"traceparent", traceparent)]
            out = [h for h in headers if h[0] != b"traceparent"]
            out.append((b"traceparent", traceparent))
            return ctx, out
        values = {b"traceparent": traceparent, b"x-b3-traceid": hexlify(trace_id), b"x-b3-spanid": hexlify(span_id),
                  b"x-b3-sampled": b"1" if sampled else b"0"}
        if parent_id:
            values[b"x-b3-parentspanid"] = hexlify(parent_id)
        return ctx, _set(headers, values)

    def _draw(self) -> bool:
        p = self.settings.sampling_percent
        return p >= 100 or (p > 0 and self.rng.random() * 100 < p)

    def finish(self, ctx: TraceContext, name: str, status: int, attributes: dict[str, Any],
               now_ns: int | None = None) -> None:
        """Queue the span of a finished request (sampled ones only); a full queue drops it (counted)."""
        if not ctx.sampled:
            return
        if len(self.queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self.queue.append(_Span(ctx, name, now_ns or time.time_ns(), status, attributes))
        if len(self.queue) >= BATCH_MAX and self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ export
    def encode(self, spans: list[_Span]) -> bytes:
        """An OTLP ExportTraceServiceRequest (protobuf wire format) holding `spans`. Written by hand: building
        opentelemetry-proto's message objects cost ~50 µs a span here, more than the request it describes;
        the tests decode this with opentelemetry-proto itself."""
        cache = self.attr_cache
        if len(cache) > ATTR_CACHE_MAX:
            cache.clear()
        body = b"".join([_field(2, _span(s, cache)) for s in spans])
        scope = _field(1, _field(1, b"proconsul.proxy"))
        resource = _field(1, _kv("service.name", self.service))
        return _field(1, _field(1, resource) + _field(2, scope + body))

    async def run(self) -> None:
        """Send queued spans in batches until cancelled; a failing collector is logged once per outage."""
        import aiohttp

        self._wake = asyncio.Event()
        failing = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=EXPORT_TIMEOUT)) as session:
            while True:
                # A batch goes when BATCH_MAX spans are queued or FLUSH_EVERY has passed, not as soon as the last
                # post returned: posting whatever came in meanwhile made a small POST per round trip under load
                # (measured: most of tracing's cost).
                if len(self.queue) < BATCH_MAX:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY)
                    except TimeoutError:
                        pass
                    if not self.queue:
                        continue
                batch = [self.queue.popleft() for _ in range(min(BATCH_MAX, len(self.queue)))]
                try:
                    async with session.post(self.settings.endpoint, data=self.encode(batch),
                                            headers={"Content-Type": "application/x-protobuf"}) as resp:
                        if resp.status >= 300:
                            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                              message=resp.reason or "")
                    self.exported += len(batch)
                    if failing:
                        log.info("tracing: the collector at %s takes spans again", self.settings.endpoint)
                        failing = False
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    self.failures += 1
                    self.dropped += len(batch)
                    if not failing:
                        log.warning("tracing: cannot send spans to %s (%s); dropping them until it answers",
                                    self.settings.endpoint, e or type(e).__name__)
                        failing = True
                    await asyncio.sleep(FLUSH_EVERY)
                await asyncio.sleep(0)  # let requests run between batches


# ---------------------------------------------------------------------- OTLP's protobuf wire format
def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    out = bytearray()
    n &= (1 << 64) - 1
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string, embedded message)."""
    n = len(payload)
    return _SMALL[number << 3 | 2] + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


_KEY_CACHE: dict[str, bytes] = {}


def _kv(key: str, v: Any) -> bytes:
    k = _KEY_CACHE.get(key)
    if k is None:
        k = _KEY_CACHE[key] = _field(1, key.encode())
    if v.__class__ is str:
        value = _field(1, v.encode())
    elif isinstance(v, bool):
        value = b"\x10" + _SMALL[int(v)]
    elif isinstance(v, int):
        value = b"\x18" + _varint(v)
    else:
        value = _field(1, str(v).encode())
    return k + _field(2, value)


_KIND = {SERVER: b"\x30\x02", CLIENT: b"\x30\x03"}
_ERROR = b"\x7a\x02\x18\x02"  # field 15 (Status), 2 bytes: code (3) = STATUS_CODE_ERROR (2)


_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (field 7) and end_time_unix_nano (field 8), fixed64


def _span(s: _Span, cache: dict[Any, bytes]) -> bytes:
    ctx = s.ctx
    # A proxy's spans repeat a few names and attribute sets (method, status, peer, route, cluster, instance):
    # each is encoded once and found again by one lookup (the whole set's keys and values as the key).
    name = cache.get(s.name)
    if name is None:
        name = cache[s.name] = _field(5, s.name.encode())
    attrs = s.attributes
    try:
        key: Any = (tuple(attrs), tuple(attrs.values()))
        block = cache.get(key)
    except TypeError:  # an unhashable value: encoded every time
        key, block = None, None
    if block is None:
        block = b"".join([_field(9, _kv(k, v)) for k, v in attrs.items() if v is not None and v != ""])
        if key is not None:
            cache[key] = block
    return b"".join([b"\x0a\x10", ctx.trace_id, b"\x12\x08", ctx.span_id,
                     b"\x22\x08" + ctx.parent_id if ctx.parent_id else b"", name,
                     _KIND.get(ctx.kind) or b"\x30" + _varint(ctx.kind), _TIMES.pack(0x39, ctx.start_ns, 0x41, s.end_ns),
                     block, _ERROR if s.status >= 500 or s.status == 0 else b""])
