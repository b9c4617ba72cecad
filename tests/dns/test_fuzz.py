"""100,000+ random and mutated packets at the DNS server; afterwards it still answers correctly.

Most packets go straight into the UDP listener's datagram handler (fast); a portion goes through
real sockets, in-process and against a real dev agent.
"""

from __future__ import annotations

import asyncio
import random
import socket
import string
import struct

from dnslib import EDNS0, RCODE, DNSRecord, EDNSOption
from hypothesis import given, settings
from hypothesis import strategies as st
from support import AgentProcess, wait_for

from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore
from proconsul.dns.answer import Answerer, DNSSettings
from proconsul.dns.server import DNSHandler, UDPServer, serve
from proconsul.dns.service import StoreView

RCODES = {RCODE.NOERROR, RCODE.FORMERR, RCODE.NXDOMAIN, RCODE.NOTIMP, RCODE.REFUSED, RCODE.SERVFAIL}


def make_handler() -> DNSHandler:
    store = StateStore("dc1")
    store.apply(1, c.Register(node={"Node": "a", "Address": "10.0.0.1", "Meta": {"rack": "r1"}},
                              service={"ID": "web", "Service": "web", "Port": 80, "Tags": ["v1"]}))
    store.apply(2, c.Register(node={"Node": "b", "Address": "fd00::2"},
                              service={"ID": "web", "Service": "web", "Port": 81, "Address": "db.example.com"}))
    return DNSHandler(Answerer(DNSSettings(alt_domain="alt.")), StoreView(store), [], rng=random.Random(1))


def seeds() -> list[bytes]:
    out = []
    for name, qtype in [("web.service.mesh", "A"), ("web.service.mesh", "SRV"), ("v1.web.service.mesh", "ANY"),
                        ("a.node.mesh", "AAAA"), ("a.node.dc1.mesh", "TXT"), ("1.0.0.10.in-addr.arpa", "PTR"),
                        ("mesh", "SOA"), ("mesh", "NS"), ("_web._tcp.service.alt", "SRV"),
                        ("0a000001.addr.dc1.mesh", "A"), ("web.connect.mesh", "A"), ("example.com", "A")]:
        q = DNSRecord.question(name, qtype)
        out.append(bytes(q.pack()))
        q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(10, b"cookie!!")]))
        out.append(bytes(q.pack()))
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    out.append(header + b"\xc0\x0c" + struct.pack(">HH", 1, 1))  # compression pointer to itself
    out.append(header + bytes([64]) + b"a" * 64 + b"\x00" + struct.pack(">HH", 1, 1))  # label over 63
    out.append(header + (bytes([63]) + b"b" * 63) * 5 + b"\x00" + struct.pack(">HH", 1, 1))  # name over 255
    out.append(struct.pack(">HHHHHH", 8, 0x0100, 0, 0, 0, 0))  # no question
    out.append(struct.pack(">HHHHHH", 9, 0x0100, 40, 0, 0, 0) + b"\x00")  # claims 40 questions
    return out


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b[rng.randrange(len(b) + 1):0] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and len(b) > 12:
            b[2:4] = rng.randbytes(2)  # flags: opcode, QR, rcode bits
        else:
            b.extend(b[: rng.randint(0, len(b))])
    return bytes(b)


def packets(rng: random.Random, n: int) -> list[bytes]:
    base = seeds()
    return [rng.randbytes(rng.randint(0, 80)) if i % 3 == 0 else mutate(rng, rng.choice(base)) for i in range(n)]


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, addr: object) -> int:
        self.sent.append((data, addr))
        return len(data)


def check_reply(pkt: bytes, response: bytes) -> None:
    assert response[:2] == pkt[:2], "a reply always carries the question's ID"
    assert len(response) >= 12 and response[2] & 0x80, "a reply always has QR set"
    assert len(response) <= 4096


