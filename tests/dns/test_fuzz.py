"""100,000+ random and mutated packets at the DNS server; afterwards it still answers correctly."""

from __future__ import annotations

import random
import socket
import struct

from dnslib import EDNS0, DNSRecord
from support import AgentProcess, wait_for

from proconsul.dns.answer import Answerer, DNSSettings, Instance
from proconsul.dns.server import DNSHandler


class View:
    datacenter = "dc1"

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        return [Instance("a", "10.0.0.1", "", 80, ("v1",), "passing")] if name.lower() == "web" else []

    def node(self, name: str):
        return None

    def names_for_address(self, address: str):
        return []


def seeds() -> list[bytes]:
    out = []
    for name, qtype in [("web.service.mesh", "A"), ("web.service.mesh", "SRV"), ("v1.web.service.mesh", "ANY"),
                        ("a.node.mesh", "AAAA"), ("1.0.0.10.in-addr.arpa", "PTR"), ("mesh", "SOA")]:
        q = DNSRecord.question(name, qtype)
        out.append(q.pack())
        q.add_ar(EDNS0(udp_len=1232))
        out.append(q.pack())
    # Hand-made nasties: a compression pointer to itself, a label over 63, a name over 255, no questions.
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    out.append(header + b"\xc0\x0c" + struct.pack(">HH", 1, 1))
    out.append(header + bytes([64]) + b"a" * 64 + b"\x00" + struct.pack(">HH", 1, 1))
    out.append(header + (bytes([63]) + b"b" * 63) * 5 + b"\x00" + struct.pack(">HH", 1, 1))
    out.append(struct.pack(">HHHHHH", 8, 0x0100, 0, 0, 0, 0))
    out.append(struct.pack(">HHHHHH", 9, 0x0100, 40, 0, 0, 0) + b"\x00")
    return out


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b[rng.randrange(len(b) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            b.extend(b[: rng.randint(0, len(b))])
    return bytes(b)


def test_handler_survives_100k_packets() -> None:
    rng = random.Random(1234)
    handler = DNSHandler(Answerer(DNSSettings()), View(), [], rng=random.Random(1))
    base = seeds()
    answered = dropped = 0
    for i in range(100_000):
        if i % 3 == 0:
            pkt = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        else:
            pkt = mutate(rng, rng.choice(base))
        response, recurse = handler.handle(pkt, udp=bool(i % 2))
        assert not recurse  # no recursors configured: nothing is relayed
        if response is None:
            dropped += 1
            continue
        answered += 1
        assert response[:2] == pkt[:2], "a reply always carries the question's ID"
        assert len(response) >= 12 and response[2] & 0x80, "a reply always has QR set"
        if i % 2:
            assert len(response) <= 4096
    assert answered > 50_000 and dropped > 0
    good = DNSRecord.question("web.service.mesh")
    reply = DNSRecord.parse(handler.handle(good.pack(), udp=True)[0])
    assert [str(rr.rdata) for rr in reply.rr] == ["10.0.0.1"]


def test_real_listener_survives_garbage(dev_agent: AgentProcess) -> None:
    rng = random.Random(99)
    base = seeds()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3000):
            pkt = mutate(rng, rng.choice(base)) if i % 2 else bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
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
