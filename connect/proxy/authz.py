"""Who may connect: the proxy's local intention decisions (pure).

The proxy keeps the intentions that name its service as destination (a blocking query on the
agent) and decides every new connection here, with no network call: the client certificate's SPIFFE
URI must be a service identity in our trust domain, and the most specific intention decides (or the
default policy). Decisions are cached per URI until the intentions change. An intention with L7
permissions cannot allow a bare connection; in HTTP mode each request is decided with its method,
path and headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proconsul.connect import intentions as ixns
from proconsul.connect.errors import InvalidSpiffeID
from proconsul.connect.spiffe import parse_service

MAX_CACHED = 4096


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    source: str  # the source service name, or the URI when it is not a service identity
    reason: str  # names the deciding intention (or the default policy), Consul's wording


class IntentionPolicy:
    """Intention decisions for connections to one destination service."""

    def __init__(self, destination: str, trust_domain: str, intentions: list[dict[str, Any]],
                 default_allow: bool, *, http: bool = False) -> None:
        self.destination = destination
        self.trust_domain = trust_domain
        self.intentions = ixns.sort_by_precedence(intentions)
        self.default_allow = default_allow
        self.http = http  # the proxy parses HTTP, so L7 permissions can be checked per request
        self._cache: dict[str, Decision] = {}

    def _source(self, uri: str) -> tuple[str | None, Decision | None]:
        try:
            ident = parse_service(uri)
        except InvalidSpiffeID as e:
            return None, Decision(False, uri, f"Client certificate URI is not a service identity: {e}")
        if ident.trust_domain != self.trust_domain:
            return None, Decision(False, uri, f"Identity from an external trust domain ({ident.trust_domain}) "
                                              "is not allowed")
        return ident.service, None

    def connection(self, uri: str) -> Decision:
        """May a client with this certificate URI open a connection at all?"""
        hit = self._cache.get(uri)
        if hit is not None:
            return hit
        source, refused = self._source(uri)
        if refused is None:
            assert source is not None
            allowed, reason = ixns.decide(self.intentions, source, self.destination, self.default_allow)
            if not allowed and self.http and self._has_l7(source):
                # An L7 intention decides per request: the connection may open, each request is checked.
                allowed, reason = True, reason.replace("; its permissions need an HTTP request to decide",
                                                       "; decided per HTTP request")
            decision = Decision(allowed, source, reason)
        else:
            decision = refused
        if len(self._cache) < MAX_CACHED:
            self._cache[uri] = decision
        return decision

    def _has_l7(self, source: str) -> bool:
        ixn = ixns.governing(self.intentions, source, self.destination)
        return bool(ixn and ixn.get("Permissions"))

    def request(self, uri: str, method: str, path: str, headers: dict[str, str]) -> Decision:
        """May this HTTP request from this client pass (L7 intentions)?"""
        source, refused = self._source(uri)
        if refused is not None:
            return refused
        assert source is not None
        allowed, reason = ixns.decide(self.intentions, source, self.destination, self.default_allow,
                                      ixns.Request(path=path, method=method, headers=headers))
        return Decision(allowed, source, reason)

    def needs_requests(self, uri: str) -> bool:
        """Whether connections from this URI must be decided per HTTP request (an L7 intention governs)."""
        source, refused = self._source(uri)
        return self.http and refused is None and source is not None and self._has_l7(source)
