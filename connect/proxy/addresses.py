"""Where to dial a catalog entry (pure): a service's tagged address (`lan`, `wan`), else its own address,
else its node's. One rule for the sidecars, the mesh gateways and the servers' gateway probes."""

from __future__ import annotations

from typing import Any


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
