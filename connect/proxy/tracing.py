"""Distributed tracing in the proxy: W3C trace context (`traceparent`, `tracestate`; B3 read and written
when a request carries it), one span per request on each side of a hop (a client span where the
application calls out, a server span where a peer's request comes in), exported over OTLP/HTTP
(protobuf) to the collector `proxy-defaults` names:

    Config = { tracing = { otlp_endpoint = "http://127.0.0.1:4318/v1/traces", sampling_percent = 100 } }

A request without trace context gets a new trace; one with context keeps its trace id and sampling
decision (parent-based); `sampling_percent` decides for new traces. Spans wait in a bounded queue and are
sent in batches by one asyncio task: a collector that is down or slow costs requests nothing, and what
cannot be queued or sent is counted as dropped. With tracing off the proxy does one `is None` test per
request; an unsampled request costs only its `traceparent` (made from one random draw when it has none,
passed on unchanged when its caller's says "not sampled": nothing is recorded here, so the caller's span
stays the parent).
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from binascii import hexlify, unhexlify
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("proconsul.proxy")
QUEUE_MAX = 8192
BATCH_MAX = 2048  # spans a POST: an aiohttp POST costs ~0.5–1 ms of CPU, ~2 µs a span at 512
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


def _with(headers: list[tuple[bytes, bytes]], found: bool, traceparent: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` with `traceparent` in place of the one they carry (`found`), or added."""
    if not found:
        return [*headers, (b"traceparent", traceparent)]
    out = [h for h in headers if h[0] != b"traceparent"]
    out.append((b"traceparent", traceparent))
    return out


def _set(headers: list[tuple[bytes, bytes]], values: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k not in values] + list(values.items())


# A version-00 traceparent as its spec writes it (lowercase hex): trace id, parent id, flags. Others (a later
# version, uppercase) go through parse_traceparent.
_TP00 = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]([0-9a-f])")
_ODD = frozenset(b"13579bdf")  # a last hex digit of the flags with the sampled bit set
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_M64 = (1 << 64) - 1
# The context of every request that is not recorded: nothing reads its ids (no span is made).
UNSAMPLED = TraceContext(bytes(16), bytes(8), b"", False, 0, 0)


# A finished span waiting for export: its context, end time, status and encoded name and attributes (cached:
# a proxy's spans repeat them). A tuple: one is made per sampled request.
_Span = tuple[TraceContext, int, int, tuple[bytes, bytes]]


