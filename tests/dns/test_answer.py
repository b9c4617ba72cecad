"""The pure answering core: every name form, health filtering, limits and error rcodes."""

from __future__ import annotations

import random

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from proconsul.dns.answer import Answerer, DNSSettings, Instance, Node


class View:
    datacenter = "dc1"

    def __init__(self, instances: dict[str, list[Instance]], nodes: dict[str, Node] | None = None) -> None:
        self.instances = instances
        self.nodes = nodes or {}

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        return list(self.instances.get(("connect:" if connect else "") + name.lower(), []))

    def node(self, name: str) -> Node | None:
        return self.nodes.get(name.lower())

    def names_for_address(self, address: str) -> list[tuple[str, str]]:
        return [("node", n.name) for n in self.nodes.values() if n.address == address]


def inst(node: str, addr: str, port: int = 80, tags: tuple[str, ...] = (), status: str = "passing",
         svc_addr: str = "") -> Instance:
    return Instance(node, addr, svc_addr, port, tags, status)


VIEW = View({
    "web": [inst("a", "10.0.0.1", 80, ("v1",)), inst("b", "10.0.0.2", 81, ("v2",)),
            inst("c", "10.0.0.3", 82, ("v1",), "critical"), inst("d", "10.0.0.4", 83, ("v1",), "warning")],
    "v6": [inst("e", "fd00::1", 90)],
    "ext": [inst("f", "10.0.0.6", 91, svc_addr="db.example.com")],
    "connect:web": [inst("a", "10.0.0.1", 21000)],
    "many": [inst(f"n{i}", f"10.1.0.{i}", 1000 + i) for i in range(1, 60)],
}, {"a": Node("a", "10.0.0.1"), "e": Node("e", "fd00::1")})


def ask(name: str, qtype: str = "A", settings: DNSSettings | None = None, udp: bool = True,
        recursors: bool = False, edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    out = Answerer(settings or DNSSettings()).answer(DNSRecord.parse(q.pack()), VIEW, random.Random(0), udp, recursors)
    return DNSRecord.parse(out.response.pack()) if not out.recurse else out.response


def rdatas(r: DNSRecord, qtype: str | None = None) -> set[str]:
    return {str(rr.rdata) for rr in r.rr if qtype is None or QTYPE[rr.rtype] == qtype}


def test_service_a_excludes_critical_includes_warning() -> None:
    assert rdatas(ask("web.service.mesh")) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}


def test_only_passing_drops_warning() -> None:
    assert rdatas(ask("web.service.mesh", settings=DNSSettings(only_passing=True))) == {"10.0.0.1", "10.0.0.2"}


def test_srv_with_additional_a_records() -> None:
    r = ask("web.service.mesh", "SRV")
    assert {(rr.rdata.port, str(rr.rdata.target)) for rr in r.rr} == {
        (80, "a.node.dc1.mesh."), (81, "b.node.dc1.mesh."), (83, "d.node.dc1.mesh.")}
    assert {str(rr.rname): str(rr.rdata) for rr in r.ar} == {
        "a.node.dc1.mesh.": "10.0.0.1", "b.node.dc1.mesh.": "10.0.0.2", "d.node.dc1.mesh.": "10.0.0.4"}


@pytest.mark.parametrize("name", ["v1.web.service.mesh", "_web._v1.service.mesh", "v1.web.service.dc1.mesh"])
def test_tag_forms(name: str) -> None:
    assert {rr.rdata.port for rr in ask(name, "SRV").rr} == {80, 83}


def test_rfc2782_tcp_means_any_tag() -> None:
    assert len(ask("_web._tcp.service.mesh", "SRV").rr) == 3


def test_case_insensitive_and_echoed() -> None:
    r = ask("WeB.SeRvIcE.MeSh")
    assert str(r.q.qname) == "WeB.SeRvIcE.MeSh."
    assert {str(rr.rname) for rr in r.rr} == {"WeB.SeRvIcE.MeSh."}
    assert len(r.rr) == 3


def test_aaaa_and_nodata() -> None:
    assert rdatas(ask("v6.service.mesh", "AAAA")) == {"fd00::1"}
    r = ask("v6.service.mesh", "A")
    assert r.header.rcode == RCODE.NOERROR and not r.rr and QTYPE[r.auth[0].rtype] == "SOA"


