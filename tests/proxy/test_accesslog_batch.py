"""Access-log lines kept as fields and made at flush time (`AccessLog.later`), pure: the same text as the record's
line, written on size and on the flush interval, in the order of the requests."""

from __future__ import annotations

import io
import time
from typing import Any

from support import until

from proconsul.connect.proxy import accesslog
from proconsul.connect.proxy.accesslog import DETAILS, AccessLog, fixed_fields
from proconsul.connect.proxy.h1 import Head

CLIENT_SIDE = {"downstream_remote_address": "127.0.0.1:40000", "upstream_service": "api",
               "upstream_instance": "node/api-v1", "upstream_host": "127.0.0.1:21000",
               "upstream_cluster": "v1.api.default.default.dc1", "route_name": "api/1", "split": "v1"}
SERVER_SIDE = {"downstream_remote_address": "127.0.0.1:40001", "downstream_peer_uri_san": "spiffe://td/svc/web",
               "upstream_cluster": "local_app", "upstream_service": "api", "upstream_host": "127.0.0.1:8080"}
NO_INSTANCE = {"downstream_remote_address": "-", "upstream_service": "api", "upstream_instance": "",
               "upstream_host": "", "upstream_cluster": "api"}


def cases() -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
    """(record as `request` takes it, the same request as `later` takes it) for a spread of requests."""
    out = []
    for i, (fixed, method, target, version, status, flag, headers) in enumerate([
        (CLIENT_SIDE, b"GET", b"/", b"1.1", 200, "-", [(b"host", b"api"), (b"user-agent", b"wrk")]),
        (SERVER_SIDE, b"POST", b"/orders?id=7&x=\"q\"", b"1.1", 201, "-",
         [(b"user-agent", b"curl/8"), (b"x-request-id", b"r-1"), (b"host", b"a"), (b"user-agent", b"second"),
          (b"x-forwarded-for", b"10.0.0.1")]),
        (NO_INSTANCE, b"GET", b"/caf\xe9/\\", b"1.0", 503, "UH", []),
        (CLIENT_SIDE, b"DELETE", b"/x", b"1.1", 0, "-", [(b"host", b"")]),  # no response: no details
        (CLIENT_SIDE, b"GET", b"/slow", b"1.1", 504, "UT", [(b"accept", b"*/*")]),
        (SERVER_SIDE, b"GET", b"", b"1.1", 429, "RL", [(b"x-request-id", b"\x01\"")]),
    ]):
        start, bytes_in, bytes_out, duration = 1_700_000_000.25 + i * 0.0013, i * 10, i * 100 + 3, i
        rec = {"start_time": start, "method": method.decode("latin-1"), "path": target.decode("latin-1"),
               "protocol": "HTTP/" + version.decode(), "response_code": status, "response_flags": flag,
               "response_code_details": DETAILS.get(flag, "via_upstream" if status else ""),
               "bytes_received": bytes_in, "bytes_sent": bytes_out, "duration": duration, "headers": headers,
               **fixed}
        head = Head(method, target, 0, b"", version, headers, True, False, -1)
        took = duration / 1000
        out.append((rec, (start + took, took, head, status, flag, bytes_in, bytes_out, _Source(fixed), None, None,
                          None)))
    return out


