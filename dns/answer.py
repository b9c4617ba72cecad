"""The DNS answering core: a question and a read view of the catalog in, a response out.

Pure: no sockets, no clock, no global state; randomness (Consul's per-response shuffle) comes from
the caller's RNG. Follows Consul's DNS interface with our domain (`mesh.` by default):

    <service>.service[.<dc>].<domain>          A/AAAA/SRV/ANY of healthy instances
    <tag>.<service>.service[.<dc>].<domain>    …filtered by tag
    _<service>._<tag|tcp>.service[.<dc>].<domain>   RFC 2782 SRV form
    <service>.connect[.<dc>].<domain>          the service's Connect-capable instances (sidecars)
    <node>.node[.<dc>].<domain>                A/AAAA of a node
    <hex-ip>.addr.<dc>.<domain>                A/AAAA decoded from hex
    <reversed-ip>.in-addr.arpa / ip6.arpa      PTR of known node and service addresses
    <domain>                                   SOA and NS at the apex
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import AAAA, CNAME, EDNS0, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel, DNSRecord

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
CLASS_IN, CLASS_ANY = 1, 255
MAX_UDP_NO_EDNS = 512
MAX_UDP_EDNS = 4096


@dataclass(frozen=True, slots=True)
class Instance:
    """One service instance as DNS needs it."""

    node: str
    node_address: str
    service_address: str
    port: int
    tags: tuple[str, ...]
    status: str  # worst of the node's and the instance's checks
    weight_passing: int = 1
    weight_warning: int = 1


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: str
    status: str = PASSING


class CatalogView(Protocol):
    """What the answering core reads; the agent provides one over its state store (or a server's)."""

    datacenter: str

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]: ...

    def node(self, name: str) -> Node | None: ...

    def names_for_address(self, address: str) -> list[tuple[str, str]]:
        """(kind, name) pairs — kind "node" or "service" — for every catalog entry with this address."""
        ...


@dataclass
class DNSSettings:
    domain: str = "mesh."
    alt_domain: str = ""
    node_ttl: int = 0
    service_ttl: dict[str, int] = field(default_factory=dict)
    only_passing: bool = False
    a_record_limit: int = 0
    udp_answer_limit: int = 3
    soa_min_ttl: int = 0
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    ns_address: str = "127.0.0.1"

    def ttl_for_service(self, name: str) -> int:
        ttl = self.service_ttl.get(name.lower())
        if ttl is None:
            ttl = self.service_ttl.get("*", 0)
        return ttl


class NotOurs(Exception):
    """The question is outside our domains (a recursor's job)."""


@dataclass(slots=True)
class Outcome:
    response: DNSRecord
    recurse: bool = False  # the caller should relay the question to a recursor


def _labels(name: DNSLabel) -> list[str]:
    return [lab.decode("utf-8", "replace") if isinstance(lab, bytes) else str(lab) for lab in name.label]


