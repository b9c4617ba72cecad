"""HTTP mode (`protocol = "http"`): the proxy parses HTTP/1.1 (h11, sans-I/O) and decides per request.

Inbound (public listener): every request is checked against L7 intentions (path, method, headers) and
answered 403 when denied; allowed requests go to the local application over a kept-alive connection
with a request timeout, and the application learns the caller's identity from
`X-Forwarded-Client-Cert` (Envoy's header).

Outbound (upstream listener): every request picks an instance (so keep-alive connections from the
application still spread over instances), reuses pooled mTLS connections, retries a failed connect
and — for idempotent requests with a small body — a 502/503/504 on another instance within the retry
budget, answers 503 at once when no instance is healthy and 504 when the upstream times out.
Each request counts in the golden metrics (rate, status class, latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h11

from proconsul.connect.proxy.balancer import Instance, NoHealthyInstance
from proconsul.connect.proxy.config import Upstream
from proconsul.connect.proxy.h1 import READ, InstanceConnections, Peer
from proconsul.connect.proxy.metrics import Link
from proconsul.connect.proxy.tls import peer_uri, sni_name

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

log = logging.getLogger("proconsul.proxy")
RETRY_BODY_MAX = 64 * 1024  # requests with a larger body stream through and are not retried
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})


class UpstreamFailure(Exception):
    """An upstream attempt failed before a response began (connect, TLS, identity, or a dropped connection)."""


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | None  # the whole body when small enough to retry; None when it streams
    started: float = field(default_factory=time.monotonic)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def decoded_headers(self) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}


def _forward_headers(headers: list[tuple[bytes, bytes]], drop_length: bool = False) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in headers:
        if k in HOP_BY_HOP or (drop_length and k in (b"content-length", b"transfer-encoding")):
            continue
        out.append((k, v))
    return out


def _simple(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> tuple[h11.Response, bytes]:
    body = (text + "\n").encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
               (b"x-proconsul-proxy", b"1")] + (extra or [])
    return h11.Response(status_code=status, headers=headers), body


async def _reply(peer: Peer, status: int, text: str) -> None:
    resp, body = _simple(status, text)
    await peer.send(resp, h11.Data(data=body), h11.EndOfMessage())


async def _read_request(peer: Peer) -> tuple[h11.Request, bytes | None, list[bytes]] | None:
    """The next request: (head, whole body if small, else None with the chunks read so far)."""
    event = await peer.next_event()
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}")
    chunks: list[bytes] = []
    size = 0
    while True:
        ev = await peer.next_event()
        if isinstance(ev, h11.Data):
            chunks.append(bytes(ev.data))
            size += len(ev.data)
            if size > RETRY_BODY_MAX:
                return event, None, chunks
        elif isinstance(ev, h11.EndOfMessage):
            return event, b"".join(chunks), []
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(ev).__name__} in a request body")


async def _body_rest(peer: Peer) -> AsyncIterator[bytes]:
    """The remaining body chunks of a request that was too large to buffer."""
    while True:
        ev = await peer.next_event()
        if isinstance(ev, h11.Data):
            yield bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            return


async def _send_request(upstream: Peer, req: Request, head_headers: list[tuple[bytes, bytes]],
                        first_chunks: list[bytes], client: Peer | None) -> None:
    upstream.queue(h11.Request(method=req.method, target=req.target, headers=head_headers))
    if req.body is not None:
        if req.body:
            upstream.queue(h11.Data(data=req.body))
    else:
        for chunk in first_chunks:
            upstream.queue(h11.Data(data=chunk))
        if client is not None:
            async for chunk in _body_rest(client):
                await upstream.send(h11.Data(data=chunk))
    await upstream.send(h11.EndOfMessage())


async def _relay_response(upstream: Peer, client: Peer, head: h11.Response, link: Link) -> None:
    """Send a response head and stream its body from upstream to client, flushing whenever the upstream
    has nothing more buffered (so a small response leaves in one write)."""
    client.queue(h11.Response(status_code=head.status_code, headers=_forward_headers(list(head.headers)),
                              reason=head.reason))
    conn = upstream.h11
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            await client.flush()
            conn.receive_data(await upstream.reader.read(READ))
            continue
        if isinstance(ev, h11.Data):
            link.bytes_in += len(ev.data)
            client.queue(h11.Data(data=ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            await client.send(h11.EndOfMessage())
            return
        else:
            raise UpstreamFailure(f"the upstream ended the response early ({type(ev).__name__})")


# ---------------------------------------------------------------------- inbound: public listener → app
class _InboundHandle:
    """What the runtime needs to close an inbound HTTP connection an intention no longer allows."""

    def __init__(self, uri: str, peer: Peer) -> None:
        self.uri = uri
        self.peer = peer

    def abort(self) -> None:
        self.peer.abort()


async def serve_inbound(rt: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    client = Peer(reader, writer, h11.SERVER)
    uri = peer_uri(writer.get_extra_info("ssl_object")) or ""
    policy = rt.policy
    if policy is None:
        rt.refused(uri or "unknown", "intentions are not loaded yet")
        client.abort()
        return
    decision = policy.connection(uri)
    if not decision.allowed:
        rt.refused(decision.source, decision.reason)
        client.abort()
        return
    link = rt.metrics.inbound_link(decision.source)
    link.connections += 1
    link.active += 1
    handle = _InboundHandle(uri, client)
    rt.inbound_opened(handle)
    app: Peer | None = None
    xfcc = f"By={rt.service_uri};URI={uri}".encode()
    try:
        while True:
            got = await _read_request(client)
            if got is None:
                return
            head, body, first = got
            req = Request(bytes(head.method), bytes(head.target), list(head.headers), body)
            link.requests += 1
            current = rt.policy or policy
            if current.needs_requests(uri) or not current.connection(uri).allowed:
                d = current.request(uri, req.method.decode(), req.target.decode("latin-1").split("?", 1)[0],
                                    req.decoded_headers())
                if not d.allowed:
                    rt.refused(d.source, f"{req.method.decode()} {req.target.decode('latin-1')}: {d.reason}")
                    link.response(403)
                    if body is None:
                        async for _ in _body_rest(client):
                            pass
                    await _reply(client, 403, "RBAC: access denied")
                    _next_cycle(client)
                    continue
            headers = [(k, v) for k, v in req.headers if k != b"x-forwarded-client-cert"]
            headers.append((b"x-forwarded-client-cert", xfcc))
            try:
                async with asyncio.timeout(rt.config.local_request_timeout):
                    if app is None or not app.reusable():
                        if app is not None:
                            app.close()
                        app = await _dial_app(rt)
                    else:
                        app.h11.start_next_cycle()
                    await _send_request(app, req, headers, first, client if body is None else None)
                    resp = await app.next_event()
                    if not isinstance(resp, h11.Response):
                        raise UpstreamFailure(f"the application answered {type(resp).__name__}")
                    link.response(resp.status_code)
                    await _relay_response(app, client, resp, link)
            except (OSError, TimeoutError, UpstreamFailure, h11.ProtocolError) as e:
                if app is not None:
                    app.close()
                    app = None
                status, text = (504, "upstream request timeout") if isinstance(e, TimeoutError) else \
                    (502, "upstream connect error or disconnect/reset before headers")
                link.failed += 1
                link.response(status)
                log.warning("inbound %s %s from %s: %s", req.method.decode(), req.target.decode("latin-1"),
                            decision.source, e or "timed out")
                if client.h11.our_state is not h11.SEND_RESPONSE:
                    return  # part of a response went out: the connection cannot carry an error now
                await _reply(client, status, text)
            link.latency.observe(time.monotonic() - req.started)
            if not _next_cycle(client):
                return
    except (h11.ProtocolError, ConnectionError, OSError) as e:
        log.debug("inbound connection from %s ended: %s", decision.source, e)
        with contextlib.suppress(Exception):
            if client.h11.our_state is h11.SEND_RESPONSE:
                await _reply(client, 400, "bad request")
    finally:
        link.active -= 1
        rt.inbound_closed(handle)
        if app is not None:
            app.close()
        client.close()


def _next_cycle(peer: Peer) -> bool:
    """Get ready for the next request on a kept-alive connection; False when it must close."""
    if peer.reusable():
        peer.h11.start_next_cycle()
        return True
    return False


async def _dial_app(rt: Runtime) -> Peer:
    cfg = rt.config
    async with asyncio.timeout(cfg.local_connect_timeout):
        reader, writer = await asyncio.open_connection(cfg.local_address, cfg.local_port)
    return Peer(reader, writer, h11.CLIENT)


# ---------------------------------------------------------------------- outbound: app → upstream instances
async def _dial_instance(rt: Runtime, up: Upstream, inst: Instance) -> Peer:
    ctx = rt.client_ctx
    if ctx is None:
        raise UpstreamFailure("no leaf certificate yet")
    try:
        async with asyncio.timeout(up.connect_timeout):
            reader, writer = await asyncio.open_connection(
                inst.address, inst.port, ssl=ctx, ssl_handshake_timeout=up.connect_timeout,
                server_hostname=sni_name(inst.service, inst.datacenter or rt.datacenter, rt.trust_domain))
    except (OSError, TimeoutError, ssl.SSLError) as e:
        raise UpstreamFailure(f"{inst.address}:{inst.port}: {e or 'connect timed out'}") from None
    uri = peer_uri(writer.get_extra_info("ssl_object")) or ""
    if not rt.is_identity_of(uri, inst.service):
        writer.transport.abort()
        raise UpstreamFailure(f"the peer presented {uri or 'no SPIFFE ID'}, not {inst.service!r}")
    return Peer(reader, writer, h11.CLIENT)


async def serve_upstream(rt: Runtime, up: Upstream, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    client = Peer(reader, writer, h11.SERVER)
    link = rt.metrics.upstream_link(up.destination_name)
    link.active += 1
    pool = rt.pools.get(up.key)
    conns = rt.http_connections
    try:
        while True:
            got = await _read_request(client)
            if got is None:
                return
            head, body, first = got
            req = Request(bytes(head.method), bytes(head.target), list(head.headers), body)
            link.requests += 1
            rt.budget.request(req.started)
            await _one_upstream_request(rt, up, client, req, first, link, pool, conns)
            link.latency.observe(time.monotonic() - req.started)
            if not _next_cycle(client):
                return
    except (h11.ProtocolError, ConnectionError, OSError) as e:
        log.debug("upstream %s: application connection ended: %s", up.destination_name, e)
    finally:
        link.active -= 1
        client.close()


async def _one_upstream_request(rt: Runtime, up: Upstream, client: Peer, req: Request, first: list[bytes],
                                link: Link, pool: Any, conns: InstanceConnections) -> None:
    retryable = req.body is not None and req.method in IDEMPOTENT
    tried: set[str] = set()
    attempts = 1 + rt.config.retry.num_retries
    last = "no attempt made"
    for attempt in range(attempts):
        if attempt:
            if not retryable or not rt.budget.try_retry(time.monotonic()):
                break
            link.retries += 1
        try:
            if pool is None:
                raise NoHealthyInstance(f"upstream {up.destination_name!r} is not known yet")
            inst = pool.pick(time.monotonic(), rt.rng, tried)
        except NoHealthyInstance as e:
            last = str(e)
            break
        tried.add(inst.id)
        pool.started(inst)
        peer: Peer | None = None
        try:
            async with asyncio.timeout(up.request_timeout):
                peer = conns.take(inst) or await _dial_instance(rt, up, inst)
                await _send_request(peer, req, _forward_headers(req.headers), first,
                                    client if req.body is None else None)
                resp = await peer.next_event()
                if not isinstance(resp, h11.Response):
                    raise UpstreamFailure(f"no response from {inst.id} ({type(resp).__name__})")
                if resp.status_code in RETRY_STATUSES and retryable and attempt + 1 < attempts \
                        and rt.config.retry.retry_on_5xx:
                    await _drain(peer)
                    conns.give(inst, peer)
                    peer = None
                    if pool.failed(inst, time.monotonic()):
                        log.warning("upstream %s: ejected %s after %d failures in a row", up.destination_name,
                                    inst.id, rt.config.outlier.max_failures)
                    last = f"{inst.id} answered {resp.status_code}"
                    continue
                link.connections += 1
                link.response(resp.status_code)
                if resp.status_code >= 500:
                    pool.failed(inst, time.monotonic())
                else:
                    pool.succeeded(inst)
                await _relay_response(peer, client, resp, link)
                conns.give(inst, peer)
                peer = None
                return
        except TimeoutError:
            link.failed += 1
            link.response(504)
            log.warning("upstream %s: request %s %s timed out after %.1fs", up.destination_name,
                        req.method.decode(), req.target.decode("latin-1"), up.request_timeout)
            if client.h11.our_state is h11.SEND_RESPONSE:
                await _reply(client, 504, "upstream request timeout")
            return
        except (UpstreamFailure, OSError, h11.ProtocolError) as e:
            last = str(e) or type(e).__name__
            if pool.failed(inst, time.monotonic()):
                log.warning("upstream %s: ejected %s after %d failures in a row", up.destination_name, inst.id,
                            rt.config.outlier.max_failures)
            if client.h11.our_state is not h11.SEND_RESPONSE:
                raise ConnectionError(f"upstream failed mid-response: {last}") from None
            continue
        finally:
            pool.finished(inst)
            if peer is not None:
                peer.close()
    link.failed += 1
    status, text = (503, "no healthy upstream") if "no healthy" in last or "not known" in last else \
        (502, "upstream connect error or disconnect/reset before headers")
    link.response(status)
    log.warning("upstream %s: %s %s failed: %s", up.destination_name, req.method.decode(),
                req.target.decode("latin-1"), last)
    await _reply(client, status, text)


async def _drain(peer: Peer) -> None:
    while True:
        ev = await peer.next_event()
        if isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
            return
