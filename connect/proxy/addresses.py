"""Where to dial a catalog entry (pure): a service's tagged address (`lan`, `wan`), else its own address,
else its node's; and which entries may be sent to at all (`healthy`, `dialable`). One rule for the sidecars,
the gateways and the servers' gateway probes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def healthy(checks: list[dict[str, Any]], only_passing: bool) -> bool:
    """Envoy's view of an instance's checks as Consul gives it: any critical one (maintenance included) makes
    it unhealthy; a warning one too only with OnlyPassing."""
    statuses = {c.get("Status") for c in checks}
    return "critical" not in statuses and not (only_passing and "warning" in statuses)


def dialable(entries: Iterable[dict[str, Any]], only_passing: bool = False
             ) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    """(node, service, address) of each health entry `{Node, Service, Checks}` that has an address (the
    service's, else its node's) and a port, and whose checks are `healthy`."""
    for e in entries:
        node, svc = e.get("Node") or {}, e.get("Service") or {}
        address = svc.get("Address") or node.get("Address") or ""
        if address and svc.get("Port") and healthy(e.get("Checks") or [], only_passing):
            yield node, svc, address


def tagged_address(entry: dict[str, Any], tag: str) -> tuple[str, int] | None:
    """(address, port) of a health entry `{Node, Service}` by its `TaggedAddresses[tag]`, falling back to
    the service's address and port, then the node's address; None when either is missing."""
    node, svc = entry.get("Node") or {}, entry.get("Service") or {}
    tagged = (svc.get("TaggedAddresses") or {}).get(tag) or {} if tag else {}
    address = tagged.get("Address") or svc.get("Address") or node.get("Address") or ""
    port = int(tagged.get("Port") or svc.get("Port") or 0)
    return (address, port) if address and port else None


def mesh_gateway_address(entry: dict[str, Any], *, local: bool) -> tuple[str, int] | None:
    """A mesh gateway's address for traffic from here: `lan` in our datacenter, `wan` from another; None
    for an entry that is not a mesh gateway."""
    if (entry.get("Service") or {}).get("Kind") != "mesh-gateway":
        return None
    return tagged_address(entry, "lan" if local else "wan")
