"""Access-log lines at the gateways that are not built on the sidecar's runtime (terminating and mesh).

They follow `proxy-defaults` AccessLogs as sidecars do (a blocking query on the entry) and write one line per
connection when it closes, with the sidecar's L4 record (`listeners.connection_record`: Envoy's TCP fields) and
the response flags Envoy would give: `NR` no route (a server name the gateway does not serve, not a TLS
ClientHello, or closed before one: Envoy's listener-level lines, which `DisableListenerLogs` leaves out), `UH`
no healthy instance, `UF` every instance refused the connection. A caller an intention denies
has `response_code_details` `rbac_access_denied_matched_policy[none]` (Envoy has no response flag for the RBAC
network filter; this is what it records as the connection's termination details). The ingress gateway is the
proxy core itself and logs through its runtime.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proconsul.connect.proxy.accesslog import (
    AccessLog,
    follow,
    handshake_failure_record,
    wants_listener_lines,
)
from proconsul.connect.proxy.agent_api import AgentAPI
from proconsul.connect.proxy.listeners import connection_record

DENIED = "rbac_access_denied_matched_policy[none]"


def peer_address(transport: Any) -> str:
    """The caller's `address:port` (read when the connection opens: a closed transport may not know it)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""


class GatewayAccessLog:
    """proxy-defaults' AccessLogs for one gateway process: `watch` follows the entry, `connection` writes."""

    def __init__(self) -> None:
        self.log: AccessLog | None = None

    async def watch(self, api: AgentAPI, stop: asyncio.Event) -> None:
        await api.watch("/v1/config/proxy-defaults", {}, self.apply, stop)

    def apply(self, rows: list[dict[str, Any]] | None) -> None:
        """The proxy-defaults entries (the `global` one's AccessLogs)."""
        entry = next((r for r in rows or [] if r.get("Name") == "global"), None)
        self.log = follow(self.log, (entry or {}).get("AccessLogs") or None)

    def connection(self, started: float, *, received: int, sent: int, peer: str, cluster: str, service: str,
                   host: str = "", peer_uri: str = "", flag: str = "-", details: str = "",
                   listener: bool = False) -> None:
        """One closed connection (`started`: time.monotonic() when it was accepted). `listener`: refused before
        it reached a service (Envoy's listener-level log), left out when AccessLogs has DisableListenerLogs."""
        if self.log is None or (listener and self.log.settings.get("DisableListenerLogs")):
            return
        rec = connection_record(started, received, sent, None, cluster, service, host, peer_uri=peer_uri,
                                flag=flag)
        rec["downstream_remote_address"] = peer
        if details:
            rec["response_code_details"] = details
        self.log.connection(rec)

    def handshake_failed(self, started: float, peer: str, reason: str, cluster: str, service: str,
                         flag: str = "-") -> None:
        """A caller whose TLS handshake failed (listener-level: left out with DisableListenerLogs)."""
        if wants_listener_lines(self.log):
            self.log.connection(handshake_failure_record(started, peer, reason, cluster, service,  # type: ignore[union-attr]
                                                         flag))

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
