"""`Connect.SidecarService`: a service definition that brings its own sidecar proxy registration.

Consul's defaults (the parent is the service that embeds the block): ID `<parent-id>-sidecar-proxy`
(fixed), Name `<parent-name>-sidecar-proxy`, the parent's Tags and Meta, Kind `connect-proxy`
(fixed), a Port from `sidecar_min_port`..`sidecar_max_port` (21000–21255) not used by another
sidecar of this agent, `Proxy.DestinationServiceName/ID` the parent, `LocalServiceAddress`
127.0.0.1 and `LocalServicePort` the parent's port, and two checks — TCP on the proxy's public
port ("Connect Sidecar Listening") and an alias of the parent ("Connect Sidecar Aliasing <id>") —
unless the block gives its own. Pure: the caller passes the ports in use.
"""

from __future__ import annotations

from typing import Any

from proconsul.agent.local.definitions import (
    DefinitionError,
    check_definition,
    proxy_block,
    service_definition,
)

SUFFIX = "-sidecar-proxy"


class NoSidecarPort(DefinitionError):
    """Every port of the sidecar range is taken by another sidecar on this agent."""


def sidecar_id(parent_id: str) -> str:
    return parent_id + SUFFIX


def is_sidecar_of(svc: dict[str, Any], parent_id: str) -> bool:
    """Whether a registered service row is the sidecar a parent's SidecarService registered."""
    return (svc.get("ID") == sidecar_id(parent_id) and svc.get("Kind") == "connect-proxy"
            and (svc.get("Proxy") or {}).get("DestinationServiceID") == parent_id)


def free_port(used: set[int], lo: int, hi: int) -> int:
    for port in range(lo, hi + 1):
        if port not in used:
            return port
    raise NoSidecarPort(f"no free sidecar port left in {lo}-{hi} (sidecar_min_port..sidecar_max_port): "
                        "give the sidecar_service a port, or widen the range")


def expand(parent: dict[str, Any], *, used_ports: set[int], min_port: int, max_port: int,
           current_port: int | None = None) -> dict[str, Any] | None:
    """The sidecar's normalized service definition, or None when the parent has no SidecarService.

    `current_port` is the port of the sidecar already registered for this parent (a re-registration
    keeps it); `used_ports` are the ports of the agent's other sidecars.
    """
    raw = (parent.get("Connect") or {}).get("SidecarService")
    if raw is None:
        return None
    what = f"Service {parent['ID']!r}: Connect.SidecarService"
    if not isinstance(raw, dict):
        raise DefinitionError(f"{what} must be an object")
    given = dict(raw)
    for fixed in ("ID", "id", "Kind", "kind"):
        if given.get(fixed):
            raise DefinitionError(f"{what}.{fixed.capitalize()} cannot be set: the sidecar's "
                                  f"{'ID' if fixed.lower() == 'id' else 'Kind'} is fixed")
    given.setdefault("Name", parent["Name"] + SUFFIX)
    sc = service_definition(given, what)
    port = sc.get("Port")
    if not port:
        port = current_port or free_port(used_ports, min_port, max_port)
    proxy = proxy_block(sc.get("Proxy") or {}, f"{what}.Proxy")
    proxy.update({"DestinationServiceName": parent["Name"], "DestinationServiceID": parent["ID"]})
    proxy["LocalServiceAddress"] = proxy.get("LocalServiceAddress") or "127.0.0.1"
    proxy["LocalServicePort"] = proxy.get("LocalServicePort") or parent.get("Port") or 0
    sc.update({
        "ID": sidecar_id(parent["ID"]),
        "Kind": "connect-proxy",
        "Port": port,
        "Proxy": proxy,
        "Tags": sc["Tags"] if sc.get("Tags") is not None else list(parent.get("Tags") or []),
        "Meta": sc["Meta"] if sc.get("Meta") is not None else dict(parent.get("Meta") or {}),
    })
    if not sc["Checks"]:
        address = sc.get("Address") or "127.0.0.1"
        sc["Checks"] = [
            check_definition({"Name": "Connect Sidecar Listening", "TCP": f"{address}:{port}", "Interval": "10s"},
                             f"{what} default check"),
            check_definition({"Name": f"Connect Sidecar Aliasing {parent['ID']}", "AliasService": parent["ID"]},
                             f"{what} default check"),
        ]
    return sc
