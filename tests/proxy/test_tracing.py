"""Trace context and span encoding, pure (the end-to-end trace is in tests/traffic/test_routing.py)."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proconsul.connect.proxy.tracing import CLIENT, SERVER, Tracer, TracingSettings, parse_traceparent

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def tracer(pct: float = 100) -> Tracer:
    return Tracer("web", TracingSettings("http://127.0.0.1:1/v1/traces", pct), random.Random(7))


def test_parse_traceparent() -> None:
    assert parse_traceparent(TP) == (bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                                     bytes.fromhex("00f067aa0ba902b7"), True)
    for bad in (b"", b"00-xyz", TP.replace(b"-01", b"-1"), b"ff" + TP[2:], TP.replace(b"4bf92f", b"000000")[:3] +
                b"0" * 32 + TP[35:], TP + b"-extra"):
        assert parse_traceparent(bad) is None, bad
    assert parse_traceparent(b"01" + TP[2:] + b"-future") is not None, "a later version may add fields"


def test_a_request_with_context_continues_its_trace() -> None:
    ctx, headers = tracer().start([(b"traceparent", TP), (b"tracestate", b"a=1")], CLIENT)
    assert ctx.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" and ctx.parent_id.hex() == "00f067aa0ba902b7"
    sent = dict(headers)
    assert sent[b"traceparent"] == b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + ctx.span_id.hex().encode() + b"-01"
    assert sent[b"tracestate"] == b"a=1" and ctx.sampled


def test_new_traces_follow_the_sampling_rate_and_unsampled_context_propagates() -> None:
    t = tracer(10)
    sampled = sum(t.start([], SERVER)[0].sampled for _ in range(2000))
    assert 120 < sampled < 290
    ctx, headers = tracer(100).start([(b"traceparent", TP[:-2] + b"00")], CLIENT)
    assert not ctx.sampled and dict(headers)[b"traceparent"].endswith(b"-00"), "the parent's decision holds"
    t = tracer()
    t.finish(ctx, "GET api", 200, {})
    assert not t.queue


def test_b3_is_read_and_written() -> None:
    ctx, headers = tracer().start([(b"x-b3-traceid", b"463ac35c9f6413ad"), (b"x-b3-spanid", b"a2fb4a1d1a96d312"),
                                   (b"x-b3-sampled", b"1")], CLIENT)
    sent = dict(headers)
    assert ctx.trace_id.hex().endswith("463ac35c9f6413ad") and sent[b"x-b3-parentspanid"] == b"a2fb4a1d1a96d312"
    assert sent[b"x-b3-spanid"] == ctx.span_id.hex().encode() and b"traceparent" in sent


def test_spans_encode_as_otlp_and_the_queue_is_bounded() -> None:
    t = tracer()
    ctx, _ = t.start([(b"traceparent", TP)], SERVER, now_ns=1_000)
    t.finish(ctx, "GET web", 503, {"http.response.status_code": 503, "url.path": "/x", "empty": ""}, now_ns=5_000)
    req = ExportTraceServiceRequest.FromString(t.encode(list(t.queue)))
    rs = req.resource_spans[0]
    assert rs.resource.attributes[0].value.string_value == "web"
    span = rs.scope_spans[0].spans[0]
    assert span.trace_id == ctx.trace_id and span.parent_span_id == bytes.fromhex("00f067aa0ba902b7")
    assert span.kind == SERVER and span.end_time_unix_nano - span.start_time_unix_nano == 4_000
    assert {a.key for a in span.attributes} == {"http.response.status_code", "url.path"} and span.status.code == 2
    from proconsul.connect.proxy import tracing

    for _ in range(tracing.QUEUE_MAX + 10):
        t.finish(ctx, "GET web", 200, {})
    assert len(t.queue) == tracing.QUEUE_MAX and t.dropped == 11


def test_unsampled_requests_carry_context_and_nothing_else() -> None:
    t = tracer(100)
    unsampled = [(b"host", b"a"), (b"traceparent", TP[:-2] + b"00")]
    ctx, headers = t.start(unsampled, SERVER)
    assert not ctx.sampled and headers == unsampled, "the caller's context goes on unchanged: no span of ours"
    t.finish(ctx, "GET a", 200, {})
    assert not t.queue
    zero = b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-00"  # not a valid context: a new (sampled) trace
    ctx, headers = t.start([(b"traceparent", zero)], CLIENT)
    assert ctx.sampled and ctx.parent_id == b"" and parse_traceparent(dict(headers)[b"traceparent"])[2]
    upper = TP.upper()  # not the spec's lowercase: parsed the long way
    ctx, headers = t.start([(b"traceparent", upper)], CLIENT)
    assert ctx.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" and ctx.sampled
    none = tracer(0)
    for _ in range(50):  # a new trace that is not sampled: a valid traceparent saying so, nothing recorded
        ctx, headers = none.start([(b"host", b"a")], CLIENT)
        tp = dict(headers)[b"traceparent"]
        got = parse_traceparent(tp)
        assert not ctx.sampled and got is not None and not got[2] and len(tp) == 55
    assert len({dict(none.start([], CLIENT)[1])[b"traceparent"] for _ in range(100)}) == 100


class _Source:
    """A connection's fixed part as a Front gives it to the exporter (`fixed_of`)."""

    def __init__(self, service: str, span: bytes) -> None:
        self.service, self.span = service, span
        self.asked: list[tuple[str, str, str]] = []

    def fixed_of(self, d: str, inst: str, scope: str) -> _Source:
        self.asked.append((d, inst, scope))
        return self