class _Source:
    """A connection's fixed part as a Front gives it at flush time (`fixed_of`), made from its fields."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.log = fixed_fields(fields)
        self.asked: list[tuple[Any, Any, Any]] = []

    def fixed_of(self, d: Any, inst: Any, scope: Any) -> _Source:
        self.asked.append((d, inst, scope))
        return self


class _Armed:
    """Stands for a flush timer already armed (as in a running proxy), so nothing is written but by size or
    an explicit flush."""

    def cancel(self) -> None: ...


def logged(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines(keepends=True)


def test_lines_kept_as_fields_are_the_records_lines() -> None:
    buf = io.StringIO()
    log = AccessLog({"Enabled": True, "Type": "file", "Path": "x"}, open_file=lambda _: buf)
    assert log.default_format
    log._timer = _Armed()  # type: ignore[assignment]
    for _, entry in cases():
        log.later(entry)
    assert buf.getvalue() == "", "kept as fields, nothing formatted before the flush"
    log.flush()
    assert log.lines == len(cases())
    assert logged(buf) == [log.format(rec) for rec, _ in cases()]
    assert '"user_agent":"curl/8"' in logged(buf)[1] and '"response_code_details"' not in logged(buf)[3]


def test_batches_are_written_on_size_and_keep_the_order_of_requests() -> None:
    buf = io.StringIO()
    log = AccessLog({"Enabled": True, "Type": "file", "Path": "x"}, open_file=lambda _: buf)
    (rec, entry), (rec2, entry2) = cases()[:2]
    log.later(entry)
    log.request(rec2)  # a record's line (a tap watching, a denied request) after a kept one
    log.flush()
    assert logged(buf) == [log.format(rec), log.format(rec2)]
    buf.seek(0)
    buf.truncate()
    # outside an event loop a line would be written at once; in a busy proxy a full batch is written by size
    log._timer = _Armed()  # type: ignore[assignment]
    for _ in range(accesslog.PENDING_MAX - 1):
        log.later(entry)
    assert buf.getvalue() == ""
    log.later(entry)
    assert len(logged(buf)) == accesslog.PENDING_MAX and set(logged(buf)) == {log.format(rec)}


async def test_a_batch_is_written_on_the_flush_interval(monkeypatch: Any) -> None:
    monkeypatch.setattr(accesslog, "FLUSH_EVERY", 0.05)
    buf = io.StringIO()
    log = AccessLog({"Enabled": True, "Type": "file", "Path": "x"}, open_file=lambda _: buf)
    rec, entry = cases()[0]
    t0 = time.monotonic()
    log.later(entry)
    assert buf.getvalue() == "" and log._pending, "kept as fields, nothing formatted before the flush"
    await until(buf.getvalue, timeout=5, message="the batch written on the flush interval", interval=0.01)
    assert logged(buf) == [log.format(rec)] and time.monotonic() - t0 >= 0.05
    log.close()


def test_an_unwritable_destination_keeps_nothing() -> None:
    def refuse(_: str) -> io.StringIO:
        raise PermissionError(13, "Permission denied")

    log = AccessLog({"Enabled": True, "Type": "file", "Path": "/nope"}, open_file=refuse)
    assert not log.open()
    log.later(cases()[0][1])
    assert not log._pending


class _Transport:
    """Keeps what is written; says its peer until closed (as a closed TLS transport may no longer)."""

    def __init__(self) -> None:
        self.closed = False
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40001) if name == "peername" and not self.closed else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed


async def test_a_line_kept_until_the_flush_says_what_its_request_saw() -> None:
    """An inbound request's line is made at flush time: a connection closed and a config changed meanwhile do
    not change it (the peer and the config are taken in the request's path), and nothing else is held."""
    import dataclasses
    import json
    import random

    from proconsul.connect.proxy import http
    from proconsul.connect.proxy.config import ProxyConfig
    from proconsul.connect.proxy.runtime import Runtime

    cfg = ProxyConfig(proxy_id="api-sidecar-proxy", proxy_name="api-sidecar-proxy", service="api", service_id="api",
                      bind_address="127.0.0.1", bind_port=1, local_address="127.0.0.1", local_port=8080,
                      upstreams=(), protocol="http")
    rt = Runtime(cfg, datacenter="dc1", rng=random.Random(7))
    buf = io.StringIO()
    rt.access_log = AccessLog({"Enabled": True, "Type": "file", "Path": "x"}, open_file=lambda _: buf)
    rt.access_log._timer = _Armed()  # type: ignore[assignment]
    front = http.InboundFront(rt)
    front.transport = _Transport()
    front.uri = front.source = "spiffe://td/ns/default/dc/dc1/svc/web"
    front.link = http._Counts(rt.metrics.inbound_link(front.source), inbound=True)
    app = http.Back(None)
    app.connection_made(_Transport())
    front.app = app
    front.data_received(b"GET /a?b=1 HTTP/1.1\r\nHost: api\r\nUser-Agent: t/1\r\n\r\n")
    app.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    assert b"ok\n" in b"".join(front.transport.data) and rt.access_log.lines == 1 and buf.getvalue() == ""
    front.transport.close()  # the caller went away and the config changed before the batch was written
    rt.config = dataclasses.replace(cfg, local_port=9090)
    rt.access_log.flush()
    line = json.loads(buf.getvalue())
    assert line["downstream_remote_address"] == "127.0.0.1:40001" and line["upstream_host"] == "127.0.0.1:8080"
    assert (line["method"], line["path"], line["response_code"], line["bytes_sent"], line["user_agent"]) == \
        ("GET", "/a?b=1", 200, 3, "t/1")
    assert line["downstream_peer_uri_san"] == front.uri and line["upstream_cluster"] == "local_app"
    assert not rt.access_log._pending, "nothing kept past the flush"
