"""Where to dial a catalog entry (pure): a service's tagged address (`lan`, `wan`), else its own address,
else its node's; and which entries may be sent to at all, and how much (`weight`, `dialable`). One rule for
the sidecars, the gateways and the servers' gateway probes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

MAX_WEIGHT = 128  # Envoy's limit, as Consul clamps it


def weight(svc: dict[str, Any], checks: list[dict[str, Any]], only_passing: bool) -> int:
    """An instance's load-balancing weight as Consul gives it to its proxies, 0 for one not to send to: any
    critical check (maintenance included) leaves it out, a warning one too with OnlyPassing. Otherwise its
    `Weights.Passing` (1 without Weights), or `Weights.Warning` when a check warns; a weight below 1 leaves
    it out (Warning 0 is how an operator says "no traffic while warning"), one above 128 counts as 128."""
    statuses = {c.get("Status") for c in checks}
    if "critical" in statuses or (only_passing and "warning" in statuses):
        return 0
    weights = svc.get("Weights") or {}
    w = weights.get("Warning" if "warning" in statuses and weights else "Passing", 1)
    w = w if isinstance(w, int) and not isinstance(w, bool) else 1
    return min(w, MAX_WEIGHT) if w >= 1 else 0


def dialable(entries: Iterable[dict[str, Any]], only_passing: bool = False
             ) -> Iterator[tuple[dict[str, Any], dict[str, Any], str, int]]:
    """(node, service, address, weight) of each health entry `{Node, Service, Checks}` that has an address
    (the service's, else its node's) and a port, and a `weight` above 0."""
    for e in entries:
        node, svc = e.get("Node") or {}, e.get("Service") or {}
        address = svc.get("Address") or node.get("Address") or ""
        if address and svc.get("Port"):
            w = weight(svc, e.get("Checks") or [], only_passing)
            if w:
                yield node, svc, address, w


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
