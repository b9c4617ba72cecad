"""Dialing an upstream instance's sidecar: mTLS with a resumed session when there is one, and a check
that the server is the destination service (not just any mesh member). Shared by L4 and HTTP mode."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from proconsul.connect.proxy.balancer import Instance
from proconsul.connect.proxy.config import Upstream
from proconsul.connect.proxy.metrics import Link
from proconsul.connect.proxy.tls import MeshClientContext, peer_uri, sni_name
from proconsul.connect.proxy.tlsproto import connect_tls

if TYPE_CHECKING:
    from proconsul.connect.proxy.runtime import Runtime

P = TypeVar("P", bound=asyncio.Protocol)


class DialRefused(Exception):
    """No leaf to dial with yet, or the sidecar presented an identity other than the destination's."""


def instance_key(inst: Instance) -> str:
    """Which sidecar (and for which service) a pooled connection or a TLS session belongs to: one terminating
    or mesh gateway instance stands for several services, and through a mesh gateway one address leads to
    many destinations. A connection made for one must not carry another's requests (nor a session resumed
    with one service's certificate be offered for another), so the service and the SNI are in the key
    (`api.default.dc2…` and `v2.api.default.dc2…` are two)."""
    return f"{inst.service}|{inst.id}@{inst.address}:{inst.port}" + (f"/{inst.sni}" if inst.sni else "")


async def dial(rt: Runtime, up: Upstream, inst: Instance, link: Link,
               make: Callable[[MeshClientContext, str], P]) -> P:
    """Connect to `inst` within the upstream's connect timeout; `make(ctx, key)` builds the protocol
    that gets the connection. OSError, TimeoutError, ssl.SSLError or DialRefused when it cannot."""
    ctx = rt.client_ctx
    if not isinstance(ctx, MeshClientContext):
        raise DialRefused("no leaf certificate yet")
    key = instance_key(inst)
    ctx.offer_session(key)
    app = make(ctx, key)
    async with asyncio.timeout(up.connect_timeout):
        tls = await connect_tls(ctx, app, inst.address, inst.port, handshake_timeout=up.connect_timeout,
                                scratch=rt.tls_scratch,
                                server_hostname=inst.sni or sni_name(inst.service, inst.datacenter or rt.datacenter,
                                                                     rt.trust_domain))
    uri = peer_uri(tls.sslobj) or ""
    if not rt.is_identity_of(uri, inst.service):
        tls.abort()
        raise DialRefused(f"the peer presented {uri or 'no SPIFFE ID'}, not {inst.service!r}")
    if tls.sslobj.session_reused:
        link.resumed += 1
    return app
