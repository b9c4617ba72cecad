"""The DNS answering core: a parsed question and a read view of the catalog in, a response out.

Pure: no sockets, no clock, no global state; the per-response shuffle takes the caller's RNG. It
follows Consul's DNS interface (agent/dns.go) with our domain (`mesh.` by default):

    <service>.service[.<dc>].<domain>                A/AAAA/ANY/SRV of healthy instances
    <tag>[.<tag>].<service>.service[.<dc>].<domain>   …only instances with that tag
    _<service>._<tag|tcp>[.service][.<dc>].<domain>   RFC 2782 SRV form (`_tcp`: any tag)
    <service>.connect[.<dc>].<domain>                 the service's sidecar proxies / native instances
    <query id or name>.query[.<dc>].<domain>          the instances a prepared query's execution returns
    <node>.node[.<dc>].<domain>                       A/AAAA of a node (its meta as TXT)
    <hex-ip>.addr[.<dc>].<domain>                     the address spelled in hex
    <reversed-ip>.in-addr.arpa / .ip6.arpa            PTR of known node and service addresses
    any name in the domain, type SOA or NS            the zone's SOA / NS (servers as nameservers)

The datacenter may also be spelled `<dc>.dc`. An unknown datacenter is NXDOMAIN, as in Consul.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    NS,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

PASSING, WARNING = "passing", "warning"
CLASS_IN, CLASS_ANY = 1, 255
MAX_UDP_NO_EDNS = 512
MAX_UDP_DATAGRAM = 65535 - 60 - 8  # what Consul allows an EDNS0 client to ask for
MAX_TCP_MESSAGE = 65535 - 12
MAX_UDP_ANSWER_LIMIT = 8  # Consul's hard cap on udp_answer_limit
MAX_NAMESERVERS = 3

# Dependency tags for cached answers: a service name (lower case) or CATALOG for "anything in the catalog".
CATALOG = ""

_T_A, _T_AAAA, _T_SRV, _T_ANY, _T_CNAME, _T_TXT = QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.ANY, QTYPE.CNAME, QTYPE.TXT
_T_SOA, _T_NS, _T_PTR, _T_OPT = QTYPE.SOA, QTYPE.NS, QTYPE.PTR, QTYPE.OPT
_T_AXFR, _T_IXFR = QTYPE.AXFR, QTYPE.IXFR
_KINDS = frozenset({"service", "connect", "node", "addr", "query", "ingress", "virtual"})


class Shuffler(Protocol):
    """The randomness the answerer needs, passed in (a seeded `random.Random` in tests and simulations)."""

    def shuffle(self, x: list[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Instance:
    """One service instance as DNS needs it: its node, addresses, port, tags and health."""

    node: str
    node_address: str
    service_address: str
    port: int
    tags: tuple[str, ...]
    status: str  # worst of the instance's and its node's checks
    weight_passing: int = 1
    weight_warning: int = 1
    node_tagged: Mapping[str, str] = field(default_factory=dict)  # lan_ipv4, lan_ipv6, wan, …
    service_tagged: Mapping[str, str] = field(default_factory=dict)  # tag -> address
    wan_port: int = 0  # the service's TaggedAddresses.wan port (0: none), for translate_wan_addrs


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """A prepared query's execution as DNS needs it: the service, its selected instances, the query's DNS TTL
    (None: the agent's service_ttl for that service) and the node to put first (`Near`)."""

    service: str
    instances: tuple[Instance, ...]
    ttl: int | None = None
    near: str = ""
    failover: Mapping[str, Any] | None = None  # no instance here: the definition to run in other datacenters


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: str
    tagged: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)


