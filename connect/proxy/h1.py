"""HTTP/1.1 on the wire for the proxy's HTTP mode: message readers over httptools (llhttp, a C parser),
head encoding, body framing, and the pool of idle kept-alive connections to upstream instances.

Why httptools and not h11: per request and response, parsing both and writing both costs h11 ~230 µs
of CPU and httptools ~8 µs (measured here); h11 made L7 mode a tenth of L4's speed. The readers are
sans-I/O: bytes in (`feed`), calls out to an owner (`MessageSink`); they never touch a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httptools

RETRY_BODY_MAX = 64 * 1024  # a request body up to this size is held, so the request can be retried
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                        b"transfer-encoding", b"content-length", b"expect"})
POOL_IDLE_MAX = 32  # idle connections kept per upstream instance
NO_BODY_STATUS = frozenset({204, 304})
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


class Pooled(Protocol):
    key: str

    def reusable(self) -> bool: ...

    def close(self) -> None: ...


class InstanceConnections:
    """Idle kept-alive connections per upstream instance (by key), at most POOL_IDLE_MAX each."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Any]] = {}

    def take(self, key: str) -> Any:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
        return None

    def give(self, conn: Pooled) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if conn.reusable() and len(idle) < POOL_IDLE_MAX:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class BadMessage(Exception):
    """The peer sent bytes that are not HTTP/1.x (or a message we cannot carry)."""


@dataclass(slots=True)
class Head:
    """A request or response head as parsed: names lower-cased, values as sent."""

    method: bytes  # request method, b"" for a response
    target: bytes  # request target, b"" for a response
    status: int  # response status, 0 for a request
    reason: bytes  # response reason phrase as sent
    version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    chunked: bool
    length: int  # Content-Length, -1 when absent
    upgrade: bool = False
    expect_continue: bool = False  # a request with `Expect: 100-continue`

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")


class MessageSink(Protocol):
    def on_head(self, head: Head) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...


class _Reader:
    """Feeds bytes to an llhttp parser and turns its callbacks into one head, body chunks and an end."""

    __slots__ = ("sink", "_parser", "_headers", "_target", "_reason")

    def __init__(self, sink: MessageSink) -> None:
        self.sink = sink
        self._headers: list[tuple[bytes, bytes]] = []
        self._target = b""
        self._reason = b""
        self._parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    # ------------------------------------------------------------------ llhttp callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._target = b""
        self._reason = b""

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.sink.on_body(body)

    def on_message_complete(self) -> None:
        self.sink.on_end()

    # ------------------------------------------------------------------ feeding
    def feed(self, data: bytes) -> bytes | None:
        """Parse `data`. None normally; after an upgrade (101, CONNECT) the bytes that follow the head,
        which are no longer HTTP. BadMessage on garbage."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
            return data[offset:]
        except httptools.HttpParserError as e:
            raise BadMessage(str(e) or type(e).__name__) from None
        return None

    def _head_fields(self) -> tuple[bytes, bool, bool, int, dict[bytes, bytes]]:
        """Version, keep-alive, chunked, Content-Length and the headers by name (the first of each name)."""
        parser = self._parser
        version = parser.get_http_version()
        by_name = dict(reversed(self._headers))  # in C, not a loop over the headers per message
        chunked = b"transfer-encoding" in by_name and any(
            k == b"transfer-encoding" and b"chunked" in v.lower() for k, v in self._headers)
        length = -1
        cl = by_name.get(b"content-length")
        if cl is not None:  # llhttp refuses differing duplicates
            try:
                length = int(cl)
            except ValueError:
                raise BadMessage("bad Content-Length") from None
        return _VERSIONS.get(version) or version.encode(), parser.should_keep_alive(), chunked, length, by_name


class RequestReader(_Reader):
    __slots__ = ()

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def on_headers_complete(self) -> None:
        version, keep_alive, chunked, length, by_name = self._head_fields()
        upgrade = self._parser.should_upgrade()
        self.sink.on_head(Head(self._parser.get_method(), self._target, 0, b"", version, self._headers, keep_alive,
                               chunked, length, upgrade, by_name.get(b"expect") == b"100-continue"))


class ResponseReader(_Reader):
    """Responses on one connection; `expect_no_body()` before a response to HEAD (llhttp cannot know)."""

    __slots__ = ("_head_request",)

    def __init__(self, sink: MessageSink) -> None:
        super().__init__(sink)
        self._head_request = False

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def expect_no_body(self) -> None:
        self._head_request = True

    def on_headers_complete(self) -> None:
        version, keep_alive, chunked, length, _ = self._head_fields()
        status = self._parser.get_status_code()
        head = Head(b"", b"", status, self._reason, version, self._headers, keep_alive, chunked, length,
                    status == 101)
        if self._head_request:
            # A response to HEAD ends with its head; a fresh parser reads the next response.
            self._head_request = False
            self.sink.on_head(head)
            self.sink.on_end()
            self._parser = self._new_parser()
            return
        self.sink.on_head(head)


def forward_headers(headers: list[tuple[bytes, bytes]], drop: bytes = b"") -> list[bytes]:
    """Header lines to pass on: hop-by-hop headers (and framing, which we write ourselves) left out."""
    return [k + b": " + v + b"\r\n" for k, v in headers if k not in HOP_BY_HOP and k != drop]


def framing(head: Head, http10_peer: bool = False) -> bytes:
    """The framing header line for a body we forward as we received it."""
    if head.chunked:
        return b"" if http10_peer else b"transfer-encoding: chunked\r\n"
    if head.length >= 0:
        return b"content-length: %d\r\n" % head.length
    return b""


def request_head(head: Head, extra: list[bytes], drop: bytes = b"", default_host: bytes = b"") -> bytes:
    """The head to send on (always HTTP/1.1: an HTTP/1.0 request without Host gets `default_host`)."""
    lines = forward_headers(head.headers, drop)
    if default_host and head.header(b"host") is None:
        lines.append(b"host: " + default_host + b"\r\n")
    if head.upgrade:
        lines += [b"connection: upgrade\r\n"] + [b"upgrade: " + v + b"\r\n" for k, v in head.headers
                                                  if k == b"upgrade"]
    return b"".join([b"%s %s HTTP/1.1\r\n" % (head.method, head.target), *lines, framing(head), *extra, b"\r\n"])


def response_head(head: Head, http10_peer: bool, close: bool) -> bytes:
    lines = forward_headers(head.headers)
    if head.upgrade:
        lines += [b"connection: upgrade\r\n"] + [b"upgrade: " + v + b"\r\n" for k, v in head.headers
                                                  if k == b"upgrade"]
    elif close:
        lines.append(b"connection: close\r\n")
    elif http10_peer:
        lines.append(b"connection: keep-alive\r\n")
    reason = head.reason or _REASONS.get(head.status, b"Unknown")
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (head.status, reason), *lines, framing(head, http10_peer), b"\r\n"])


def simple_response(status: int, text: str, close: bool = False) -> bytes:
    """A small plain-text answer made by the proxy itself (403, 502, 503, 504)."""
    body = (text + "\n").encode()
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
                     b"content-type: text/plain\r\ncontent-length: %d\r\nx-proconsul-proxy: 1\r\n" % len(body),
                     b"connection: close\r\n" if close else b"", b"\r\n", body])


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

_REASONS = {100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created", 202: b"Accepted",
            204: b"No Content", 206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found",
            303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
            400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict", 413: b"Payload Too Large",
            429: b"Too Many Requests", 500: b"Internal Server Error", 501: b"Not Implemented",
            502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}
