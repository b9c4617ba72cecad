"""The proxy's TLS layer: session resumption per upstream instance, and what a resumed session may not do.

Real TLS over real sockets on 127.0.0.1 (uvloop), with leaves from our CA code."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import uvloop

from proconsul.connect import ca
from proconsul.connect.proxy.tls import (
    Credentials,
    MeshClientContext,
    PeerCert,
    ServerContexts,
    client_context,
    peer_cert,
    resumption_refusal,
)
from proconsul.connect.spiffe import ServiceID

TD = "11111111-2222-3333-4444-555555555555.mesh"


def _creds(root: ca.Root, service: str, serial: int) -> Credentials:
    key = ca.generate_key()
    csr = ca.make_csr(ServiceID(TD, "default", "dc1", service).uri, key, service)
    leaf = ca.sign_leaf(csr, root, TD, dt.datetime.now(dt.UTC), serial)
    return Credentials(leaf["CertPEM"], ca.key_pem(key), root.row["RootCert"], TD)


class _Echo(asyncio.Protocol):
    seen: list[object] = []  # the server side's TLS objects, in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _Echo.seen.append(transport.get_extra_info("ssl_object"))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class _Client(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        transport.write(b"ping")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)


def test_upstream_side_resumes_per_instance_and_forgets_on_rebuild() -> None:
    root = ca.generate_root(TD, dt.datetime.now(dt.UTC), 1)
    server = ServerContexts(_creds(root, "db", 2))
    client_creds = _creds(root, "web", 3)

    async def main() -> list[tuple[str, bool]]:
        loop = asyncio.get_running_loop()
        _Echo.seen = []
        srv = await loop.create_server(_Echo, "127.0.0.1", 0, ssl=server.listening)
        port = srv.sockets[0].getsockname()[1]
        out = []

        async def dial(ctx: MeshClientContext, key: str) -> bool:
            ctx.offer_session(key)
            transport, proto = await loop.create_connection(_Client, "127.0.0.1", port, ssl=ctx, server_hostname="db")
            assert await asyncio.wait_for(proto.answer, 5) == b"ping"
            obj = transport.get_extra_info("ssl_object")
            if ctx.wants_session(key, obj, loop.time()):
                ctx.keep_session(key, obj, loop.time())
            transport.close()
            return obj.session_reused

        ctx = client_context(client_creds)
        for key in ("a", "a", "a", "b", "b", "a"):
            out.append((key, await dial(ctx, key)))
        ctx = client_context(client_creds)  # a new leaf or root: a new context, no sessions
        out.append(("a-after-rebuild", await dial(ctx, "a")))
        # The server saw the client's identity on resumed connections too.
        uris = {peer_cert(obj).uri for obj in _Echo.seen}
        srv.close()
        await srv.wait_closed()
        assert uris == {ServiceID(TD, "default", "dc1", "web").uri}
        return out

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got = runner.run(main())
    assert got == [("a", False), ("a", True), ("a", True), ("b", False), ("b", True), ("a", True),
                   ("a-after-rebuild", False)]


@pytest.mark.parametrize(("cert", "made", "reduced", "why"), [
    (PeerCert("spiffe://td/ns/default/dc/dc1/svc/web", 2000.0), 900.0, 0.0, ""),
    (PeerCert("spiffe://td/ns/default/dc/dc1/svc/web", 2000.0), 900.0, 800.0, ""),  # made after the removal
    (PeerCert("spiffe://td/ns/default/dc/dc1/svc/web", 2000.0), 700.0, 800.0, "root was removed"),
    (PeerCert("spiffe://td/ns/default/dc/dc1/svc/web", 999.0), 900.0, 0.0, "expired"),
    (PeerCert("", 2000.0), 900.0, 0.0, "without a peer identity"),
    (None, 900.0, 0.0, "without a peer identity"),
])
def test_a_resumed_session_is_refused_when_its_certificate_could_not_pass_now(
        cert: PeerCert | None, made: float, reduced: float, why: str) -> None:
    got = resumption_refusal(cert, made, 1000.0, reduced)
    assert (why in got and got) if why else got == ""
