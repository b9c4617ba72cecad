"""Requests for another datacenter (`?dc=`): sent to a server there, answered as that server answers.

A handler that takes `?dc=` calls `check_datacenter` first; naming another datacenter raises
`ForwardToDatacenter`, and the error boundary sends the whole request — method, path, query, token
and body — as one `http.serve` RPC to a server of that datacenter (through a server of ours when
this is a client agent; the router picks the server and fails over). The remote server runs it
through its own HTTP API and the reply — status, X-Consul-* headers, body — comes back unchanged,
so every `?dc=` endpoint, blocking queries included, behaves there exactly as it does locally.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from proconsul.agent.api.keys import AGENT
from proconsul.agent.cluster.errors import ClusterError
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.catalog.translate import HEADER as TRANSLATE_HEADER
from proconsul.catalog.translate import shape_of, translate_body

log = logging.getLogger("proconsul.forward")

FORWARD_SLACK = 30.0  # a forwarded call waits the query's own wait plus this much
PLAIN_TIMEOUT = 60.0  # a forwarded call that does not block
REQUEST_HEADERS = ("X-Consul-Token", "Authorization", "Content-Type", "X-Consul-Namespace")


class ForwardToDatacenter(Exception):  # noqa: N818 — control flow, not an error the user sees
    """The request names another datacenter: the error boundary forwards it there."""

    def __init__(self, datacenter: str) -> None:
        super().__init__(datacenter)
        self.datacenter = datacenter


def _timeout(request: web.Request) -> float:
    q = request.query
    if "index" not in q:
        return PLAIN_TIMEOUT
    cfg = request.app[AGENT].config
    try:
        wait = parse_duration(q["wait"]) if "wait" in q else cfg.default_query_time
    except DurationError:
        wait = cfg.default_query_time  # the far end answers the 400
    return min(max(wait, 0.0), cfg.max_query_time) * 17 / 16 + FORWARD_SLACK


async def _request_args(request: web.Request, query: str) -> dict[str, Any]:
    body = await request.read() if request.can_read_body else b""
    headers = {h: request.headers[h] for h in REQUEST_HEADERS if h in request.headers}
    return {"method": request.method, "path": request.rel_url.raw_path, "query": query, "headers": headers,
            "body": body}


async def forward_request(request: web.Request, datacenter: str) -> web.Response:
    """Send this request to `datacenter` and answer with what its server answered."""
    agent = request.app[AGENT]
    # The far end must serve it itself: `dc` names it (a write sent on to the primary drops the secondary's).
    query = "&".join([p for p in request.rel_url.raw_query_string.split("&") if p and not p.startswith("dc=")]
                     + [f"dc={datacenter}"])
    args = await _request_args(request, query)
    timeout = _timeout(request)
    status, out_headers, out_body = await agent.cluster.forward_dc(
        datacenter, "http.serve", args, timeout, idempotent=request.method in ("GET", "HEAD"))
    if agent.config.translate_wan_addrs:
        shape = shape_of(request.path)
        if shape and status == 200 and request.method == "GET" and datacenter != agent.config.datacenter.lower():
            out_body = translated(out_body, shape, "pretty" in request.query)
    return web.Response(status=status, body=out_body, headers=out_headers)


def translated(body: bytes, shape: str, pretty: bool) -> bytes:
    """A forwarded answer about another datacenter with its nodes and services at their WAN addresses
    (`translate_wan_addrs`, the endpoints Consul translates)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    return orjson.dumps(translate_body(shape, data), option=orjson.OPT_INDENT_2 if pretty else 0)


