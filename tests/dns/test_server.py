"""The handler, wire cache and asyncio front in-process: a real StateStore, real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord, EDNSOption

from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore
from proconsul.dns.answer import Answerer, DNSSettings
from proconsul.dns.cache import WireCache
from proconsul.dns.errors import BadRecursor, ListenError
from proconsul.dns.server import DNSHandler, bind_sockets, parse_recursor, serve
from proconsul.dns.service import StoreView


class Catalog:
    def __init__(self) -> None:
        self.store = StateStore("dc1")
        self.index = 0

    def apply(self, cmd: c.Command) -> None:
        self.index += 1
        self.store.apply(self.index, cmd)

    def register(self, node: str, addr: str, service: str, port: int = 80, status: str = "passing",
                 tags: tuple[str, ...] = ()) -> None:
        self.apply(c.Register(node={"Node": node, "Address": addr},
                              service={"ID": service, "Service": service, "Port": port, "Tags": list(tags)},
                              checks=[{"CheckID": f"{service}-check", "ServiceID": service, "Status": status}]))


@pytest.fixture
def catalog() -> Catalog:
    cat = Catalog()
    cat.register("a", "10.0.0.1", "web")
    cat.register("b", "10.0.0.2", "web", 81)
    cat.register("c", "10.0.0.3", "db", 5432)
    return cat


def make_handler(catalog: Catalog, recursors: list[tuple[str, int]] | None = None, timeout: float = 2.0,
                 **settings: object) -> DNSHandler:
    return DNSHandler(Answerer(DNSSettings(**settings)), StoreView(catalog.store), recursors or [], timeout,  # type: ignore[arg-type]
                      rng=random.Random(7))


def query(name: str, qtype: str = "A", ident: int = 1) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = ident
    return bytes(q.pack())


def addresses(data: bytes) -> list[str]:
    return sorted(str(rr.rdata) for rr in DNSRecord.parse(data).rr)


def test_cache_hit_patches_id_and_echoes_case(catalog: Catalog) -> None:
    h = make_handler(catalog)
    first, _ = h.handle(query("db.service.mesh", ident=1), udp=True)
    again, _ = h.handle(query("db.service.mesh", ident=2), udp=True)
    assert h.udp_cache.hits == 1
    assert first[2:] == again[2:] and again[:2] == b"\x00\x02"
    upper, _ = h.handle(query("DB.service.MESH", ident=3), udp=True)
    assert str(DNSRecord.parse(upper).rr[0].rname) == "DB.service.MESH."


def test_shuffled_answers_rotate_among_copies(catalog: Catalog) -> None:
    for i in range(10):
        catalog.register(f"n{i}", f"10.1.0.{i}", "many")
    h = make_handler(catalog)
    orders = {tuple(str(rr.rdata) for rr in DNSRecord.parse(h.handle(query("many.service.mesh", ident=i),
                                                                      udp=False)[0]).rr) for i in range(12)}
    assert len(orders) > 1
    assert len(h.tcp_cache.ready) == 1 and h.tcp_cache.hits == 12 - 4


def test_invalidation_is_per_service(catalog: Catalog) -> None:
    h = make_handler(catalog)
    h.handle(query("web.service.mesh"), udp=True)
    h.handle(query("db.service.mesh"), udp=True)
    h.handle(query("a.node.mesh"), udp=True)
    assert len(h.udp_cache) == 3
    catalog.apply(c.KVOp("set", "k", b"v"))  # not catalog data: nothing dropped
    assert len(h.udp_cache) == 3
    catalog.register("c", "10.0.0.3", "db", 5432, status="critical")
    assert len(h.udp_cache) == 1  # db's answers and the node answer went; web's stayed
    out, _ = h.handle(query("db.service.mesh"), udp=True)
    assert DNSRecord.parse(out).header.rcode == RCODE.NXDOMAIN
    catalog.register("b", "10.0.0.2", "web", 81, status="critical")
    assert addresses(h.handle(query("web.service.mesh"), udp=True)[0]) == ["10.0.0.1"]


def test_node_level_critical_check_removes_instances(catalog: Catalog) -> None:
    h = make_handler(catalog)
    assert addresses(h.handle(query("web.service.mesh"), udp=True)[0]) == ["10.0.0.1", "10.0.0.2"]
    catalog.apply(c.Register(node={"Node": "a", "Address": "10.0.0.1"}, skip_node_update=True,
                             checks=[{"CheckID": "_node_maintenance", "Status": "critical"}]))
    assert addresses(h.handle(query("web.service.mesh"), udp=True)[0]) == ["10.0.0.2"]


def test_edns_cookies_share_one_cache_entry(catalog: Catalog) -> None:
    h = make_handler(catalog)
    for i in range(5):
        q = DNSRecord.question("web.service.mesh")
        q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(10, bytes([i]) * 8)]))
        out, _ = h.handle(bytes(q.pack()), udp=True)
        assert addresses(out) == ["10.0.0.1", "10.0.0.2"]
    assert len(h.udp_cache) == 1


def test_cache_is_bounded() -> None:
    cache = WireCache(variants=1, max_entries=10)
    for i in range(25):
        cache.add(bytes([i]) * 12, b"\x00\x00answer", "svc", False)
    assert len(cache) <= 10


def test_bad_packets(catalog: Catalog) -> None:
    h = make_handler(catalog)
    assert h.handle(b"\x01\x02\x03", udp=True) == (None, False)  # no header: dropped
    response = bytes(DNSRecord.question("web.service.mesh").reply().pack())
    assert h.handle(response, udp=True) == (None, False)  # a response: never answered
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    for body in (b"\xc0\x0c" + struct.pack(">HH", 1, 1),  # compression pointer to itself
                 bytes([64]) + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label over 63
                 (bytes([63]) + b"b" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
                 b"\x03web"):  # cut short
        out, _ = h.handle(header + body, udp=True)
        assert out is not None and out[:2] == b"\x00\x07" and out[3] & 0xF == RCODE.FORMERR
    none = struct.pack(">HHHHHH", 8, 0x0100, 0, 0, 0, 0)
    assert DNSRecord.parse(h.handle(none, udp=True)[0]).header.rcode == RCODE.FORMERR


def test_parse_recursor() -> None:
    assert parse_recursor("8.8.8.8") == ("8.8.8.8", 53)
    assert parse_recursor("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_recursor("[::1]:5353") == ("::1", 5353)
    assert parse_recursor("[::1]") == ("::1", 53)
    assert parse_recursor("::1") == ("::1", 53)
    for bad in ("host:", "host:99999", "[::1", ":53"):
        with pytest.raises(BadRecursor):
            parse_recursor(bad)


def test_port_in_use_is_a_clear_error() -> None:
    udp, tcp = bind_sockets("127.0.0.1", 0)
    try:
        with pytest.raises(ListenError, match=r"cannot listen for DNS on 127\.0\.0\.1:\d+"):
            bind_sockets("127.0.0.1", udp.getsockname()[1])
    finally:
        udp.close()
        tcp.close()


# ---------------------------------------------------------------------- real sockets


@pytest.fixture
async def running(catalog: Catalog) -> AsyncIterator[tuple[DNSHandler, int]]:
    handler = make_handler(catalog)
    async with serving(handler) as port:
        yield handler, port


class serving:
    def __init__(self, handler: DNSHandler) -> None:
        self.handler = handler
        self.stop = asyncio.Event()

    async def __aenter__(self) -> int:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(serve(self.handler, "127.0.0.1", 0, self.stop, ready.set_result))
        return await asyncio.wait_for(ready, 5)

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


async def udp_ask(port: int, packet: bytes, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Collect, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(proto.queue.get(), timeout)
    finally:
        transport.close()


async def tcp_ask(port: int, packet: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(struct.pack(">H", len(packet)) + packet)
        (n,) = struct.unpack(">H", await reader.readexactly(2))
        return await reader.readexactly(n)
    finally:
        writer.close()


async def test_udp_and_tcp(running: tuple[DNSHandler, int]) -> None:
    _, port = running
    assert addresses(await udp_ask(port, query("web.service.mesh"))) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(await udp_ask(port, query("web.service.mesh"))) == ["10.0.0.1", "10.0.0.2"]  # cached
    assert addresses(await tcp_ask(port, query("web.service.mesh"))) == ["10.0.0.1", "10.0.0.2"]


async def test_tcp_gets_full_answers(catalog: Catalog) -> None:
    for i in range(40):
        catalog.register(f"n{i}", f"10.2.0.{i}", "big")
    async with serving(make_handler(catalog)) as port:
        udp = DNSRecord.parse(await udp_ask(port, query("big.service.mesh", "SRV")))
        tcp = DNSRecord.parse(await tcp_ask(port, query("big.service.mesh", "SRV")))
    assert len(udp.rr) == 3 and len(tcp.rr) == 40 and len(tcp.ar) == 40


class _Upstream(asyncio.DatagramProtocol):
    """A recursor that answers every question with 192.0.2.1 (UDP)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        q = DNSRecord.parse(data)
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1")))
        self.transport.sendto(r.pack(), addr)  # type: ignore[attr-defined]