def test_nxdomain_carries_soa() -> None:
    for name in ("nope.service.mesh", "web.service.dc9.mesh", "x.y.z.mesh", "nope.node.mesh"):
        r = ask(name)
        assert r.header.rcode == RCODE.NXDOMAIN, name
        assert QTYPE[r.auth[0].rtype] == "SOA"


def test_hostname_service_address_is_a_cname() -> None:
    r = ask("ext.service.mesh")
    assert QTYPE[r.rr[0].rtype] == "CNAME" and str(r.rr[0].rdata) == "db.example.com."


def test_connect_form() -> None:
    assert {rr.rdata.port for rr in ask("web.connect.mesh", "SRV").rr} == {21000}


def test_node_addr_and_ptr() -> None:
    assert rdatas(ask("a.node.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("a.node.dc1.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("e.node.mesh", "AAAA")) == {"fd00::1"}
    assert rdatas(ask("0a000001.addr.dc1.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("fd000000000000000000000000000001.addr.dc1.mesh", "AAAA")) == {"fd00::1"}
    assert rdatas(ask("1.0.0.10.in-addr.arpa", "PTR")) == {"a.node.dc1.mesh."}


def test_apex_soa_and_ns() -> None:
    assert QTYPE[ask("mesh", "SOA").rr[0].rtype] == "SOA"
    r = ask("mesh", "NS")
    assert str(r.rr[0].rdata) == "ns.mesh." and str(r.ar[0].rdata) == "127.0.0.1"


def test_ttls() -> None:
    s = DNSSettings(node_ttl=30, service_ttl={"*": 5, "web": 10})
    assert {rr.ttl for rr in ask("web.service.mesh", settings=s).rr} == {10}
    assert {rr.ttl for rr in ask("v6.service.mesh", "AAAA", settings=s).rr} == {5}
    assert {rr.ttl for rr in ask("a.node.mesh", settings=s).rr} == {30}


def test_udp_limits_and_truncation() -> None:
    plain = ask("many.service.mesh", "SRV")  # no EDNS: 512 bytes, udp_answer_limit 3
    assert len(plain.rr) <= 3 and plain.header.tc
    assert len(plain.pack()) <= 512
    big = ask("many.service.mesh", "SRV", edns=4096)
    assert len(big.rr) > len(plain.rr) and len(big.pack()) <= 4096
    tcp = ask("many.service.mesh", "SRV", udp=False)
    assert len(tcp.rr) == 59 and not tcp.header.tc
    limited = ask("many.service.mesh", "A", settings=DNSSettings(a_record_limit=2), udp=False)
    assert len(limited.rr) == 2


def test_shuffled_per_response() -> None:
    a = Answerer(DNSSettings())
    orders = set()
    rng = random.Random(5)
    for _ in range(20):
        r = a.answer(DNSRecord.question("many.service.mesh", "A"), VIEW, rng, False, False).response
        orders.add(tuple(str(rr.rdata) for rr in r.rr[:5]))
    assert len(orders) > 1


def test_outside_domain_refused_or_recursed() -> None:
    assert ask("example.com").header.rcode == RCODE.REFUSED
    q = DNSRecord.question("example.com")
    assert Answerer(DNSSettings()).answer(q, VIEW, random.Random(0), True, True).recurse


def test_alt_domain() -> None:
    assert rdatas(ask("web.service.alt", settings=DNSSettings(alt_domain="alt."))) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}


def test_bad_questions() -> None:
    a = Answerer(DNSSettings())
    two = DNSRecord.question("web.service.mesh")
    two.add_question(DNSRecord.question("a.node.mesh").q)
    assert a.answer(two, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.FORMERR
    none = DNSRecord()
    assert a.answer(none, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.FORMERR
    chaos = DNSRecord.question("web.service.mesh", qclass="CH")
    assert a.answer(chaos, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.NOTIMP
    status = DNSRecord.question("web.service.mesh")
    status.header.opcode = 2
    assert a.answer(status, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.NOTIMP
    odd = ask("web.service.mesh", "TXT")
    assert odd.header.rcode == RCODE.NOERROR and not odd.rr