def test_a_request_block_encodes_as_the_attribute_dict() -> None:
    from proconsul.connect.proxy.tracing import CONNECTION_ATTRIBUTES, connection_attributes

    fields = {"upstream_service": "api", "upstream_host": "127.0.0.1:21000", "route_name": "api/0",
              "upstream_cluster": "v1.api.default.default.dc1", "upstream_instance": "", "downstream_peer_uri_san": None}
    for status, flag in ((200, "-"), (503, "UH")):
        t = tracer()
        ctx, _ = t.start([(b"traceparent", TP)], CLIENT, now_ns=10)
        attributes = {"http.request.method": "GET", "url.path": "/x?y", "http.response.status_code": status,
                      **{attr: fields.get(name) for attr, name in CONNECTION_ATTRIBUTES},
                      "proconsul.response_flags": flag if flag != "-" else None}
        t.finish(ctx, "GET api", status, attributes, now_ns=20)
        t.finish_encoded(ctx, status, t.request_block(b"GET", b"/x?y", status, flag, "api",
                                                      connection_attributes(fields)), now_ns=20)
        source = _Source("api", connection_attributes(fields))
        t.later((ctx, 20, status, flag, b"GET", b"/x?y", source, "route", "instance", "scope"))  # as a request's path keeps it
        first, second, third = (ExportTraceServiceRequest.FromString(t.encode([s])) for s in t.queue)
        assert first == second == third
        assert source.asked == [("route", "instance", "scope")], "its connection's part looked up in the batch"
        span = first.resource_spans[0].scope_spans[0].spans[0]
        assert span.name == "GET api" and {a.key for a in span.attributes} >= {"peer.service", "proconsul.route"}


class _Draws:
    """An rng whose draws are given: `random()` always `r`, `getrandbits` the next of `bits`."""

    def __init__(self, r: float, bits: list[int]) -> None:
        self.r, self.bits = r, bits

    def random(self) -> float:
        return self.r

    def getrandbits(self, k: int) -> int:
        return self.bits.pop(0)


def test_a_new_traces_ids_are_its_draw_and_never_all_zero() -> None:
    M = (1 << 64) - 1
    for pct, r, draw, want in ((100, 0.5, (0xabc << 64) | 0xdef, (0xabc, 0xdef, b"01")),
                               (1, 0.5, (1 << 191) | M, ((1 << 191) >> 64, M, b"00")),  # not sampled
                               (100, 0.0, 0, (1, 1, b"01")), (100, 0.0, 5 << 64, (5, 1, b"01")),
                               (1, 0.001, 7, (1, 7, b"01"))):  # sampled: 0.1 < 1%
        t = Tracer("web", TracingSettings("http://127.0.0.1:1/v1/traces", pct), _Draws(r, [draw]))  # type: ignore[arg-type]
        ctx, headers = t.start([(b"host", b"a")], CLIENT)
        tp = b"00-%032x-%016x-%s" % want
        assert headers == [(b"host", b"a"), (b"traceparent", tp)] and ctx.sampled == (want[2] == b"01")
        if ctx.sampled:
            assert ctx.sent == tp and ctx.trace_id == want[0].to_bytes(16, "big") and ctx.parent_id == b""