async def test_recursor_relay_tcp_relay_and_servfail(catalog: Catalog) -> None:
    loop = asyncio.get_running_loop()
    up_transport, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
    up_port = up_transport.get_extra_info("sockname")[1]

    async def tcp_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack(">H", await reader.readexactly(2))
        q = DNSRecord.parse(await reader.readexactly(n))
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.2")))
        data = r.pack()
        writer.write(struct.pack(">H", len(data)) + data)
        await writer.drain()
        writer.close()

    tcp_up = await asyncio.start_server(tcp_upstream, "127.0.0.1", up_port)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        handler = make_handler(catalog, [("127.0.0.1", silent.getsockname()[1]), ("127.0.0.1", up_port)], 1.0)  # generous: the suite runs on 2 busy cores
        async with serving(handler) as port:
            out = DNSRecord.parse(await udp_ask(port, query("example.com", ident=99)))
            assert out.header.id == 99 and [str(rr.rdata) for rr in out.rr] == ["192.0.2.1"]
            out = DNSRecord.parse(await tcp_ask(port, query("example.com")))
            assert [str(rr.rdata) for rr in out.rr] == ["192.0.2.2"]
            assert addresses(await udp_ask(port, query("db.service.mesh"))) == ["10.0.0.3"]  # ours: not relayed
        handler = make_handler(catalog, [("127.0.0.1", silent.getsockname()[1])], 0.2)
        async with serving(handler) as port:
            out = DNSRecord.parse(await udp_ask(port, query("example.com")))
            assert out.header.rcode == RCODE.SERVFAIL and out.header.ra
    finally:
        silent.close()
        up_transport.close()
        tcp_up.close()


