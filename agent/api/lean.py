"""The lean front: cached answers to the hottest GETs, given before aiohttp builds a request.

aiohttp spends about as much CPU on its request cycle (parser callbacks, a Request, URL dispatch, the
handler chain, a Response, header serialisation, a StreamWriter) as the kernel spends sending a 34 KB
health answer (py-spy, docs/benchmarks.md). For a read whose answer is already in the agent's response
cache (`read_cache.py`, filled by the full path and invalidated by the store's table indexes) none of
that is needed: this front looks at the raw bytes of a request that arrives alone in one read on an
idle keep-alive connection, and when the request is a plain `GET` the cache can answer, writes the
cached status line, headers and body in one call. Everything else — a miss, a blocking or pretty
read, `?near`, `?consistent`, a follower's non-stale read, gzip, another method, HTTP/1.0, a body,
`Connection: close`, percent-encoding, pipelined requests, a token this agent has not resolved yet —
goes to aiohttp exactly as before, on the same connection, and the answers are the same bytes.

ACLs stay on the path: with ACLs on, a hit needs the request's token to resolve from the resolver's
cache (one dict lookup; an unknown, expired or not-yet-resolved token goes the full way), the cache
key carries the token, and an entry whose route ran a guard before its handler is never answered
here (`Entry.lean`). With ACLs off it costs one `is None` test.

It is a subclass of aiohttp's connection handler (`RequestHandler`), so aiohttp keeps the connection:
the front only answers while aiohttp has nothing in flight on it and its parser holds no partial
request, and it moves aiohttp's keep-alive deadline as aiohttp would.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.web_protocol import RequestHandler

from proconsul.agent.api.compress import GZIP_MIN
from proconsul.agent.api.keys import AGENT, HTTP_POLICY, TELEMETRY
from proconsul.agent.api.read_cache import HEAD_TAIL, may_answer_cached

# Targets whose aiohttp `path_qs` (the cache key) is the target itself: no percent-encoding, no dot or
# empty segments (checked apart), nothing a URL parser would rewrite.
PLAIN_TARGET = re.compile(rb"/v1/[A-Za-z0-9_~./-]*(?:\?[A-Za-z0-9_~.=&,:-]*)?")
REQUEST_END = b"\r\n\r\n"
TOO_MANY = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
            b"Your IP is issuing too many concurrent connections, please rate limit your calls\n")
HANDED_ON = (b"content-length", b"transfer-encoding", b"upgrade", b"expect")  # these go to aiohttp


class LeanFront:
    """Answers cache hits from raw request bytes (`answer`), or says None: aiohttp takes the request."""

    def __init__(self, app: web.Application) -> None:
        self.agent = app[AGENT]
        self.http_counters = app[TELEMETRY]
        self.conn_limit = self.agent.config.http_max_conns_per_client  # 0: none
        self.open_conns: dict[str, int] = {}  # client address -> open connections (with a limit only)
        extra = "".join(f"{k}: {v}\r\n" for k, v in app[HTTP_POLICY].headers.items()).encode("latin-1")
        self.tail = HEAD_TAIL[:2] + extra + HEAD_TAIL[2:]  # http_config.response_headers, as on the full path
        self.counters = self.agent.telemetry.counters

    def answer(self, data: bytes) -> tuple[bytes, bytes] | None:
        """(head, body) to send for the one complete request in `data`, or None to hand it to aiohttp."""
        agent = self.agent
        cache = agent.read_cache
        if cache is None or data[:8] != b"GET /v1/":
            return None
        end = data.find(REQUEST_END)
        line_end = data.find(b"\r\n")
        if end != len(data) - 4 or data[line_end - 9:line_end] != b" HTTP/1.1":
            return None
        target = data[4:line_end - 9]
        if PLAIN_TARGET.fullmatch(target) is None or b"/." in target or b"//" in target:
            return None
        consul_token: bytes | None = None  # the first of each, as headers.get() reads them
        authorization: bytes | None = None
        gzip = False
        if line_end != end:
            for line in data[line_end + 2:end].split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if not colon or not name or name[-1:] in b" \t" or line[:1] in b" \t":
                    return None  # malformed: aiohttp answers 400
                name = name.lower()
                if name in HANDED_ON:
                    return None
                value = value.strip()
                if name == b"connection":
                    if value.lower() != b"keep-alive":
                        return None
                elif name == b"accept-encoding":
                    gzip = gzip or b"gzip" in value
                elif name == b"x-consul-token" and consul_token is None:
                    consul_token = value
                elif name == b"authorization" and authorization is None:
                    authorization = value
        key = target.decode("ascii")
        qs = key.partition("?")[2]
        if not may_answer_cached(agent, qs, lambda name: name in _param_names(qs)):
            return None
        if agent.acl is not None:  # authz.request_token's order: header, bearer, query; else the default token
            secret = consul_token or (authorization[7:].strip() if authorization and
                                      authorization[:7].lower() == b"bearer " else b"")
            if not secret and "token=" in qs:
                return None
            try:
                token = secret.decode("ascii") or agent.acl_tokens.get("default", "")
            except UnicodeDecodeError:
                return None
            if agent.acl.cached(token) is None:
                return None  # unknown, expired or not resolved yet: the full path resolves (or refuses) it
            key = f"{key}\n{token}"
        hit = cache.get(key)
        if hit is None or not hit.lean or (gzip and len(hit.body) >= GZIP_MIN):
            return None
        self.http_counters.incr("GET")
        self.counters["http.lean_answers"] += 1
        return hit.head + rfc822_formatted_time().encode() + self.tail, hit.body


def _param_names(qs: str) -> set[str]:
    return {part.partition("=")[0] for part in qs.split("&")}


class LeanRequestHandler(RequestHandler):
    """aiohttp's connection handler, with the lean front before its parser."""

    __slots__ = ("_front", "_at_boundary", "_client", "_refused")

    def __init__(self, manager: web.Server, front: LeanFront, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._front = front
        self._at_boundary = True  # aiohttp's parser holds no partial request
        self._client: str | None = None  # counted against limits.http_max_conns_per_client
        self._refused = False  # over that limit: answered 429 and closed; aiohttp never saw it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self._front.conn_limit
        if limit:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            open_ = self._front.open_conns
            if open_.get(client, 0) >= limit:  # Consul's connlimit answer, then the connection is closed
                transport.write(TOO_MANY)  # type: ignore[attr-defined]
                transport.close()
                self._refused = True
                self._front.counters["http.conn_limit_refused"] += 1
                return
            open_[client] = open_.get(client, 0) + 1
            self._client = client
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._client is not None:
            open_ = self._front.open_conns
            left = open_.get(self._client, 1) - 1
            if left > 0:
                open_[self._client] = left
            else:
                open_.pop(self._client, None)
            self._client = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if (self._at_boundary and self._waiter is not None and not self._messages and not self._request_in_progress
                and not self._upgraded and self._payload_parser is None and not self._paused
                and not self._force_close and not self._close and self.transport is not None):
            answer = self._front.answer(data)
            if answer is not None:
                self.transport.writelines(answer)
                self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
                return
        before = self._request_count
        super().data_received(data)
        # A read that completed a request and ends where a request ends leaves the parser empty; anything
        # else (a partial request, a body) keeps the front out until one does.
        self._at_boundary = self._request_count != before and data[-4:] == REQUEST_END


class LeanServer(web.Server):
    """aiohttp's connection factory, making lean handlers."""

    def __init__(self, base: web.Server, front: LeanFront) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
        self.front = front

    def __call__(self) -> RequestHandler:
        return LeanRequestHandler(self, self.front, loop=self._loop, **self._kwargs)


class LeanAppRunner(web.AppRunner):
    """An AppRunner whose listeners put the lean front before aiohttp."""

    def __init__(self, app: web.Application, front: LeanFront, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.front = front

    async def _make_server(self) -> web.Server:
        return LeanServer(await super()._make_server(), self.front)
