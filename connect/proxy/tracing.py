"""Distributed tracing in the proxy: W3C trace context (`traceparent`, `tracestate`; B3 read and written
when a request carries it), one span per request on each side of a hop (a client span where the
application calls out, a server span where a peer's request comes in), exported over OTLP/HTTP
(protobuf) to the collector `proxy-defaults` names:

    Config = { tracing = { otlp_endpoint = "http://127.0.0.1:4318/v1/traces", sampling_percent = 100 } }

A request without trace context gets a new trace; one with context keeps its trace id and sampling
decision (parent-based); `sampling_percent` decides for new traces. Spans wait in a bounded queue and are
sent in batches by one asyncio task: a collector that is down or slow costs requests nothing, and what
cannot be queued or sent is counted as dropped. An HTTP/1.1 request's span is queued as what its path has at
hand (`Tracer.later`); its name and attributes are found in the exporter's batch. With tracing off the proxy does one `is None` test per
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


class TraceContext:
    """The span a request is in on this side of the hop: kept as the `traceparent` this side sends on (`sent`:
    the trace id and our span id, in hex) and its parent's span id in hex (empty for a new trace). The request's
    path only formats that header; the ids' bytes are made when the span is encoded, in the exporter's batch
    (or when asked for), not per request."""

    __slots__ = ("sent", "parent_hex", "sampled", "kind", "start_ns", "b3")

    def __init__(self, sent: bytes, parent_hex: bytes, sampled: bool, kind: int, start_ns: int,
                 b3: bool = False) -> None:
        self.sent = sent  # b"00-<trace id, 32 hex>-<our span id, 16 hex>-<flags>"
        self.parent_hex = parent_hex  # 16 hex or b""
        self.sampled = sampled
        self.kind = kind
        self.start_ns = start_ns
        self.b3 = b3  # the request came with B3 headers: write them back too

    @property
    def trace_id(self) -> bytes:
        """16 bytes."""
        return unhexlify(self.sent[3:35])

    @property
    def span_id(self) -> bytes:
        """8 bytes, ours."""
        return unhexlify(self.sent[36:52])

    @property
    def parent_id(self) -> bytes:
        """8 bytes or b"" (a new trace)."""
        return unhexlify(self.parent_hex) if self.parent_hex else b""


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


# A version-00 traceparent as its spec writes it (lowercase hex, ids not all zero): trace id, parent id, flags.
# Others (a later version, uppercase, all-zero ids) go through parse_traceparent.
_TP00 = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_ODD = frozenset(b"13579bdf")  # a last hex digit of the flags with the sampled bit set
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_M64 = (1 << 64) - 1
_TRACE_ONE = 1 << 64  # a 192-bit draw below this has an all-zero trace id
# The context of every request that is not recorded: nothing reads its ids (no span is made).
UNSAMPLED = TraceContext(b"00-%s-%s-00" % (_ZERO_TRACE, _ZERO_SPAN), b"", False, 0, 0)


# A finished span waiting for export: its context, end time, status and encoded name and attributes (cached:
# a proxy's spans repeat them). A tuple: one is made per sampled request.
_Span = tuple[TraceContext, int, int, tuple[bytes, bytes]]
# An HTTP request's span as its path kept it (`Tracer.later`): encoded name and attributes found at export.
_Kept = tuple[TraceContext, int, int, str, bytes, bytes, Any, Any, Any, Any]


@dataclass
class Tracer:
    service: str
    settings: TracingSettings
    rng: Rng
    queue: deque[_Span | _Kept] = field(default_factory=deque)
    # Encoded span names and attribute sets (by their keys and values): a proxy's spans repeat the same few
    # (method, status, peer, route, cluster, instance), so most are encoded once (cleared past ATTR_CACHE_MAX).
    attr_cache: dict[Any, tuple[bytes, bytes]] = field(default_factory=dict)
    # What a span's name, kind, attributes and status encode to, by its encoded name and attributes: `encode`.
    span_parts: dict[Any, tuple[int, bool, bytes, bytes, bytes, bytes]] = field(default_factory=dict)
    exported: int = 0
    dropped: int = 0
    failures: int = 0
    _wake: asyncio.Event | None = None

    # ------------------------------------------------------------------ per request (pure but for the clock)
    def start(self, headers: list[tuple[bytes, bytes]], kind: int, now_ns: int | None = None
              ) -> tuple[TraceContext, list[tuple[bytes, bytes]]]:
        """The span of a request entering this side of the hop, and the headers to send on (traceparent with
        our span as the parent; tracestate passed unchanged; B3 rewritten when it came with B3). The two common
        cases (a caller's sampled version-00 context, a new trace) are made here in a few steps: the request's
        path only formats the traceparent it sends on (measured: per-request work costs the whole proxy 2–3×
        what it costs in a tight loop; the ids' bytes are made in the exporter's batch)."""
        parent = None
        b3 = False
        maybe_b3 = False
        found = False
        for k, v in headers:
            if k == b"traceparent":
                if _TP00.fullmatch(v) is None:  # not the common form (or all-zero ids: parsed to None)
                    got = parse_traceparent(v)
                    if got is not None:
                        parent = (hexlify(got[0]), hexlify(got[1]), got[2])
                else:  # 55 bytes, its fields by position
                    if v[54] not in _ODD:
                        return UNSAMPLED, headers  # not recorded anywhere: the caller's context goes on unchanged
                    sent = b"00-%s-%016x-01" % (v[3:35], self.rng.getrandbits(64) or 1)
                    return (TraceContext(sent, v[36:52], True, kind, now_ns or time.time_ns()),
                            _with(headers, True, sent))
                found = True
                break
            if k[0] == 120 and k.startswith(b"x-b3-"):  # 120: "x", no slice made for every other header
                maybe_b3 = True
        if parent is None and maybe_b3:
            got = _b3(headers)
            if got is not None:
                b3 = True
                sampled = got[2] if got[2] is not None else self._draw()
                parent = (hexlify(got[0]), hexlify(got[1]), sampled)
        if parent is None:  # a new trace: `_draw` and `_with` written out (the most common case)
            p, rng = self.settings.sampling_percent, self.rng
            sampled = p >= 100 or (p > 0 and rng.random() * 100 < p)
            bits = rng.getrandbits(192)  # the trace id and the span id in one draw
            if bits < _TRACE_ONE or not bits & _M64:  # an all-zero id is not valid: 1 instead
                bits = ((bits >> 64) or 1) << 64 | ((bits & _M64) or 1)
            # "<trace id, 32 hex>-<span id, 16 hex>" in one C call (hexlify's separator after the first 16
            # bytes): a third of what formatting the two ints with %032x/%016x costs
            sent = b"00-" + hexlify(bits.to_bytes(24, "big"), b"-", -16) + (b"-01" if sampled else b"-00")
            out = _with(headers, True, sent) if found else [*headers, (b"traceparent", sent)]
            if not sampled:  # not recorded: its ids, no span, no context kept
                return UNSAMPLED, out
            return TraceContext(sent, b"", True, kind, now_ns or time.time_ns()), out
        return self._context(headers, kind, found, self.rng.getrandbits(64), parent, now_ns, b3)

    def _context(self, headers: list[tuple[bytes, bytes]], kind: int, found: bool, span_bits: int,
                 parent: tuple[bytes, bytes, bool], now_ns: int | None, b3: bool
                 ) -> tuple[TraceContext, list[tuple[bytes, bytes]]]:
        """A span's context in its caller's trace (`parent`: trace id and parent span id in hex, sampled) and
        the headers to send on, B3 too when the request came with B3."""
        trace_hex, parent_hex, sampled = parent
        span_bits = span_bits or 1
        sent = b"00-%s-%016x-%s" % (trace_hex, span_bits, b"01" if sampled else b"00")
        ctx = TraceContext(sent, parent_hex, sampled, kind, now_ns or time.time_ns(), b3)
        if not b3:
            return ctx, _with(headers, found, sent)
        values = {b"traceparent": sent, b"x-b3-traceid": trace_hex, b"x-b3-spanid": b"%016x" % span_bits,
                  b"x-b3-sampled": b"1" if sampled else b"0", b"x-b3-parentspanid": parent_hex}
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
        self.later((ctx, now_ns or time.time_ns(), status, block))

    def later(self, span: _Span | _Kept) -> None:
        """Queue a finished sampled span (a full queue drops it, counted): `(context, end time in ns, status,
        encoded name and attributes)`, or an HTTP request's span kept as what its request's path has at hand,
        `(context, end time in ns, status, response flag, the request's method and target, its connection's
        fixed part (`source.fixed_of(decision, instance, scope)`: `service` and the encoded `span` attributes),
        decision, instance, scope)`, its name and attributes found in the exporter's batch (`request_block`):
        measured, a µs of Python in the request's path costs the whole proxy 2–3 µs, in a batch's loop about its
        loop figure. Nothing else of the request is kept (its head and headers would live until the batch goes:
        more for the garbage collector to walk)."""
        queue = self.queue
        if len(queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        queue.append(span)
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
    def encode(self, spans: list[_Span | _Kept]) -> bytes:
        """An OTLP ExportTraceServiceRequest (protobuf wire format) holding `spans`. Written by hand: building
        opentelemetry-proto's message objects cost ~50 µs a span here, more than the request it describes;
        the tests decode this with opentelemetry-proto itself. A span's ids go from the hex of its traceparent
        to bytes in one `unhexlify` (with their fields' tags), what its name, kind, attributes and status
        encode to is found by one lookup."""
        parts = self.span_parts
        if len(parts) >= ATTR_CACHE_MAX:
            parts.clear()
        times = _TIMES.pack
        out: list[bytes] = []
        add = out.append
        request_block = self.request_block
        fixed_parts: dict[tuple[int, int, int, int], Any] = {}  # once per batch (it holds the objects of the ids)
        for span in spans:
            if len(span) == 4:
                ctx, end_ns, status, block = span
            else:
                ctx, end_ns, status, flag, method, target, source, decision, inst, scope = span
                key = (id(source), id(decision), id(inst), id(scope))
                fixed = fixed_parts.get(key)
                if fixed is None:
                    fixed = fixed_parts[key] = source.fixed_of(decision, inst, scope)
                block = request_block(method, target, status, flag, fixed.service, fixed.span)
            error = status >= 500 or status == 0
            got = parts.get(block)  # a block is (nearly always) one kind and one status: checked, not keyed
            if got is None or got[0] != ctx.kind or got[1] is not error:
                got = parts[block] = _span_parts(block, ctx.kind, error)
            sent, parent = ctx.sent, ctx.parent_hex
            if parent:
                add(b"".join((got[3], unhexlify(b"0a10%s1208%s2208%s" % (sent[3:35], sent[36:52], parent)), got[4],
                              times(0x39, ctx.start_ns, 0x41, end_ns), got[5])))
            else:
                add(b"".join((got[2], unhexlify(b"0a10%s1208%s" % (sent[3:35], sent[36:52])), got[4],
                              times(0x39, ctx.start_ns, 0x41, end_ns), got[5])))
        body = b"".join(out)
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


def _span_parts(block: tuple[bytes, bytes], kind: int, error: bool) -> tuple[int, bool, bytes, bytes, bytes, bytes]:
    """What a span of `block` (its encoded name and attributes), `kind` and `error` encodes to but for its ids
    and times: (kind, error, its tag and length without a parent and with one, the fields between the ids and
    the times (name, kind: 5, 6), the fields after the times (attributes, status: 9, 15))."""
    name, attrs = block
    before = name + (_KIND.get(kind) or b"\x30" + _varint(kind))
    after = attrs + (_ERROR if error else b"")
    rest = len(before) + _TIMES.size + len(after)
    ids = 2 + 16 + 2 + 8  # trace id and span id, tagged
    return (kind, error, b"\x12" + _varint(ids + rest), b"\x12" + _varint(ids + 10 + rest), before, after)
