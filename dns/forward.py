"""A client agent's DNS: it has no catalog of its own, so questions in our domains are answered by
a server (over RPC, from the server's replica — Consul's DNS reads are stale by default too), and
other names go to this agent's recursors (REFUSED without any). Same listener interface as
`DNSHandler` (`handle`, `recurse`, `udp_cache`), so the UDP and TCP fronts serve it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from dnslib import RCODE, DNSRecord

from .cache import WireCache
from .server import error_reply, relay_to_recursors

log = logging.getLogger("proconsul.dns")

Forward = Callable[[bytes, bool], Awaitable[bytes | None]]
REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")  # PTR for nodes and services: the server knows them


class ForwardingHandler:
    def __init__(self, domains: list[str], forward: Forward, recursors: list[tuple[str, int]],
                 recursor_timeout: float = 2.0) -> None:
        self.domains = tuple(d.lower().rstrip(".") + "." for d in domains if d)
        self.forward = forward
        self.recursors = recursors
        self.recursor_timeout = recursor_timeout
        self.udp_cache = WireCache()  # stays empty: answers are the server's, never cached here
        self.stats = {"forwarded": 0, "formerr": 0, "dropped": 0, "servfail": 0, "recursed": 0}

    def handle(self, packet: bytes, udp: bool) -> tuple[bytes | None, bool]:
        """Every question is answered asynchronously (`recurse`, which parses it once)."""
        if len(packet) < 12 or packet[2] & 0x80:  # no header, or a response: never answer those
            self.stats["dropped"] += 1
            return None, False
        return None, True

    def _ours(self, name: str) -> bool:
        name = name.lower()
        return any(name == d or name.endswith("." + d) for d in self.domains + REVERSE_ZONES)

    async def recurse(self, packet: bytes, tcp: bool = False) -> bytes | None:
        packet = bytes(packet)
        try:
            name = str(DNSRecord.parse(packet).q.qname)
        except Exception:  # dnslib raises several types on bad input; all of them mean FORMERR
            self.stats["formerr"] += 1
            return error_reply(packet, RCODE.FORMERR)
        if self._ours(name):
            self.stats["forwarded"] += 1
            try:
                answer = await self.forward(packet, not tcp)
            except Exception as e:  # no server reachable: the question is answerable later, so SERVFAIL
                log.warning("DNS: no server answered a forwarded question: %s", e)
                answer = None
            if answer is None:
                self.stats["servfail"] += 1
                return error_reply(packet, RCODE.SERVFAIL)
            return packet[:2] + answer[2:]
        if not self.recursors:
            return error_reply(packet, RCODE.REFUSED)
        self.stats["recursed"] += 1
        return await relay_to_recursors(self.recursors, self.recursor_timeout, packet, tcp)