def on_leader(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ACL endpoints (with ACLs on) are served by the leader, as Consul's ACL RPCs are: a client agent or a
    follower sends the whole request there (`http.serve` with `leader`), so bootstrap, login and every
    ACL write run where the catalog is written, checked by that server's HTTP layer against its replica."""

    async def handle(request: web.Request) -> web.StreamResponse:
        agent = request.app[AGENT]
        primary = await _primary_owned(request)
        if primary:
            response = await forward_request(request, primary)
            if agent.acl is not None:
                agent.acl.invalidate()
            return response
        if agent.is_leader():
            return await handler(request)
        args = dict(await _request_args(request, request.rel_url.raw_query_string), leader=True)
        if agent.loopback is not None:
            status, out_headers, out_body = await agent.loopback.serve(args)
        else:
            status, out_headers, out_body = await agent.cluster.call_any_server(
                "http.serve", args, PLAIN_TIMEOUT, request.method in ("GET", "HEAD"))
        if request.method not in ("GET", "HEAD") and agent.acl is not None:
            agent.acl.invalidate()  # this agent's cached tokens may have changed there
        return web.Response(status=status, body=out_body, headers=out_headers)

    handle.__name__ = getattr(handler, "__name__", "handler")
    handle.__doc__ = handler.__doc__
    return handle


_GLOBAL_OBJECTS = ("/v1/acl/policy", "/v1/acl/role", "/v1/acl/token")


async def _primary_owned(request: web.Request) -> str:
    """The primary datacenter, when this is a write, in a secondary that replicates ACLs, of an object the
    primary owns: policies, roles and global tokens (Consul forwards those; local tokens, auth methods,
    binding rules and logins stay in the datacenter). "" otherwise."""
    agent = request.app[AGENT]
    cfg = agent.config
    path = request.path
    if (request.method in ("GET", "HEAD") or not cfg.primary_datacenter or cfg.primary_datacenter == cfg.datacenter
            or not cfg.acl.tokens.get("replication") or not path.startswith(_GLOBAL_OBJECTS)
            or request.query.get("dc", cfg.datacenter) != cfg.datacenter):
        return ""
    if path.startswith("/v1/acl/token"):
        accessor = request.match_info.get("id", "")
        if accessor:  # an existing token keeps its locality (update, clone, delete)
            _, row = await agent.backend.query("table.get", {"table": "acl_tokens", "key": accessor})
            if row is not None and row.get("Local"):
                return ""
        else:
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                return ""  # the handler answers the 400
            if isinstance(body, dict) and body.get("Local"):
                return ""
    return cfg.primary_datacenter


class LoopbackClient:
    """The destination side: runs a forwarded request through this agent's own API listener (HTTP, else HTTPS)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._session: aiohttp.ClientSession | None = None

    def _base(self) -> URL:
        """This server's own API: HTTP, else HTTPS (`ports.http = -1`)."""
        cfg, agent = self.agent.config, self.agent
        if agent.http_port is None and agent.https_port is None:
            raise ClusterError("this server has no HTTP or HTTPS listener to answer a forwarded request")
        https = agent.http_port is None
        host = cfg.https_bind if https else cfg.http_bind
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return URL.build(scheme="https" if https else "http", host=host,
                         port=agent.https_port if https else agent.http_port)

    def _tls(self) -> ssl.SSLContext | None:
        """For its own HTTPS listener: no need to check its certificate (it is itself), but present it when
        the listener verifies clients (tls.https.verify_incoming)."""
        if self.agent.http_port is not None:
            return None
        t = self.agent.config.https_tls
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if t.verify_incoming and t.cert_file:
            ctx.load_cert_chain(t.cert_file, t.key_file)
        return ctx

    async def serve(self, args: dict[str, Any]) -> list[Any]:
        method, path, query = args.get("method"), args.get("path"), args.get("query", "")
        headers, body = args.get("headers") or {}, args.get("body") or b""
        if (type(method) is not str or type(path) is not str or not path.startswith("/v1/")
                or type(query) is not str or type(headers) is not dict or type(body) is not bytes):
            raise ClusterError("http.serve needs a method, a /v1/ path, a query, headers and a body")
        if path.startswith("/v1/agent/"):  # never forwarded: an agent's own endpoints are not the datacenter's
            raise ClusterError(f"http.serve does not serve {path}: agent endpoints answer only locally")
        server = self.agent.server
        if args.get("leader") and server is not None and not self.agent.is_leader():
            here = dict(args, leader=False)
            return await server.on_leader(lambda: self._serve_here(here), "http.serve", args, timeout=PLAIN_TIMEOUT)
        return await self._serve_here(args)

    async def _serve_here(self, args: dict[str, Any]) -> list[Any]:
        method, path, query = args["method"], args["path"], args.get("query", "")
        headers, body = args.get("headers") or {}, args.get("body") or b""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                                  skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                                  connector=aiohttp.TCPConnector(ssl=self._tls() or False))
        url = self._base().with_path(path, encoded=True).with_query(query) if query else \
            self._base().with_path(path, encoded=True)
        hdrs = {k: v for k, v in headers.items() if type(k) is str and type(v) is str and k in REQUEST_HEADERS}
        async with self._session.request(method, url, data=body or None, headers=hdrs) as resp:
            data = await resp.read()
            # X-Consul-Translate-Addresses is the asking agent's to set (http_policy.py), not this one's.
            keep = {k: v for k, v in resp.headers.items()
                    if (k.startswith("X-Consul-") and k != TRANSLATE_HEADER) or k == "Content-Type"}
            return [resp.status, keep, data]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