@dataclass
class Tracer:
    service: str
    settings: TracingSettings
    rng: Rng
    queue: deque[_Span] = field(default_factory=deque)
    # Encoded span names and attribute sets (by their keys and values): a proxy's spans repeat the same few
    # (method, status, peer, route, cluster, instance), so most are encoded once (cleared past ATTR_CACHE_MAX).
    attr_cache: dict[Any, tuple[bytes, bytes]] = field(default_factory=dict)
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
        trace_hex = b""
        for k, v in headers:
            if k == b"traceparent":
                m = _TP00.fullmatch(v)
                if m is None:
                    parent = parse_traceparent(v)
                else:
                    trace_hex, parent_hex, flags = m.groups()
                    if trace_hex == _ZERO_TRACE or parent_hex == _ZERO_SPAN:
                        trace_hex = b""  # not a valid context: a new trace
                    elif flags[0] not in _ODD:
                        return UNSAMPLED, headers  # not recorded anywhere: the caller's context goes on unchanged
                    else:
                        parent = (unhexlify(trace_hex), unhexlify(parent_hex), True)
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
        if parent is None:
            if self._draw():
                bits = self.rng.getrandbits(192)
                return self._context(headers, kind, found, bits >> 64, bits & _M64, None, now_ns)
            # a new trace that is not recorded: its ids from one draw, no span, no context kept
            bits = self.rng.getrandbits(192)
            trace_bits, span_bits = bits >> 64, bits & _M64
            if not (trace_bits and span_bits):
                trace_bits, span_bits = trace_bits or 1, span_bits or 1
            return UNSAMPLED, _with(headers, found, b"00-%032x-%016x-00" % (trace_bits, span_bits))
        return self._context(headers, kind, found, 0, self.rng.getrandbits(64), parent, now_ns, b3, trace_hex)

    def _context(self, headers: list[tuple[bytes, bytes]], kind: int, found: bool, trace_bits: int, span_bits: int,
                 parent: tuple[bytes, bytes, bool] | None, now_ns: int | None, b3: bool = False,
                 trace_hex: bytes = b"") -> tuple[TraceContext, list[tuple[bytes, bytes]]]:
        """A span's context (of a new sampled trace when `parent` is None) and the headers to send on."""
        span_bits = span_bits or 1
        span_id = span_bits.to_bytes(8, "big")
        if parent is None:
            trace_bits = trace_bits or 1
            trace_id, parent_id, sampled = trace_bits.to_bytes(16, "big"), b"", True
            traceparent = b"00-%032x-%016x-01" % (trace_bits, span_bits)
        else:
            trace_id, parent_id, sampled = parent
            traceparent = b"00-%s-%016x-%s" % (trace_hex or hexlify(trace_id), span_bits, b"01" if sampled else b"00")
        ctx = TraceContext(trace_id, span_id, parent_id, sampled, kind, now_ns or time.time_ns(), b3)
        if not b3:  # the common case: one header replaced (or added)
            return ctx, _with(headers, found, traceparent)
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
        if ctx.sampled:
            self.finish_encoded(ctx, status, self.block(name, attributes), now_ns)

    def finish_encoded(self, ctx: TraceContext, status: int, block: tuple[bytes, bytes],
                       now_ns: int | None = None) -> None:
        """Queue a sampled span whose name and attributes are encoded already (`block`, `request_block`)."""
        queue = self.queue
        if len(queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        queue.append((ctx, now_ns or time.time_ns(), status, block))
        if len(queue) >= BATCH_MAX and self._wake is not None:
            self._wake.set()

    def block(self, name: str, attributes: dict[str, Any]) -> tuple[bytes, bytes]:
        """A span's name and attributes, encoded (once per distinct set: found again by one lookup)."""
        cache = self.attr_cache
        try:
            key: Any = (name, tuple(attributes), tuple(attributes.values()))
            got = cache.get(key)
        except TypeError:  # an unhashable value: encoded every time
            key, got = None, None
        if got is None:
            got = (_field(5, name.encode()), _attrs(attributes))
            if key is not None:
                self._keep(key, got)
        return got

    def request_block(self, method: bytes, path: bytes, status: int, flag: str, service: str,
                      connection: bytes) -> tuple[bytes, bytes]:
        """The name and attributes of a request's span, its connection's attributes (`connection_attributes`)
        encoded already: the same attributes, in the same order, as `finish` with the whole dict."""
        key = (method, path, status, flag, service, connection)
        got = self.attr_cache.get(key)
        if got is None:
            m = method.decode("latin-1")
            got = (_field(5, f"{m} {service}".encode()),
                   _attrs({"http.request.method": m, "url.path": path.decode("latin-1"),
                           "http.response.status_code": status}) + connection +
                   _attrs({"proconsul.response_flags": flag if flag != "-" else None}))
            self._keep(key, got)
        return got

    def _keep(self, key: Any, got: tuple[bytes, bytes]) -> None:
        cache = self.attr_cache
        if len(cache) >= ATTR_CACHE_MAX:
            cache.clear()
        cache[key] = got

    # ------------------------------------------------------------------ export
    def encode(self, spans: list[_Span]) -> bytes:
        """An OTLP ExportTraceServiceRequest (protobuf wire format) holding `spans`. Written by hand: building
        opentelemetry-proto's message objects cost ~50 µs a span here, more than the request it describes;
        the tests decode this with opentelemetry-proto itself."""
        body = b"".join([_field(2, _span(s)) for s in spans])
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


def _attrs(attributes: dict[str, Any]) -> bytes:
    """Span attributes (field 9 each), those without a value left out."""
    return b"".join([_field(9, _kv(k, v)) for k, v in attributes.items() if v is not None and v != ""])


# The span attributes a request's connection (and its route, split and instance) decides, from the access-log
# record's fields: the same for every request of that connection to that instance, encoded once.
CONNECTION_ATTRIBUTES = (("peer.service", "upstream_service"), ("server.address", "upstream_host"),
                         ("proconsul.route", "route_name"), ("proconsul.upstream_cluster", "upstream_cluster"),
                         ("proconsul.upstream_instance", "upstream_instance"),
                         ("proconsul.source", "downstream_peer_uri_san"))


def connection_attributes(fields: dict[str, Any]) -> bytes:
    return _attrs({attr: fields.get(name) for attr, name in CONNECTION_ATTRIBUTES})


def _span(s: _Span) -> bytes:
    ctx, end_ns, status, (name, attrs) = s
    return b"".join([b"\x0a\x10", ctx.trace_id, b"\x12\x08", ctx.span_id,
                     b"\x22\x08" + ctx.parent_id if ctx.parent_id else b"", name,
                     _KIND.get(ctx.kind) or b"\x30" + _varint(ctx.kind), _TIMES.pack(0x39, ctx.start_ns, 0x41, end_ns),
                     attrs, _ERROR if status >= 500 or status == 0 else b""])