class CatalogView(Protocol):
    """What the answering core reads. The agent provides one over its state store; a client agent will
    provide one backed by a server (a local copy kept fresh by blocking queries), so a lookup never
    waits on the network. `watch` registers the callback that keeps the wire cache honest."""

    datacenter: str

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        """Every instance of `name` (or its Connect-capable instances), healthy or not."""
        ...

    def ingress_instances(self, name: str) -> list[Instance]:
        """The instances of the ingress gateways whose config entry exposes `name` (Consul's
        `<service>.ingress.<domain>`), healthy or not."""
        ...

    def node(self, name: str) -> Node | None: ...

    def prepared_query(self, name: str) -> QueryAnswer | None:
        """The execution of the prepared query `name` (an ID or name; templates match by prefix), None if none."""
        ...

    def names_for_address(self, address: str) -> list[tuple[str, str]]:
        """("node", name) pairs first, then ("service", name) pairs, for catalog entries with this address."""
        ...

    def nameservers(self) -> list[Node]:
        """The servers of this datacenter (healthy instances of the "consul" service), for NS records."""
        ...

    def index(self) -> int:
        """The catalog index the view reflects (the SOA serial)."""
        ...

    def watch(self, callback: Callable[[set[str] | None], None]) -> None:
        """Call `callback(services)` after every catalog change: the lower-case service names touched, or
        None when anything may have changed."""
        ...


@dataclass
class DNSSettings:
    domain: str = "mesh."
    alt_domain: str = ""
    node_ttl: int = 0
    service_ttl: dict[str, int] = field(default_factory=dict)  # name, "prefix*" or "*" -> seconds
    only_passing: bool = False
    a_record_limit: int = 0
    udp_answer_limit: int = 3
    enable_truncate: bool = False
    node_meta_txt: bool = True
    soa_min_ttl: int = 0
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400

    def ttl_for_service(self, name: str) -> int:
        """Exact name first, then the longest `prefix*` wildcard (`*` alone matches all), else 0."""
        name = name.lower()
        exact = self.service_ttl.get(name)
        if exact is not None:
            return exact
        best, best_len = 0, -1
        for key, ttl in self.service_ttl.items():
            if key.endswith("*") and name.startswith(key[:-1]) and len(key) > best_len:
                best, best_len = ttl, len(key)
        return best


@dataclass(slots=True)
class Outcome:
    """The core's verdict: a response to send, or `recurse` (relay to a recursor); `depends` says which
    catalog change invalidates a cached copy; `shuffled` means another call may give another order."""

    response: DNSRecord | None
    recurse: bool = False
    depends: str = CATALOG
    shuffled: bool = False
    cacheable: bool = True
    remote: str = ""  # the question names this other datacenter: its servers answer it (else `response`)
    failover: Mapping[str, Any] | None = None  # a prepared query to run in other datacenters (else `response`)


def _text(label: bytes) -> str:
    return label.decode("utf-8", "surrogateescape")


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def _pick(addr: str, tagged: Mapping[str, str], qtype: int) -> str:
    """Consul's address translation within the local datacenter: lan_ipv4/lan_ipv6 for A/AAAA."""
    if tagged:
        if qtype == _T_AAAA and tagged.get("lan_ipv6"):
            return tagged["lan_ipv6"]
        if qtype == _T_A and tagged.get("lan_ipv4"):
            return tagged["lan_ipv4"]
    return addr


def _ip_record(name: DNSLabel | str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, qtype: int,
               ttl: int) -> RR | None:
    if ip.version == 4:
        if qtype in (_T_A, _T_ANY, _T_SRV):
            return RR(name, _T_A, ttl=ttl, rdata=A(str(ip)))
    elif qtype in (_T_AAAA, _T_ANY, _T_SRV):
        return RR(name, _T_AAAA, ttl=ttl, rdata=AAAA(str(ip)))
    return None


def _meta_txt(key: str, value: str) -> str:
    """RFC 1464 key=value, as Consul writes node meta; `rfc1035-` keys carry the bare value."""
    if key.startswith("rfc1035-"):
        return value
    key = key.replace("`", "``").replace("=", "`=")
    lead = len(key) - len(key.lstrip(" "))
    trail = len(key) - len(key.rstrip(" "))
    if lead or trail:
        key = "` " * lead + key.strip(" ") + "` " * trail
    return key + "=" + value.replace("`", "``")


def _txt(text: str) -> TXT:
    raw = text.encode()
    return TXT([raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""])


