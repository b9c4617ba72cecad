"""The pure answering core: every name form, health filtering, limits, TTLs and error rcodes."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from proconsul.dns.answer import CATALOG, Answerer, DNSSettings, Instance, Node, QueryAnswer


class View:
    datacenter = "dc1"

    def __init__(self, instances: dict[str, list[Instance]], nodes: dict[str, Node] | None = None,
                 servers: list[Node] | None = None, queries: dict[str, QueryAnswer] | None = None) -> None:
        self.instances = instances
        self.nodes = nodes or {}
        self.servers = servers or []
        self.queries = queries or {}

    def prepared_query(self, name: str) -> QueryAnswer | None:
        return self.queries.get(name)

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        return list(self.instances.get(("connect:" if connect else "") + name.lower(), []))

    def ingress_instances(self, name: str) -> list[Instance]:
        return list(self.instances.get("ingress:" + name.lower(), []))

    def node(self, name: str) -> Node | None:
        return self.nodes.get(name.lower())

    def names_for_address(self, address: str) -> list[tuple[str, str]]:
        out = [("node", n.name) for n in self.nodes.values() if n.address == address]
        out += [("service", s) for s, insts in self.instances.items()
                if any(i.service_address == address for i in insts)]
        return out

    def nameservers(self) -> list[Node]:
        return self.servers

    def index(self) -> int:
        return 42

    def watch(self, callback: Callable[[set[str] | None], None]) -> None:
        pass


def inst(node: str, addr: str, port: int = 80, tags: tuple[str, ...] = (), status: str = "passing",
         svc_addr: str = "", **kw: object) -> Instance:
    return Instance(node, addr, svc_addr, port, tags, status, **kw)  # type: ignore[arg-type]


VIEW = View({
    "web": [inst("a", "10.0.0.1", 80, ("v1",)), inst("b", "10.0.0.2", 81, ("v2",)),
            inst("c", "10.0.0.3", 82, ("v1",), "critical"), inst("d", "10.0.0.4", 83, ("v1",), "warning"),
            inst("m", "10.0.0.5", 84, ("v1",), "maintenance")],
    "v6": [inst("e", "fd00::1", 90)],
    "ext": [inst("f", "10.0.0.6", 91, svc_addr="db.example.com")],
    "own": [inst("g", "10.0.0.7", 92, svc_addr="10.9.9.9")],
    "dotted": [inst("h", "10.0.0.8", 93, ("a.b",))],
    "tagged": [inst("i", "fd00::9", 94, node_tagged={"lan_ipv4": "10.0.0.9", "lan_ipv6": "fd00::9"})],
    "weighted": [inst("j", "10.0.0.10", 95, status="warning", weight_passing=10, weight_warning=0)],
    "dual": [inst("k", "10.0.0.11", 96), inst("k", "10.0.0.11", 97)],
    "connect:web": [inst("a", "10.0.0.1", 21000)],
    "ingress:web": [inst("gw", "10.0.0.50", 8443), inst("gw2", "10.0.0.51", 8443, status="critical")],
    "many": [inst(f"n{i}", f"10.1.0.{i}", 1000 + i) for i in range(1, 60)],
}, {"a": Node("a", "10.0.0.1", meta={"rack": "r1", "a=b": "c"}), "e": Node("e", "fd00::1"),
    "ext.host": Node("ext.host", "host.example.com")},
    servers=[Node("srv1", "10.0.0.100")])


def ask(name: str, qtype: str = "A", settings: DNSSettings | None = None, udp: bool = True,
        recursors: bool = False, edns: int | None = None, view: View = VIEW,
        rng: random.Random | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    out = Answerer(settings or DNSSettings()).answer(DNSRecord.parse(q.pack()), view, rng or random.Random(0), udp,
                                                     recursors)
    assert out.response is not None
    return DNSRecord.parse(out.response.pack())


def rdatas(r: DNSRecord, qtype: str | None = None) -> set[str]:
    return {str(rr.rdata) for rr in r.rr if qtype is None or QTYPE[rr.rtype] == qtype}


def soa_in_authority(r: DNSRecord) -> bool:
    return [QTYPE[a.rtype] for a in r.auth] == ["SOA"] and str(r.auth[0].rname) == "mesh."


def test_service_a_excludes_critical_and_maintenance_includes_warning() -> None:
    r = ask("web.service.mesh")
    assert rdatas(r) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}
    assert r.header.aa and r.header.rcode == RCODE.NOERROR


def test_only_passing_drops_warning() -> None:
    assert rdatas(ask("web.service.mesh", settings=DNSSettings(only_passing=True))) == {"10.0.0.1", "10.0.0.2"}


def test_srv_with_additional_a_records() -> None:
    r = ask("web.service.mesh", "SRV", edns=4096)
    assert {(rr.rdata.priority, rr.rdata.weight, rr.rdata.port, str(rr.rdata.target)) for rr in r.rr} == {
        (1, 1, 80, "a.node.dc1.mesh."), (1, 1, 81, "b.node.dc1.mesh."), (1, 1, 83, "d.node.dc1.mesh.")}
    assert {str(rr.rname): str(rr.rdata) for rr in r.ar if rr.rtype != QTYPE.OPT} == {
        "a.node.dc1.mesh.": "10.0.0.1", "b.node.dc1.mesh.": "10.0.0.2", "d.node.dc1.mesh.": "10.0.0.4"}


def test_srv_weights_follow_health() -> None:
    assert [rr.rdata.weight for rr in ask("weighted.service.mesh", "SRV").rr] == [0]


def test_srv_service_address_target_is_hex_addr() -> None:
    r = ask("own.service.mesh", "SRV")
    assert [str(rr.rdata.target) for rr in r.rr] == ["0a090909.addr.dc1.mesh."]
    assert [(str(rr.rname), str(rr.rdata)) for rr in r.ar] == [("0a090909.addr.dc1.mesh.", "10.9.9.9")]
    assert rdatas(ask("own.service.mesh")) == {"10.9.9.9"}


def test_same_node_two_ports_one_a_two_srv() -> None:
    assert rdatas(ask("dual.service.mesh")) == {"10.0.0.11"}
    r = ask("dual.service.mesh", "SRV")
    assert sorted(rr.rdata.port for rr in r.rr) == [96, 97] and len(r.ar) == 1


@pytest.mark.parametrize("name", ["v1.web.service.mesh", "_web._v1.service.mesh", "v1.web.service.dc1.mesh",
                                  "V1.WEB.service.mesh", "_web._v1.mesh", "v1.web.service.dc1.dc.mesh"])
def test_tag_forms(name: str) -> None:
    assert {rr.rdata.port for rr in ask(name, "SRV").rr} == {80, 83}


def test_tag_with_dots() -> None:
    assert rdatas(ask("a.b.dotted.service.mesh")) == {"10.0.0.8"}


def test_rfc2782_tcp_means_any_tag() -> None:
    assert len(ask("_web._tcp.service.mesh", "SRV").rr) == 3
    assert len(ask("_web._tcp.mesh", "SRV").rr) == 3  # `service` is optional for SRV questions


def test_case_insensitive_and_echoed() -> None:
    r = ask("WeB.SeRvIcE.MeSh")
    assert str(r.q.qname) == "WeB.SeRvIcE.MeSh."
    assert {str(rr.rname) for rr in r.rr} == {"WeB.SeRvIcE.MeSh."}
    assert len(r.rr) == 3


def test_aaaa_and_nodata() -> None:
    assert rdatas(ask("v6.service.mesh", "AAAA")) == {"fd00::1"}
    r = ask("v6.service.mesh", "A")
    assert r.header.rcode == RCODE.NOERROR and not r.rr and soa_in_authority(r)
    r = ask("web.service.mesh", "MX")
    assert r.header.rcode == RCODE.NOERROR and not r.rr and soa_in_authority(r)


def test_any_gives_both_families() -> None:
    assert rdatas(ask("v6.service.mesh", "ANY")) == {"fd00::1"}
    assert rdatas(ask("web.service.mesh", "ANY")) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}


def test_tagged_lan_addresses_per_family() -> None:
    assert rdatas(ask("tagged.service.mesh", "A")) == {"10.0.0.9"}
    assert rdatas(ask("tagged.service.mesh", "AAAA")) == {"fd00::9"}


@pytest.mark.parametrize("name", ["nope.service.mesh", "web.service.dc9.mesh", "x.y.z.mesh", "nope.node.mesh",
                                  "service.mesh", "web.service.other.stuff.mesh", "q.query.mesh",
                                  "nope.ingress.mesh", "zz.addr.dc1.mesh", "web.service.peer1.peer.mesh"])
def test_nxdomain_carries_soa(name: str) -> None:
    r = ask(name)
    assert r.header.rcode == RCODE.NXDOMAIN, name
    assert soa_in_authority(r)
    assert r.auth[0].ttl == 0


def test_prepared_query_answers_its_instances_near_first_with_its_ttl() -> None:
    picked = (inst("a", "10.0.0.1", 80), inst("b", "10.0.0.2", 81), inst("d", "10.0.0.4", 83, status="warning"))
    view = View({}, queries={"q": QueryAnswer("web", picked, ttl=42, near="d"), "none": QueryAnswer("web", ()),
                             "dflt": QueryAnswer("web", picked[:1])})
    for seed in range(5):
        r = ask("q.query.mesh", view=view, rng=random.Random(seed))
        assert [str(rr.rdata) for rr in r.rr][0] == "10.0.0.4" and {rr.ttl for rr in r.rr} == {42}
        assert rdatas(r) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}  # the query's health rules, not DNS's
    assert {rr.rdata.port for rr in ask("q.query.dc1.mesh", "SRV", view=view).rr} == {80, 81, 83}
    assert ask("none.query.mesh", view=view).header.rcode == RCODE.NXDOMAIN
    r = ask("dflt.query.mesh", view=view, settings=DNSSettings(service_ttl={"web": 7}))
    assert [rr.ttl for rr in r.rr] == [7]  # no TTL in the query: the agent's service_ttl for its service


def test_negative_ttl_is_soa_min_ttl() -> None:
    r = ask("nope.service.mesh", settings=DNSSettings(soa_min_ttl=30))
    assert r.auth[0].ttl == 30 and r.auth[0].rdata.times[-1] == 30


def test_all_unhealthy_is_nxdomain() -> None:
    view = View({"sick": [inst("x", "10.0.0.1", status="critical")]})
    assert ask("sick.service.mesh", view=view).header.rcode == RCODE.NXDOMAIN


def test_hostname_service_address_is_a_cname() -> None:
    r = ask("ext.service.mesh")
    assert QTYPE[r.rr[0].rtype] == "CNAME" and str(r.rr[0].rdata) == "db.example.com."
    assert [str(rr.rdata.target) for rr in ask("ext.service.mesh", "SRV").rr] == ["db.example.com."]


def test_connect_form() -> None:
    assert {rr.rdata.port for rr in ask("web.connect.mesh", "SRV").rr} == {21000}
    assert ask("nope.connect.mesh").header.rcode == RCODE.NXDOMAIN


def test_ingress_form() -> None:
    assert rdatas(ask("web.ingress.mesh")) == {"10.0.0.50"}, "the healthy ingress gateways exposing web"
    assert rdatas(ask("web.ingress.dc1.mesh")) == {"10.0.0.50"}
    assert ask("nope.ingress.mesh").header.rcode == RCODE.NXDOMAIN


def test_node_lookups() -> None:
    assert rdatas(ask("a.node.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("a.node.dc1.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("e.node.mesh", "AAAA")) == {"fd00::1"}
    assert rdatas(ask("ext.host.node.mesh")) == {"host.example.com."}  # dots in node names; CNAME
    r = ask("e.node.mesh", "A")
    assert not r.rr and soa_in_authority(r) and r.header.rcode == RCODE.NOERROR


def test_node_meta_as_txt() -> None:
    r = ask("a.node.mesh")
    assert {str(rr.rdata) for rr in r.ar} == {'"rack=r1"', '"a`=b=c"'}
    assert rdatas(ask("a.node.mesh", "TXT")) == {'"rack=r1"', '"a`=b=c"'}
    assert not ask("a.node.mesh", settings=DNSSettings(node_meta_txt=False)).ar


def test_addr_form() -> None:
    assert rdatas(ask("0a000001.addr.dc1.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("0a000001.addr.mesh")) == {"10.0.0.1"}
    assert rdatas(ask("fd000000000000000000000000000001.addr.dc1.mesh", "AAAA")) == {"fd00::1"}
    assert not ask("0a000001.addr.dc1.mesh", "AAAA").rr


def test_ptr() -> None:
    assert rdatas(ask("1.0.0.10.in-addr.arpa", "PTR")) == {"a.node.dc1.mesh."}
    assert rdatas(ask("9.9.9.10.in-addr.arpa", "PTR")) == {"own.service.dc1.mesh."}
    v6 = ".".join(reversed("fd000000000000000000000000000001")) + ".ip6.arpa"
    assert rdatas(ask(v6, "PTR")) == {"e.node.dc1.mesh."}
    assert ask("7.7.7.7.in-addr.arpa", "PTR").header.rcode == RCODE.REFUSED


def test_apex_soa_and_ns() -> None:
    r = ask("mesh", "SOA")
    soa = r.rr[0]
    assert QTYPE[soa.rtype] == "SOA" and str(soa.rdata.mname) == "ns.mesh." and soa.rdata.times[0] == 42
    assert [str(a.rdata) for a in r.auth] == ["srv1.node.dc1.mesh."]
    r = ask("mesh", "NS")
    assert rdatas(r) == {"srv1.node.dc1.mesh."} and [str(a.rdata) for a in r.ar] == ["10.0.0.100"]
    assert QTYPE[ask("web.service.mesh", "SOA").rr[0].rtype] == "SOA"  # as Consul: any name in the zone
    r = ask("mesh", "A")
    assert r.header.rcode == RCODE.NOERROR and not r.rr and soa_in_authority(r)
    assert ask("mesh", "AXFR").header.rcode == RCODE.NOTIMP


def test_ttls() -> None:
    s = DNSSettings(node_ttl=30, service_ttl={"*": 5, "web": 10, "v*": 7})
    assert {rr.ttl for rr in ask("web.service.mesh", settings=s).rr} == {10}
    assert {rr.ttl for rr in ask("v6.service.mesh", "AAAA", settings=s).rr} == {7}
    assert {rr.ttl for rr in ask("own.service.mesh", settings=s).rr} == {5}
    assert {rr.ttl for rr in ask("a.node.mesh", settings=s).rr} == {30}
    assert {rr.ttl for rr in ask("web.service.mesh").rr} == {0}


def test_udp_answer_limit_without_edns() -> None:
    plain = ask("many.service.mesh", "A")
    assert len(plain.rr) == 3 and not plain.header.tc  # Consul: TC only with enable_truncate
    flagged = ask("many.service.mesh", "A", settings=DNSSettings(enable_truncate=True))
    assert len(flagged.rr) == 3 and flagged.header.tc
    assert len(ask("many.service.mesh", "A", settings=DNSSettings(udp_answer_limit=20)).rr) == 8  # hard cap
    assert len(ask("many.service.mesh", "A", edns=4096).rr) == 59


def test_size_limits_and_truncation() -> None:
    s = DNSSettings(udp_answer_limit=0)
    plain = ask("many.service.mesh", "SRV", settings=s)
    assert len(plain.pack()) <= 512 and plain.header.tc and 0 < len(plain.rr) < 59
    targets = {str(rr.rdata.target) for rr in plain.rr}
    assert {str(rr.rname) for rr in plain.ar} == targets  # additional records only for the kept answers
    big = ask("many.service.mesh", "SRV", edns=1232)
    assert len(big.rr) > len(plain.rr) and len(big.pack()) <= 1232 and big.header.tc
    tcp = ask("many.service.mesh", "SRV", udp=False)
    assert len(tcp.rr) == 59 and not tcp.header.tc and len(tcp.ar) == 59
    limited = ask("many.service.mesh", "A", settings=DNSSettings(a_record_limit=2), udp=False)
    assert len(limited.rr) == 2


def test_edns_echoed() -> None:
    r = ask("web.service.mesh", edns=1232)
    opt = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == 1232


def test_shuffled_per_response() -> None:
    a = Answerer(DNSSettings())
    rng = random.Random(5)
    orders = set()
    for _ in range(20):
        out = a.answer(DNSRecord.question("many.service.mesh", "A"), VIEW, rng, False, False)
        assert out.shuffled and out.depends == "many"
        orders.add(tuple(str(rr.rdata) for rr in out.response.rr[:5]))
    assert len(orders) > 1


def test_dependencies() -> None:
    a = Answerer(DNSSettings())

    def dep(name: str, qtype: str = "A") -> str:
        return a.answer(DNSRecord.question(name, qtype), VIEW, random.Random(0), True, False).depends

    assert dep("web.service.mesh") == "web" and dep("Nope.service.mesh") == "nope"
    assert dep("web.connect.mesh") == CATALOG and dep("a.node.mesh") == CATALOG
    assert dep("mesh", "NS") == "consul"


def test_outside_domain_refused_or_recursed() -> None:
    r = ask("example.com")
    assert r.header.rcode == RCODE.REFUSED and not r.header.aa
    out = Answerer(DNSSettings()).answer(DNSRecord.question("example.com"), VIEW, random.Random(0), True, True)
    assert out.recurse and not out.cacheable
    assert ask("mesh.example.com").header.rcode == RCODE.REFUSED


def test_alt_domain() -> None:
    s = DNSSettings(alt_domain="alt.")
    assert rdatas(ask("web.service.alt", settings=s)) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}
    assert {str(rr.rdata.target) for rr in ask("v1.web.service.alt", "SRV", settings=s).rr} == {
        "a.node.dc1.alt.", "d.node.dc1.alt."}
    assert soa_in_authority(ask("web.service.mesh", "AAAA", settings=s))


def test_bad_questions() -> None:
    a = Answerer(DNSSettings())
    two = DNSRecord.question("web.service.mesh")
    two.add_question(DNSRecord.question("a.node.mesh").q)
    assert a.answer(two, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.FORMERR
    assert a.answer(DNSRecord(), VIEW, random.Random(0), True, False).response.header.rcode == RCODE.FORMERR
    chaos = DNSRecord.question("web.service.mesh", qclass="CH")
    assert a.answer(chaos, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.NOTIMP
    status = DNSRecord.question("web.service.mesh")
    status.header.opcode = 2
    assert a.answer(status, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.NOTIMP
    two_opt = DNSRecord.question("web.service.mesh")
    two_opt.add_ar(EDNS0())
    two_opt.add_ar(EDNS0())
    assert a.answer(two_opt, VIEW, random.Random(0), True, False).response.header.rcode == RCODE.FORMERR
    v1 = DNSRecord.question("web.service.mesh")
    v1.add_ar(EDNS0(version=1))
    r = a.answer(v1, VIEW, random.Random(0), True, False).response
    assert r.header.rcode == 0 and (r.ar[0].ttl >> 24) == 1  # BADVERS = extended rcode 16


def test_an_asker_of_another_datacenter_that_translates_gets_wan_addresses() -> None:
    """`translate_wan_addrs`: a question relayed from dc2's agent (`wan_for="dc2"`) about dc1 is answered from
    WAN addresses and ports, bypassing the wire cache; dc1's own askers keep the LAN ones."""
    from proconsul.dns.server import DNSHandler

    tagged = {"lan": "10.0.0.1", "lan_ipv4": "10.0.0.1", "wan": "198.51.100.1", "wan_ipv4": "198.51.100.1"}
    view = View({"api": [inst("a", "10.0.0.1", 8443, svc_addr="10.0.0.6", node_tagged=tagged,
                              service_tagged={"wan": "198.51.100.6"}, wan_port=9443),
                         inst("b", "10.0.0.2", 8443, node_tagged={"wan": "198.51.100.2"})]},
                nodes={"a": Node("a", "10.0.0.1", tagged)})
    handler = DNSHandler(Answerer(DNSSettings()), view, [], rng=random.Random(1))  # type: ignore[arg-type]

    def ask(name: str, qtype: str, wan_for: str | None = None) -> list[str]:
        packet = DNSRecord.question(name, qtype).pack()
        data, recurse = handler.handle(packet, True, wan_for)
        assert data is not None and not recurse
        return sorted(str(rr.rdata) for rr in DNSRecord.parse(data).rr)

    assert ask("api.service.mesh", "A") == ["10.0.0.2", "10.0.0.6"]
    assert ask("api.service.mesh", "A", "dc2") == ["198.51.100.2", "198.51.100.6"]
    assert ask("api.service.mesh", "A") == ["10.0.0.2", "10.0.0.6"], "the translated answer was not cached"
    assert ask("api.service.mesh", "A", "dc1") == ["10.0.0.2", "10.0.0.6"], "an asker of our own datacenter"
    assert ask("a.node.mesh", "A", "dc2") == ["198.51.100.1"]
    srv = ask("api.service.mesh", "SRV", "dc2")
    assert sorted(s.split()[2] for s in srv) == ["8443", "9443"], srv
