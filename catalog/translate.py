"""WAN address translation (`translate_wan_addrs`), pure: the addresses an agent gives for nodes and services
of *another* datacenter, as Consul's agent rewrites them.

With the setting on, a node's `Address` becomes its `TaggedAddresses.wan` (and the IPv4/IPv6 choices its
`wan_ipv4`/`wan_ipv6`), a service's `Address` and `Port` its `TaggedAddresses.wan` ones. Which of the
default, IPv4 and IPv6 candidates is given depends on what the caller accepts: DNS accepts an IPv4 address
(or a name) for A, an IPv6 one for AAAA; the HTTP API accepts anything, and, as Consul's, prefers an IPv6
candidate, then an IPv4 one, then the default. Rows of our own datacenter are never translated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADER = "X-Consul-Translate-Addresses"  # "true" on every answer of an agent that translates

ACCEPT_DOMAIN = 1
ACCEPT_IPV4 = 2
ACCEPT_IPV6 = 4
ACCEPT_ANY = ACCEPT_DOMAIN | ACCEPT_IPV4 | ACCEPT_IPV6

# The paths whose answers Consul translates, by how their body is shaped.
NODES = "nodes"  # [{Node, Address, TaggedAddresses, ...}]
SERVICE_NODES = "service-nodes"  # [{Address, TaggedAddresses, ServiceAddress, ServiceTaggedAddresses, ...}]
CHECK_SERVICE_NODES = "check-service-nodes"  # [{Node: {...}, Service: {...}, Checks}]
NODE_SERVICES = "node-services"  # {Node: {...}, Services: {id: {...}} or [{...}]}
QUERY_RESULT = "query-result"  # {Datacenter, Nodes: check-service-nodes, ...}
_SHAPES = (("/v1/catalog/nodes", NODES), ("/v1/catalog/service/", SERVICE_NODES),
           ("/v1/catalog/connect/", SERVICE_NODES), ("/v1/catalog/node/", NODE_SERVICES),
           ("/v1/catalog/node-services/", NODE_SERVICES), ("/v1/health/service/", CHECK_SERVICE_NODES),
           ("/v1/health/connect/", CHECK_SERVICE_NODES), ("/v1/health/ingress/", CHECK_SERVICE_NODES))


def shape_of(path: str) -> str:
    """The body shape of a translated endpoint's answer, or "" for an endpoint Consul does not translate."""
    if path.startswith("/v1/query/") and path.endswith("/execute"):
        return QUERY_RESULT
    return next((shape for prefix, shape in _SHAPES if path.startswith(prefix)), "")


def _choose(accept: int, default: str, v4: str, v6: str) -> str:
    """Consul's order: an accepted IPv6 candidate, then an accepted IPv4 one, then the default."""
    if accept & ACCEPT_IPV6 and v6:
        return v6
    if accept & ACCEPT_IPV4 and v4:
        return v4
    return default


def node_candidates(address: str, tagged: Mapping[str, str]) -> tuple[str, str, str]:
    """(default, IPv4, IPv6) addresses of a node as seen from another datacenter: each `wan` tagged one it
    has, else what it is here (`Address`, `lan_ipv4`, `lan_ipv6`)."""
    return (tagged["wan"] if "wan" in tagged else address,
            tagged["wan_ipv4"] if "wan_ipv4" in tagged else tagged.get("lan_ipv4", ""),
            tagged["wan_ipv6"] if "wan_ipv6" in tagged else tagged.get("lan_ipv6", ""))


def node_address(address: str, tagged: Mapping[str, str], accept: int) -> str:
    """A node's address as seen from another datacenter."""
    return _choose(accept, *node_candidates(address, tagged))


def _tag_address(tagged: Mapping[str, Any], tag: str) -> str | None:
    v = tagged.get(tag)
    if v is None:
        return None
    return str(v.get("Address") or "") if isinstance(v, dict) else str(v)


def service_candidates(address: str, tagged: Mapping[str, Any]) -> tuple[str, str, str]:
    """(default, IPv4, IPv6) addresses of a service as seen from another datacenter (its tagged addresses
    are {Address, Port} objects)."""
    wan, wan4, wan6 = (_tag_address(tagged, t) for t in ("wan", "wan_ipv4", "wan_ipv6"))
    return (address if wan is None else wan,
            (_tag_address(tagged, "lan_ipv4") or "") if wan4 is None else wan4,
            (_tag_address(tagged, "lan_ipv6") or "") if wan6 is None else wan6)


def service_address(address: str, tagged: Mapping[str, Any], accept: int) -> str:
    """A service's address as seen from another datacenter."""
    return _choose(accept, *service_candidates(address, tagged))


def service_port(port: int, tagged: Mapping[str, Any]) -> int:
    """A service's port as seen from another datacenter: its `wan` tagged port when that is set."""
    wan = tagged.get("wan")
    wan_port = int(wan.get("Port") or 0) if isinstance(wan, dict) else 0
    return wan_port or port


def _node(row: dict[str, Any], accept: int) -> None:
    row["Address"] = node_address(str(row.get("Address") or ""), row.get("TaggedAddresses") or {}, accept)


def _service(svc: dict[str, Any], accept: int) -> None:
    tagged = svc.get("TaggedAddresses") or {}
    svc["Address"] = service_address(str(svc.get("Address") or ""), tagged, accept)
    svc["Port"] = service_port(int(svc.get("Port") or 0), tagged)


def translate_body(shape: str, body: Any, accept: int = ACCEPT_ANY) -> Any:
    """`body` (an answer about another datacenter, of `shape`) with its addresses translated, in place."""
    if shape == QUERY_RESULT and isinstance(body, dict):
        translate_body(CHECK_SERVICE_NODES, body.get("Nodes"), accept)
    elif shape == NODES and isinstance(body, list):
        for row in body:
            _node(row, accept)
    elif shape == SERVICE_NODES and isinstance(body, list):
        for row in body:
            _node(row, accept)
            tagged = row.get("ServiceTaggedAddresses") or {}
            row["ServiceAddress"] = service_address(str(row.get("ServiceAddress") or ""), tagged, accept)
            row["ServicePort"] = service_port(int(row.get("ServicePort") or 0), tagged)
    elif shape == CHECK_SERVICE_NODES and isinstance(body, list):
        for row in body:
            _node(row.get("Node") or {}, accept)
            _service(row.get("Service") or {}, accept)
    elif shape == NODE_SERVICES and isinstance(body, dict):
        if isinstance(body.get("Node"), dict):
            _node(body["Node"], accept)
        services = body.get("Services") or {}
        for svc in services.values() if isinstance(services, dict) else services:
            _service(svc, accept)
    return body