class Answerer:
    def __init__(self, settings: DNSSettings) -> None:
        self.s = settings
        self._domains = [d for d in (settings.domain, settings.alt_domain) if d]
        self._domain_labels = [[lab.lower() for lab in d.rstrip(".").split(".") if lab] for d in self._domains]

    # ------------------------------------------------------------------ entry point
    def answer(self, request: DNSRecord, view: CatalogView, rng: random.Random, udp: bool,
               have_recursors: bool) -> Outcome:
        reply = request.reply()
        reply.header.ra = have_recursors
        reply.header.aa = True
        if request.header.opcode != 0:
            reply.header.rcode = RCODE.NOTIMP
            return Outcome(reply)
        if len(request.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            return Outcome(reply)
        q = request.questions[0]
        if q.qclass not in (CLASS_IN, CLASS_ANY):
            reply.header.rcode = RCODE.NOTIMP
            return Outcome(reply)
        labels = _labels(q.qname)
        lower = [lab.lower() for lab in labels]
        domain = self._match_domain(lower)
        if domain is None:
            if lower[-2:] == ["in-addr", "arpa"] or lower[-2:] == ["ip6", "arpa"]:
                if self._ptr(reply, q.qname, lower, view):
                    return Outcome(reply)
            reply.header.aa = False
            if have_recursors:
                return Outcome(reply, recurse=True)
            reply.header.rcode = RCODE.REFUSED
            return Outcome(reply)
        head = labels[: len(labels) - len(self._domain_labels[domain])]
        self._dispatch(reply, q.qname, q.qtype, head, view, rng)
        self._fit(request, reply, udp)
        return Outcome(reply)

    def _match_domain(self, lower: list[str]) -> int | None:
        for i, dl in enumerate(self._domain_labels):
            if len(lower) >= len(dl) and lower[len(lower) - len(dl):] == dl:
                return i
        return None

    # ------------------------------------------------------------------ name forms
    def _dispatch(self, reply: DNSRecord, qname: DNSLabel, qtype: int, head: list[str], view: CatalogView,
                  rng: random.Random) -> None:
        low = [h.lower() for h in head]
        zone = self._zone(qname, len(head))
        if not head:
            return self._apex(reply, qname, qtype, zone)
        # Strip an optional datacenter label after the lookup kind.
        for kind in ("service", "connect", "node", "addr", "query"):
            if kind in low:
                k = low.index(kind)
                rest = low[k + 1:]
                if len(rest) > 1 or (rest and rest[0] != view.datacenter.lower()):
                    return self._nxdomain(reply, zone)
                if kind in ("service", "connect"):
                    return self._service(reply, qname, qtype, head[:k], kind == "connect", view, rng, zone)
                if kind == "node":
                    return self._node(reply, qname, qtype, head[:k], view, zone)
                if kind == "addr":
                    return self._addr(reply, qname, qtype, head[:k], zone)
                return self._nxdomain(reply, zone)  # prepared queries are not supported
        return self._nxdomain(reply, zone)

    def _zone(self, qname: DNSLabel, head_len: int) -> str:
        labels = _labels(qname)[head_len:]
        return ".".join(labels) + "."

    def _apex(self, reply: DNSRecord, qname: DNSLabel, qtype: int, zone: str) -> None:
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            reply.add_answer(self._soa(qname))
        if qtype in (QTYPE.NS, QTYPE.ANY):
            ns = f"ns.{zone}"
            reply.add_answer(RR(qname, QTYPE.NS, rdata=NS(ns), ttl=self.s.node_ttl))
            reply.add_ar(RR(ns, QTYPE.A, rdata=A(self.s.ns_address), ttl=self.s.node_ttl))
        if not reply.rr:
            reply.add_auth(self._soa(zone))

    def _soa(self, zone: DNSLabel | str) -> RR:
        z = str(zone)
        return RR(z, QTYPE.SOA, ttl=self.s.soa_min_ttl,
                  rdata=SOA(f"ns.{z}", f"hostmaster.{z}",
                            (1, self.s.soa_refresh, self.s.soa_retry, self.s.soa_expire, self.s.soa_min_ttl)))

    def _nxdomain(self, reply: DNSRecord, zone: str) -> None:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self._soa(zone))

    def _nodata(self, reply: DNSRecord, zone: str) -> None:
        reply.add_auth(self._soa(zone))

    def _service(self, reply: DNSRecord, qname: DNSLabel, qtype: int, parts: list[str], connect: bool,
                 view: CatalogView, rng: random.Random, zone: str) -> None:
        tag: str | None = None
        if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
            name, tag = parts[0][1:], parts[1][1:]
            if tag.lower() == "tcp":
                tag = None
        elif len(parts) == 2:
            tag, name = parts
        elif len(parts) == 1:
            name = parts[0]
        else:
            return self._nxdomain(reply, zone)
        instances = [i for i in view.service_instances(name, connect) if self._healthy(i.status)]
        if tag is not None:
            t = tag.lower()
            instances = [i for i in instances if any(x.lower() == t for x in i.tags)]
        if not instances:
            return self._nxdomain(reply, zone)
        rng.shuffle(instances)
        ttl = self.s.ttl_for_service(name)
        dc_zone = f"{view.datacenter}.{zone}"
        if qtype == QTYPE.SRV:
            for inst in instances:
                addr = inst.service_address or inst.node_address
                if inst.service_address and inst.service_address != inst.node_address:
                    target = self._addr_name(addr, dc_zone) or f"{inst.node}.node.{dc_zone}"
                else:
                    target = f"{inst.node}.node.{dc_zone}"
                weight = inst.weight_passing if inst.status == PASSING else inst.weight_warning
                reply.add_answer(RR(qname, QTYPE.SRV, ttl=ttl, rdata=SRV(1, max(weight, 1), inst.port, target)))
                for rr in self._address_records(target, addr, QTYPE.ANY, ttl):
                    reply.add_ar(rr)
            return
        if qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY, QTYPE.CNAME):
            seen: set[str] = set()
            for inst in instances:
                addr = inst.service_address or inst.node_address
                if addr in seen:
                    continue
                seen.add(addr)
                for rr in self._address_records(qname, addr, qtype, ttl):
                    reply.add_answer(rr)
            if self.s.a_record_limit > 0:
                reply.rr = reply.rr[: self.s.a_record_limit]
            if not reply.rr:
                self._nodata(reply, zone)
            return
        self._nodata(reply, zone)

    def _healthy(self, status: str) -> bool:
        if status == CRITICAL or status == "maintenance":
            return False
        return not (self.s.only_passing and status == WARNING)

    @staticmethod
    def _addr_name(addr: str, dc_zone: str) -> str | None:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return None
        return f"{ip.packed.hex()}.addr.{dc_zone}"

    @staticmethod
    def _address_records(name: DNSLabel | str, addr: str, qtype: int, ttl: int) -> Iterable[RR]:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            if addr:
                yield RR(name, QTYPE.CNAME, ttl=ttl, rdata=CNAME(addr.rstrip(".") + "."))
            return
        if ip.version == 4 and qtype in (QTYPE.A, QTYPE.ANY):
            yield RR(name, QTYPE.A, ttl=ttl, rdata=A(str(ip)))
        elif ip.version == 6 and qtype in (QTYPE.AAAA, QTYPE.ANY):
            yield RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(ip)))

    def _node(self, reply: DNSRecord, qname: DNSLabel, qtype: int, parts: list[str], view: CatalogView,
              zone: str) -> None:
        if len(parts) != 1:
            return self._nxdomain(reply, zone)
        node = view.node(parts[0])
        if node is None:
            return self._nxdomain(reply, zone)
        for rr in self._address_records(qname, node.address, QTYPE.ANY if qtype == QTYPE.ANY else qtype,
                                        self.s.node_ttl):
            reply.add_answer(rr)
        if not reply.rr:
            self._nodata(reply, zone)

    def _addr(self, reply: DNSRecord, qname: DNSLabel, qtype: int, parts: list[str], zone: str) -> None:
        if len(parts) != 1:
            return self._nxdomain(reply, zone)
        try:
            raw = bytes.fromhex(parts[0])
            ip = ipaddress.ip_address(raw) if len(raw) in (4, 16) else None
        except ValueError:
            ip = None
        if ip is None:
            return self._nxdomain(reply, zone)
        for rr in self._address_records(qname, str(ip), qtype, self.s.node_ttl):
            reply.add_answer(rr)
        if not reply.rr:
            self._nodata(reply, zone)

    def _ptr(self, reply: DNSRecord, qname: DNSLabel, lower: list[str], view: CatalogView) -> bool:
        """PTR for addresses the catalog knows; False means "not ours" (recurse or refuse)."""
        try:
            if lower[-2] == "in-addr":
                octets = lower[:-2]
                if len(octets) != 4:
                    return False
                addr = ".".join(reversed(octets))
            else:
                nibbles = lower[:-2]
                if len(nibbles) != 32:
                    return False
                addr = str(ipaddress.ip_address(bytes.fromhex("".join(reversed(nibbles)))))
            ipaddress.ip_address(addr)
        except ValueError:
            return False
        names = view.names_for_address(addr)
        if not names:
            return False
        zone = f"{view.datacenter}.{self._domains[0]}"
        for kind, name in names:
            target = f"{name}.node.{zone}" if kind == "node" else f"{name}.service.{self._domains[0]}"
            reply.add_answer(RR(qname, QTYPE.PTR, ttl=self.s.node_ttl, rdata=PTR(target)))
        return True

    # ------------------------------------------------------------------ size limits
    def _fit(self, request: DNSRecord, reply: DNSRecord, udp: bool) -> None:
        """Apply UDP size limits (512 without EDNS0, the advertised size with it) and set TC when cut."""
        edns = next((r for r in request.ar if r.rtype == QTYPE.OPT), None)
        if edns is not None:
            reply.add_ar(EDNS0(udp_len=MAX_UDP_EDNS))
        if not udp:
            return
        limit = min(max(edns.rclass, MAX_UDP_NO_EDNS), MAX_UDP_EDNS) if edns is not None else MAX_UDP_NO_EDNS
        if edns is None and self.s.udp_answer_limit > 0 and len(reply.rr) > self.s.udp_answer_limit:
            reply.rr = reply.rr[: self.s.udp_answer_limit]
            reply.header.tc = True
        while len(reply.pack()) > limit:
            if reply.ar and any(r.rtype != QTYPE.OPT for r in reply.ar):
                reply.ar = [r for r in reply.ar if r.rtype == QTYPE.OPT]
                continue
            if not reply.rr:
                break
            reply.rr = reply.rr[:-1]
            reply.header.tc = True
