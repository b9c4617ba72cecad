"""SPIFFE identities: `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>` for services and
`spiffe://<trust-domain>/agent/client/dc/<dc>/id/<node-id>` for agents. Trust domains are
`<cluster-uuid>.mesh`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InvalidSpiffeID

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class ServiceID:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"


@dataclass(frozen=True, slots=True)
class AgentID:
    trust_domain: str
    datacenter: str
    node_id: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/agent/client/dc/{self.datacenter}/id/{self.node_id}"


def trust_domain_for(cluster_id: str) -> str:
    return f"{cluster_id}.mesh"


def _check(part: str, what: str, uri: str) -> str:
    if not part or not _LABEL.match(part):
        raise InvalidSpiffeID(f"SPIFFE ID {uri!r}: {what} {part!r} is empty or has characters a name cannot have")
    return part


def parse(uri: str) -> ServiceID | AgentID:
    """Parse a service or agent SPIFFE ID; anything else raises InvalidSpiffeID saying what is wrong."""
    if not isinstance(uri, str) or not uri:
        raise InvalidSpiffeID("SPIFFE ID is empty")
    parts = urlsplit(uri)
    if parts.scheme != "spiffe":
        raise InvalidSpiffeID(f"SPIFFE ID {uri!r}: scheme must be spiffe://")
    if parts.query or parts.fragment or parts.port is not None or parts.username:
        raise InvalidSpiffeID(f"SPIFFE ID {uri!r}: must not have a port, user, query or fragment")
    trust_domain = _check(parts.hostname or "", "trust domain", uri)
    segs = parts.path.split("/")[1:]
    if len(segs) == 6 and segs[0] == "ns" and segs[2] == "dc" and segs[4] == "svc":
        return ServiceID(trust_domain, _check(segs[1], "namespace", uri), _check(segs[3], "datacenter", uri),
                         _check(segs[5], "service", uri))
    if len(segs) == 6 and segs[:2] == ["agent", "client"] and segs[2] == "dc" and segs[4] == "id":
        return AgentID(trust_domain, _check(segs[3], "datacenter", uri), _check(segs[5], "node id", uri))
    raise InvalidSpiffeID(f"SPIFFE ID {uri!r}: path must be /ns/<ns>/dc/<dc>/svc/<service> "
                          "or /agent/client/dc/<dc>/id/<node-id>")


def parse_service(uri: str) -> ServiceID:
    sid = parse(uri)
    if not isinstance(sid, ServiceID):
        raise InvalidSpiffeID(f"SPIFFE ID {uri!r} is an agent identity, not a service")
    return sid