async def test_a_burst_of_hits_misses_and_bad_packets_answers_each_sender(catalog: Catalog) -> None:
    # One burst lands in one recvmmsg batch: hits are answered in place, in runs around the misses
    # (new names, a bad packet), and every answer reaches the socket that asked, with its own ID.
    loop = asyncio.get_running_loop()
    async with serving(make_handler(catalog)) as port:
        await udp_ask(port, query("web.service.mesh"))  # warm the cache for web and db
        await udp_ask(port, query("db.service.mesh"))
        clients = [await loop.create_datagram_endpoint(_Collect, remote_addr=("127.0.0.1", port)) for _ in range(3)]
        try:
            asked: dict[int, list[int]] = {k: [] for k in range(3)}
            for ident in range(1, 31):
                k = ident % 3
                name = ("web", "db", f"nope-{ident}", "bad")[ident % 4]
                packet = b"\x00" * 5 if name == "bad" else query(f"{name}.service.mesh", ident=ident)
                if name != "bad":
                    asked[k].append(ident)
                clients[k][0].sendto(packet)
            for k, (_, proto) in enumerate(clients):
                answers = [DNSRecord.parse(await asyncio.wait_for(proto.queue.get(), 5)) for _ in asked[k]]
                assert sorted(a.header.id for a in answers) == asked[k]
                for a in answers:
                    want = {"web": ["10.0.0.1", "10.0.0.2"], "db": ["10.0.0.3"]}.get(str(a.q.qname).split(".")[0], [])
                    assert sorted(str(rr.rdata) for rr in a.rr) == want
        finally:
            for transport, _ in clients:
                transport.close()


async def test_a_service_registered_by_hostname_gets_its_addresses_from_the_recursors(catalog: Catalog) -> None:
    """As Consul: `ext.service` whose address is a hostname answers the CNAME and, with recursors, the
    addresses they give for it (a real UDP recursor on 127.0.0.1); without recursors the CNAME alone."""
    catalog.apply(c.Register(node={"Node": "x", "Address": "10.0.0.9"},
                             service={"ID": "ext", "Service": "ext", "Port": 443, "Address": "db.example.com"}))
    loop = asyncio.get_running_loop()
    up_transport, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
    try:
        async with serving(make_handler(catalog, [("127.0.0.1", up_transport.get_extra_info("sockname")[1])])) as port:
            out = DNSRecord.parse(await udp_ask(port, query("ext.service.mesh")))
            assert [(QTYPE[rr.rtype], str(rr.rname), str(rr.rdata)) for rr in out.rr] == [
                ("CNAME", "ext.service.mesh.", "db.example.com."), ("A", "db.example.com.", "192.0.2.1")]
            assert addresses(await udp_ask(port, query("db.service.mesh"))) == ["10.0.0.3"], "IPs: unchanged"
        async with serving(make_handler(catalog)) as port:
            out = DNSRecord.parse(await udp_ask(port, query("ext.service.mesh")))
            assert [QTYPE[rr.rtype] for rr in out.rr] == ["CNAME"]
    finally:
        up_transport.close()