class Answerer:
    """Answers one question; holds the settings and nothing else."""

    def __init__(self, settings: DNSSettings) -> None:
        self.s = settings
        domains = [d for d in (settings.domain, settings.alt_domain) if d]
        # Longest first, as Consul trims the longer of domain and alt_domain first.
        domains.sort(key=len, reverse=True)
        self._domains = [(d.rstrip(".") + ".", tuple(x.lower() for x in d.rstrip(".").split(".") if x))
                         for d in domains]

    # ------------------------------------------------------------------ entry point
    def answer(self, request: DNSRecord, view: CatalogView, rng: Shuffler, udp: bool,
               have_recursors: bool) -> Outcome:
        h = request.header
        reply = DNSRecord(DNSHeader(id=h.id, qr=1, opcode=h.opcode, aa=1, rd=h.rd, ra=int(have_recursors)))
        reply.header.cd = h.cd
        opts = [r for r in request.ar if r.rtype == _T_OPT]
        reply.questions = list(request.questions[:1])
        edns_size = 0
        if opts:
            edns_size = max(opts[0].rclass, MAX_UDP_NO_EDNS)
            reply.add_ar(EDNS0(udp_len=min(opts[0].rclass or MAX_UDP_NO_EDNS, 65535)))
            if len(opts) > 1:
                return self._error(reply, RCODE.FORMERR)
            if (opts[0].ttl >> 16) & 0xFF:  # EDNS version above 0: BADVERS (extended rcode 16)
                reply.ar[-1] = EDNS0(udp_len=MAX_UDP_NO_EDNS, ext_rcode=1)
                return Outcome(reply, cacheable=True)
        if h.opcode != 0:
            return self._error(reply, RCODE.NOTIMP)
        if len(request.questions) != 1:
            return self._error(reply, RCODE.FORMERR)
        q = request.questions[0]
        if q.qclass not in (CLASS_IN, CLASS_ANY):
            return self._error(reply, RCODE.NOTIMP)
        labels = q.qname.label
        lower = [_text(lab).lower() for lab in labels]
        if lower[-2:] in (["in-addr", "arpa"], ["ip6", "arpa"]):
            return self._ptr(reply, q, lower, view, have_recursors)
        match = self._match_domain(lower)
        if match is None:
            reply.header.aa = 0
            if have_recursors:
                return Outcome(None, recurse=True, cacheable=False)
            reply.header.rcode = RCODE.REFUSED
            return Outcome(reply)
        zone, n = match
        head = [_text(lab) for lab in labels[: len(labels) - n]]
        out = self._dispatch(reply, q, head, zone, view, rng, self._cap(udp, edns_size))
        self._fit(reply, udp, edns_size)
        return out

    def _cap(self, udp: bool, edns_size: int) -> int:
        """How many answers are worth building: no more can survive `_fit` (an A record is 16 bytes on
        the wire at least), so a 1,000-instance service costs little more than a small one."""
        # One more than can be sent, so that `_fit` still sees that answers were cut.
        if not udp:
            return MAX_TCP_MESSAGE // 16 + 1
        if not edns_size and self.s.udp_answer_limit > 0:
            return min(MAX_UDP_ANSWER_LIMIT, self.s.udp_answer_limit) + 1
        return min(edns_size or MAX_UDP_NO_EDNS, MAX_UDP_DATAGRAM) // 16 + 1

    def zone_of(self, name: str) -> str | None:
        """Our zone `name` is in (domain or alt_domain), None for a name outside them."""
        lower = [x.lower() for x in name.rstrip(".").split(".") if x]
        match = self._match_domain(lower)
        return match[0] if match else None

    def _match_domain(self, lower: list[str]) -> tuple[str, int] | None:
        for zone, dlabels in self._domains:
            n = len(dlabels)
            if len(lower) >= n and tuple(lower[len(lower) - n:]) == dlabels:
                return zone, n
        return None

    def _error(self, reply: DNSRecord, rcode: int) -> Outcome:
        reply.header.rcode = rcode
        reply.header.aa = 0
        return Outcome(reply)

    # ------------------------------------------------------------------ name forms
    def _dispatch(self, reply: DNSRecord, q: DNSQuestion, head: list[str], zone: str, view: CatalogView,
                  rng: Shuffler, cap: int) -> Outcome:
        qtype = q.qtype
        if qtype in (_T_AXFR, _T_IXFR):
            reply.header.rcode = RCODE.NOTIMP
            return Outcome(reply)
        if qtype == _T_SOA:
            reply.add_answer(self._soa(zone, view))
            for rr in self._nameservers(zone, view, reply, additional=True):
                reply.add_auth(rr)
            return Outcome(reply, depends="consul")
        if qtype == _T_NS:
            for rr in self._nameservers(zone, view, reply, additional=True):
                reply.add_answer(rr)
            return Outcome(reply, depends="consul")
        low = [x.lower() for x in head]
        if not low:  # the apex: SOA and NS for ANY, NODATA otherwise
            if qtype == _T_ANY:
                reply.add_answer(self._soa(zone, view))
                for rr in self._nameservers(zone, view, reply, additional=True):
                    reply.add_answer(rr)
                return Outcome(reply, depends="consul")
            return self._nodata(reply, zone, view)
        kind = None
        for i in range(len(low) - 1, -1, -1):
            if low[i] in _KINDS:
                kind, parts, suffixes = low[i], head[:i], low[i + 1:]
                break
            if qtype == _T_SRV and low[i].startswith("_"):
                kind, parts, suffixes = "service", head[: i + 1], low[i + 1:]
                break
        if kind is not None and parts and not self._local(suffixes, view.datacenter):
            remote = self._remote(suffixes)
            if remote and kind in ("service", "connect", "node", "addr", "query"):
                # NXDOMAIN unless the agent reaches that datacenter (then its servers answer instead).
                nx = self._nxdomain(reply, zone, view)
                return Outcome(nx.response, cacheable=False, remote=remote)
        if kind is None or not parts or not self._local(suffixes, view.datacenter):
            return self._nxdomain(reply, zone, view)
        if kind == "service":
            if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
                name, tag = parts[0][1:], parts[1][1:]
                if tag.lower() == "tcp":
                    tag = ""
            else:
                name, tag = parts[-1], ".".join(parts[:-1])
            return self._service(reply, q, name, tag, False, zone, view, rng, cap)
        if kind == "connect":
            return self._service(reply, q, parts[-1], "", True, zone, view, rng, cap)
        if kind == "ingress":
            return self._service(reply, q, parts[-1], "", True, zone, view, rng, cap, ingress=True)
        if kind == "node":
            return self._node(reply, q, ".".join(parts), zone, view)
        if kind == "addr":
            return self._addr(reply, q, parts, zone, view)
        if kind == "query":
            return self._query(reply, q, ".".join(parts), zone, view, rng, cap)
        # Virtual IPs are not in the catalog yet: not found.
        return self._nxdomain(reply, zone, view)

    @staticmethod
    def _local(suffixes: list[str], datacenter: str) -> bool:
        """The labels between the lookup kind and the domain name our datacenter (or are absent)."""
        dc = datacenter.lower()
        if not suffixes:
            return True
        if len(suffixes) == 1:
            return suffixes[0] == dc
        if len(suffixes) % 2:
            return False
        for i in range(0, len(suffixes), 2):
            value, key = suffixes[i], suffixes[i + 1]
            if key == "dc" and value == dc:
                continue
            if key in ("ns", "ap") and value == "default":
                continue
            return False  # another datacenter, a peer, or a non-default namespace/partition
        return True

    @staticmethod
    def _remote(suffixes: list[str]) -> str:
        """The other datacenter the labels after the lookup kind name (`<dc>` or `<dc>.dc`, with
        default namespace/partition labels allowed), or "" when they name no single datacenter."""
        if len(suffixes) == 1:
            return suffixes[0]
        if len(suffixes) % 2:
            return ""
        dc = ""
        for i in range(0, len(suffixes), 2):
            value, key = suffixes[i], suffixes[i + 1]
            if key == "dc" and not dc:
                dc = value
            elif key not in ("ns", "ap") or value != "default":
                return ""
        return dc

    def _soa(self, zone: str, view: CatalogView) -> RR:
        s = self.s
        return RR(zone, _T_SOA, ttl=s.soa_min_ttl,
                  rdata=SOA(f"ns.{zone}", f"hostmaster.{zone}",
                            (view.index() & 0xFFFFFFFF, s.soa_refresh, s.soa_retry, s.soa_expire, s.soa_min_ttl)))

    def _nameservers(self, zone: str, view: CatalogView, reply: DNSRecord, additional: bool) -> list[RR]:
        out = []
        for node in view.nameservers()[:MAX_NAMESERVERS]:
            target = f"{node.name}.node.{view.datacenter}.{zone}".lower()
            out.append(RR(zone, _T_NS, ttl=self.s.node_ttl, rdata=NS(target)))
            if additional:
                ip = _ip(node.address)
                rr = _ip_record(target, ip, _T_ANY, self.s.node_ttl) if ip else None
                if rr is not None:
                    reply.add_ar(rr)
        return out

    def _nxdomain(self, reply: DNSRecord, zone: str, view: CatalogView, depends: str = CATALOG) -> Outcome:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self._soa(zone, view))
        return Outcome(reply, depends=depends)

    def _nodata(self, reply: DNSRecord, zone: str, view: CatalogView, depends: str = CATALOG,
                shuffled: bool = False) -> Outcome:
        reply.add_auth(self._soa(zone, view))
        return Outcome(reply, depends=depends, shuffled=shuffled)

    def _healthy(self, status: str) -> bool:
        return status == PASSING or (status == WARNING and not self.s.only_passing)

    def _service(self, reply: DNSRecord, q: DNSQuestion, name: str, tag: str, connect: bool, zone: str,
                 view: CatalogView, rng: Shuffler, cap: int, ingress: bool = False) -> Outcome:
        depends = CATALOG if connect else name.lower()
        found = view.ingress_instances(name) if ingress else view.service_instances(name, connect)
        instances = [i for i in found if self._healthy(i.status)]
        if tag:
            t = tag.lower()
            instances = [i for i in instances if any(x.lower() == t for x in i.tags)]
        if not instances:
            return self._nxdomain(reply, zone, view, depends)
        shuffled = len(instances) > 1
        if shuffled:
            rng.shuffle(instances)
        return self._instance_records(reply, q, instances, self.s.ttl_for_service(name), zone, view, cap, depends,
                                      shuffled)

    def _query(self, reply: DNSRecord, q: DNSQuestion, name: str, zone: str, view: CatalogView, rng: Shuffler,
               cap: int) -> Outcome:
        """A prepared query's answer (Consul's preparedQueryLookup): its instances, already health-filtered by
        the query's rules, shuffled with the `Near` node first; NXDOMAIN when no query or no instance."""
        found = view.prepared_query(name)
        if found is None or not found.instances:
            nx = self._nxdomain(reply, zone, view)
            if found is not None and found.failover is not None:  # the front runs it elsewhere, then asks again
                return Outcome(nx.response, cacheable=False, failover=found.failover)
            return nx
        instances = list(found.instances)
        shuffled = len(instances) > 1
        if shuffled:
            rng.shuffle(instances)
            near = found.near.lower()
            for i, inst in enumerate(instances[:10]):
                if near and inst.node.lower() == near:
                    instances[0], instances[i] = instances[i], instances[0]
                    break
        ttl = found.ttl if found.ttl is not None else self.s.ttl_for_service(found.service)
        return self._instance_records(reply, q, instances, ttl, zone, view, cap, CATALOG, shuffled)

    def _instance_records(self, reply: DNSRecord, q: DNSQuestion, instances: list[Instance], ttl: int, zone: str,
                          view: CatalogView, cap: int, depends: str, shuffled: bool) -> Outcome:
        qtype = q.qtype
        if qtype == _T_SRV:
            self._srv_records(reply, q, instances, ttl, zone, view, cap)
        elif qtype in (_T_A, _T_AAAA, _T_ANY, _T_CNAME):
            self._address_records(reply, q, instances, ttl, cap)
        if not reply.rr:
            return self._nodata(reply, zone, view, depends, shuffled)
        return Outcome(reply, depends=depends, shuffled=shuffled)

    def _instance_target(self, q: DNSQuestion, inst: Instance, qtype: int
                         ) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None, str]:
        """(how the address is reached, IP or None, hostname) following Consul's nodeServiceRecords:
        kind "node" (the node's IP), "ip" (the service's own IP) or "name" (a hostname to CNAME)."""
        svc_addr = _pick(inst.service_address, inst.service_tagged, qtype)
        node_addr = _pick(inst.node_address, inst.node_tagged, qtype)
        node_ip = _ip(node_addr) if node_addr else None
        if not svc_addr:
            if node_ip is not None:
                return ("node" if node_addr == inst.node_address else "ip"), node_ip, ""
            return "name", None, node_addr
        svc_ip = _ip(svc_addr)
        if svc_ip is not None:
            return "ip", svc_ip, ""
        if svc_addr.rstrip(".").lower() == str(q.qname).rstrip(".").lower() and node_ip is not None:
            return "node", node_ip, ""
        return "name", None, svc_addr

    def _address_records(self, reply: DNSRecord, q: DNSQuestion, instances: list[Instance], ttl: int,
                         cap: int) -> None:
        seen: set[object] = set()
        limit = min(self.s.a_record_limit, cap) if self.s.a_record_limit > 0 else cap
        qtype = q.qtype
        for inst in instances:
            kind, ip, host = self._instance_target(q, inst, qtype)
            if kind == "name":
                key: object = ("cname", host.lower())
                rr = RR(q.qname, _T_CNAME, ttl=ttl, rdata=CNAME(host.rstrip(".") + "."))
            else:
                key = ip
                rr = None if qtype == _T_CNAME else _ip_record(q.qname, ip, qtype, ttl)  # type: ignore[arg-type]
            if rr is None or key in seen:
                continue
            seen.add(key)
            reply.add_answer(rr)
            if 0 < limit <= len(reply.rr):
                break

    def _srv_records(self, reply: DNSRecord, q: DNSQuestion, instances: list[Instance], ttl: int, zone: str,
                     view: CatalogView, cap: int) -> None:
        dc_zone = f"{view.datacenter}.{zone}"
        seen: set[tuple[str, int]] = set()
        extra_seen: set[str] = set()
        for inst in instances:
            kind, ip, host = self._instance_target(q, inst, _T_SRV)
            if kind == "node":
                target = f"{inst.node}.node.{dc_zone}"
            elif kind == "ip":
                target = f"{ip.packed.hex()}.addr.{dc_zone}"  # type: ignore[union-attr]
            else:
                target = host.rstrip(".") + "."
            if (target.lower(), inst.port) in seen:
                continue
            if len(seen) >= cap:
                break
            seen.add((target.lower(), inst.port))
            weight = inst.weight_warning if inst.status == WARNING else inst.weight_passing
            reply.add_answer(RR(q.qname, _T_SRV, ttl=ttl,
                                rdata=SRV(1, min(max(weight, 0), 0xFFFF), inst.port & 0xFFFF, target)))
            if ip is not None and target.lower() not in extra_seen:
                extra_seen.add(target.lower())
                rr = _ip_record(target, ip, _T_SRV, ttl)
                if rr is not None:
                    reply.add_ar(rr)

    def _node(self, reply: DNSRecord, q: DNSQuestion, name: str, zone: str, view: CatalogView) -> Outcome:
        node = view.node(name)
        if node is None:
            return self._nxdomain(reply, zone, view)
        qtype = q.qtype
        ttl = self.s.node_ttl
        if qtype in (_T_A, _T_AAAA, _T_ANY, _T_CNAME):
            addr = _pick(node.address, node.tagged, qtype)
            ip = _ip(addr)
            if ip is None:
                if addr:
                    reply.add_answer(RR(q.qname, _T_CNAME, ttl=ttl, rdata=CNAME(addr.rstrip(".") + ".")))
            elif qtype != _T_CNAME:
                rr = _ip_record(q.qname, ip, qtype, ttl)
                if rr is not None:
                    reply.add_answer(rr)
        if qtype in (_T_TXT, _T_ANY) or (self.s.node_meta_txt and qtype in (_T_A, _T_AAAA)):
            for key in sorted(node.meta):
                rr = RR(q.qname, _T_TXT, ttl=ttl, rdata=_txt(_meta_txt(key, node.meta[key])))
                if qtype in (_T_TXT, _T_ANY):
                    reply.add_answer(rr)
                else:
                    reply.add_ar(rr)
        if not reply.rr:
            return self._nodata(reply, zone, view)
        return Outcome(reply)

    def _addr(self, reply: DNSRecord, q: DNSQuestion, parts: list[str], zone: str, view: CatalogView) -> Outcome:
        raw = None
        if len(parts) == 1 and len(parts[0]) in (8, 32):
            try:
                raw = bytes.fromhex(parts[0])
            except ValueError:
                raw = None
        if raw is None:
            return self._nxdomain(reply, zone, view)
        ip = ipaddress.ip_address(raw)
        rr = _ip_record(q.qname, ip, q.qtype, self.s.node_ttl)
        if rr is not None:
            reply.add_answer(rr)
            return Outcome(reply)
        return self._nodata(reply, zone, view)

    def _ptr(self, reply: DNSRecord, q: DNSQuestion, lower: list[str], view: CatalogView,
             have_recursors: bool) -> Outcome:
        """PTR for addresses the catalog knows (the first node, else the first service, as Consul);
        anything else under .arpa is not ours: relay it, or REFUSED without recursors."""
        addr = None
        if lower[-2] == "in-addr" and len(lower) == 6 and all(x.isdigit() and len(x) <= 3 for x in lower[:4]):
            addr = _ip(".".join(reversed(lower[:4])))
        elif lower[-2] == "ip6" and len(lower) == 34 and all(len(x) == 1 for x in lower[:32]):
            try:
                addr = ipaddress.ip_address(bytes.fromhex("".join(reversed(lower[:32]))))
            except ValueError:
                addr = None
        names = view.names_for_address(str(addr)) if addr is not None else []
        if not names:
            if have_recursors:
                return Outcome(None, recurse=True, cacheable=False)
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return Outcome(reply)
        if q.qtype in (_T_PTR, _T_ANY):
            zone = self._domains[0][0] if self._domains else "mesh."
            kind, name = next(((k, n) for k, n in names if k == "node"), names[0])
            target = f"{name}.{kind}.{view.datacenter}.{zone}"
            reply.add_answer(RR(q.qname, _T_PTR, ttl=0, rdata=PTR(target)))
        return Outcome(reply)

    # ------------------------------------------------------------------ size limits
    def _fit(self, reply: DNSRecord, udp: bool, edns_size: int) -> None:
        """Consul's trimming: over UDP without EDNS0 at most udp_answer_limit answers (TC only with
        enable_truncate); then cut answers (and the additional records only they need) until the
        message fits 512 bytes, the EDNS0 size, or 64 KiB over TCP — TC is set when answers are cut
        for size, since the client would otherwise silently miss records."""
        total = len(reply.rr)
        max_size = (min(edns_size, MAX_UDP_DATAGRAM) if edns_size else MAX_UDP_NO_EDNS) if udp else MAX_TCP_MESSAGE
        srv_extras = bool(reply.ar) and bool(reply.rr) and reply.rr[0].rtype == _T_SRV
        opt = [r for r in reply.ar if r.rtype == _T_OPT]
        extras = [r for r in reply.ar if r.rtype != _T_OPT]
        answers = reply.rr
        if udp and max_size == MAX_UDP_NO_EDNS and self.s.udp_answer_limit > 0:
            keep = min(MAX_UDP_ANSWER_LIMIT, self.s.udp_answer_limit)
            if total > keep:
                answers = answers[:keep]
                if self.s.enable_truncate:
                    reply.header.tc = 1

        def build(n: int, with_extras: bool = True) -> int:
            reply.rr = answers[:n]
            if not with_extras:
                reply.ar = list(opt)
            elif srv_extras:
                targets = {str(rr.rdata.target).lower() for rr in reply.rr}
                reply.ar = [r for r in extras if str(r.rname).lower() in targets] + opt
            else:
                reply.ar = extras + opt
            return len(reply.pack())

        if build(len(answers)) <= max_size:
            return
        reply.auth = []
        if build(len(answers)) <= max_size:
            return
        if not srv_extras and extras and build(len(answers), with_extras=False) <= max_size:
            return
        lo, hi = 0, len(answers)  # largest n that fits: build(lo) fits or lo == 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if build(mid, srv_extras) <= max_size:
                lo = mid
            else:
                hi = mid - 1
        build(lo, srv_extras)
        reply.header.tc = 1