def test_listener_survives_100k_packets() -> None:
    rng = random.Random(1234)
    handler = make_handler()
    sock = FakeSocket()
    udp = UDPServer(handler, sock)  # type: ignore[arg-type]
    answered = dropped = 0
    for pkt in packets(rng, 100_000):
        sock.sent.clear()
        udp.datagram_received(pkt, ("127.0.0.1", 5353))
        if not sock.sent:
            dropped += 1
            continue
        answered += 1
        (response, _), = sock.sent
        check_reply(pkt, response)
        assert DNSRecord.parse(response).header.rcode in RCODES
    assert answered > 50_000 and dropped > 0
    sock.sent.clear()
    udp.datagram_received(DNSRecord.question("web.service.mesh").pack(), ("127.0.0.1", 5353))
    reply = DNSRecord.parse(sock.sent[0][0])
    assert sorted(str(rr.rdata) for rr in reply.rr) == ["10.0.0.1", "db.example.com."]


async def test_real_sockets_survive_garbage() -> None:
    handler = make_handler()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(serve(handler, "127.0.0.1", 0, stop, ready.set_result))
    port = await asyncio.wait_for(ready, 5)
    try:
        rng = random.Random(77)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for i, pkt in enumerate(packets(rng, 20_000)):
                s.sendto(pkt, ("127.0.0.1", port))
                if i % 200 == 0:
                    await asyncio.sleep(0)  # let the listener drain its socket (not a wait for anything)
        for blob in (b"\x00\x05hello\xff\xff" + b"x" * 100, b"\x00", rng.randbytes(3000)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(blob)
            writer.close()
        good = DNSRecord.question("web.service.mesh")
        good.header.id = 4242

        async def ask() -> bytes | None:
            fut: asyncio.Future[bytes] = loop.create_future()

            class P(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    if data[:2] == b"\x10\x92" and not fut.done():
                        fut.set_result(data)

            transport, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
            try:
                transport.sendto(good.pack())
                return await asyncio.wait_for(fut, 0.5)
            except TimeoutError:
                return None
            finally:
                transport.close()

        data = None
        for _ in range(20):  # retried as UDP clients do
            data = await ask()
            if data:
                break
        assert data is not None
        assert sorted(str(rr.rdata) for rr in DNSRecord.parse(data).rr) == ["10.0.0.1", "db.example.com."]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def test_real_agent_survives_garbage(dev_agent: AgentProcess) -> None:
    rng = random.Random(99)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for pkt in packets(rng, 3000):
            s.sendto(pkt, ("127.0.0.1", dev_agent.dns_port))
        with socket.create_connection(("127.0.0.1", dev_agent.dns_port)) as t:  # TCP garbage too
            t.sendall(b"\x00\x05hello\xff\xff" + b"x" * 100)
    q = DNSRecord.question("dev.node.mesh")

    def ask() -> bytes | None:
        # A fresh socket (the garbage's replies filled the old one's buffer), retried as UDP clients do.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh:
            fresh.settimeout(0.5)
            fresh.sendto(q.pack(), ("127.0.0.1", dev_agent.dns_port))
            try:
                return fresh.recvfrom(4096)[0]
            except TimeoutError:
                return None

    data = wait_for(ask, 10, 0, "the listener to answer after the garbage")
    assert [str(rr.rdata) for rr in DNSRecord.parse(data).rr] == ["127.0.0.1"]
    assert "Traceback" not in dev_agent.log()


_label = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(_label, min_size=0, max_size=6),
       suffix=st.sampled_from(["mesh", "MESH", "dc1.mesh", "alt", "example.com", "in-addr.arpa"]),
       qtype=st.sampled_from(["A", "AAAA", "SRV", "ANY", "TXT", "PTR", "SOA", "NS", "MX", "CNAME"]))
def test_any_name_gets_a_well_formed_answer(labels: list[str], suffix: str, qtype: str) -> None:
    handler = _HANDLER
    name = ".".join([*labels, suffix])
    q = DNSRecord.question(name, qtype)
    response, recurse = handler.handle(bytes(q.pack()), udp=True)
    assert not recurse and response is not None
    r = DNSRecord.parse(response)
    assert r.header.id == q.header.id and r.header.rcode in RCODES
    assert str(r.q.qname) == str(q.q.qname)  # the question's case is echoed
    for rr in r.rr:
        if rr.rtype not in (6, 2):  # SOA and NS are owned by the zone apex
            assert str(rr.rname) == str(q.q.qname)


_HANDLER = make_handler()
