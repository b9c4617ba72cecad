"""The Raft TCP transport on real 127.0.0.1 sockets: delivery, reconnect, partitions, bad frames, mTLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import random
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from proconsul.consensus.messages import Entry, Message, MsgType
from proconsul.consensus.transport import Transport, encode_frame, encode_hello


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


class Pair:
    def __init__(self, **kw: object) -> None:
        self.got: dict[str, list[Message]] = {"a": [], "b": []}
        self.addrs: dict[str, str] = {}
        self.t = {sid: Transport(sid, "127.0.0.1:0", self.got[sid].append, self.addrs.get,
                                 rng=random.Random(1), backoff_base=0.01, backoff_max=0.05, **kw)  # type: ignore[arg-type]
                  for sid in ("a", "b")}

    async def start(self) -> Pair:
        for sid, t in self.t.items():
            await t.start()
            self.addrs[sid] = t.address
        return self

    async def stop(self) -> None:
        for t in self.t.values():
            await t.stop()


def msg(frm: str, to: str, i: int = 1, data: bytes = b"x") -> Message:
    return Message(MsgType.APP, to, frm, 1, index=i, entries=(Entry(1, i, data=data),))


async def test_messages_flow_both_ways_in_order() -> None:
    p = await Pair().start()
    try:
        for i in range(1, 201):
            p.t["a"].send(msg("a", "b", i))
        p.t["b"].send(msg("b", "a", 7))
        await wait_for(lambda: len(p.got["b"]) == 200 and len(p.got["a"]) == 1)
        assert [m.index for m in p.got["b"]] == list(range(1, 201))
        assert p.got["a"][0] == msg("b", "a", 7)
    finally:
        await p.stop()


async def test_reconnects_after_the_peer_restarts() -> None:
    p = await Pair().start()
    try:
        p.t["a"].send(msg("a", "b", 1))
        await wait_for(lambda: len(p.got["b"]) == 1)
        old = p.t["b"]
        await old.stop()
        host, port = "127.0.0.1", old.port
        fresh = Transport("b", f"{host}:{port}", p.got["b"].append, p.addrs.get, rng=random.Random(2))
        await fresh.start()
        p.t["b"] = fresh

        def resend_until_delivered() -> bool:
            if len(p.got["b"]) < 2:
                p.t["a"].send(msg("a", "b", 2))
                return False
            return True

        await wait_for(resend_until_delivered)
        assert p.t["a"].stats["dials"] >= 2
    finally:
        await p.stop()


async def test_block_drops_traffic_both_ways_and_unblock_heals() -> None:
    p = await Pair().start()
    try:
        p.t["a"].block("b")
        p.t["a"].send(msg("a", "b", 1))
        p.t["b"].send(msg("b", "a", 1))
        await wait_for(lambda: p.t["a"].stats["frames_in"] == 1)
        assert p.got["a"] == [] and p.got["b"] == []
        p.t["a"].unblock("b")
        p.t["a"].send(msg("a", "b", 2))
        await wait_for(lambda: len(p.got["b"]) == 1)
        assert p.got["b"][0].index == 2
    finally:
        await p.stop()


async def test_unknown_or_unreachable_peer_does_not_crash() -> None:
    p = await Pair().start()
    try:
        p.t["a"].send(msg("a", "nobody"))
        p.addrs["c"] = "127.0.0.1:1"  # nothing listens there
        for _ in range(5):
            p.t["a"].send(msg("a", "c"))
        p.t["a"].send(msg("a", "b"))
        await wait_for(lambda: len(p.got["b"]) == 1)
    finally:
        await p.stop()


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()  # a truncated frame: the peer hangs up mid-frame
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return rest


async def test_bad_frames_close_only_their_connection() -> None:
    p = await Pair(max_frame=1024).start()
    b = p.t["b"]
    try:
        # oversized, empty, garbage payload, truncated frame then EOF
        assert await _raw(b.port, struct.pack(">I", 10_000) + b"x" * 10) == b""
        assert await _raw(b.port, struct.pack(">I", 0)) == b""
        assert await _raw(b.port, struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1") == b""
        assert await _raw(b.port, encode_hello("a", "x:1") + encode_frame(msg("a", "b"))[:-3]) == b""
        assert await _raw(b.port, encode_frame(msg("a", "b"))) == b""  # no hello first
        assert await _raw(b.port, encode_hello("a", "x:1") + struct.pack(">I", 3) + b"abc") == b""
        assert b.stats["bad_frames"] == 6
        # a valid message after garbage on the same connection is never read; a new one works
        p.t["a"].send(msg("a", "b", 9))
        await wait_for(lambda: len(p.got["b"]) == 1)
    finally:
        await p.stop()


async def test_random_bytes_fuzz_never_kills_the_listener() -> None:
    p = await Pair(max_frame=4096).start()
    b = p.t["b"]
    rng = random.Random(99)
    try:
        for i in range(60):
            n = rng.randrange(1, 300)
            junk = bytes(rng.randrange(256) for _ in range(n))
            if i % 3 == 0:  # a plausible length prefix followed by junk
                junk = struct.pack(">I", rng.randrange(1, 200)) + junk
            elif i % 3 == 1:  # a valid hello, then junk
                junk = encode_hello("a", "127.0.0.1:9") + junk
            await _raw(b.port, junk)
        p.t["a"].send(msg("a", "b", 1))
        await wait_for(lambda: len(p.got["b"]) == 1)
        assert all(isinstance(m, Message) for m in p.got["b"])
    finally:
        await p.stop()


async def test_misrouted_message_is_ignored() -> None:
    p = await Pair().start()
    try:
        p.t["a"].send(Message(MsgType.HEARTBEAT, "b", "a", 1))
        await wait_for(lambda: len(p.got["b"]) == 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.t["b"].port)
        writer.write(encode_hello("a", "127.0.0.1:1") + encode_frame(Message(MsgType.HEARTBEAT, "zzz", "a", 1)))
        await writer.drain()
        await wait_for(lambda: p.t["b"].stats["frames_in"] == 2)
        writer.close()
        assert len(p.got["b"]) == 1
    finally:
        await p.stop()


def _make_tls(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> object:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(cn: str, ca_key: object, ca_name: object, is_ca: bool) -> tuple[object, object]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_name or name(cn))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if not is_ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return key, b.sign(ca_key or key, hashes.SHA256())

    ca_key, ca = issue("raft-ca", None, None, True)
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))

    def write(cn: str) -> tuple[Path, Path]:
        key, cert = issue(cn, ca_key, ca.subject, False)
        kp, cp = tmp / f"{cn}.key", tmp / f"{cn}.pem"
        kp.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cp.write_bytes(cert.public_bytes(pem))
        return cp, kp

    server_cert = write("server")
    client_cert = write("client")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp / "ca.pem"))
    server.load_cert_chain(*map(str, server_cert))
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp / "ca.pem"))
    client.load_cert_chain(*map(str, client_cert))
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp / "ca.pem"))
    return server, client, anonymous


async def test_mutual_tls(tmp_path: Path) -> None:
    server, client, anonymous = _make_tls(tmp_path)
    p = await Pair(server_ssl=server, client_ssl=client).start()
    try:
        p.t["a"].send(msg("a", "b", 1))
        await wait_for(lambda: len(p.got["b"]) == 1)
        # A client without a certificate is refused by the handshake; the server keeps serving.
        got: list[Message] = []
        rogue = Transport("a", "127.0.0.1:0", got.append, p.addrs.get, client_ssl=anonymous,
                          rng=random.Random(3), backoff_base=0.01)
        rogue.send(msg("a", "b", 2))
        await wait_for(lambda: rogue.stats["dials"] >= 1)
        p.t["a"].send(msg("a", "b", 3))
        await wait_for(lambda: len(p.got["b"]) == 2)
        assert [m.index for m in p.got["b"]] == [1, 3]
        await rogue.stop()
    finally:
        await p.stop()
