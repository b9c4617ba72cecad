"""Where a sidecar proxy serves its admin listener (`/stats`, `/metrics`): one rule, read from the proxy's
registration, used by the proxy that binds it and by the agent that reads its golden metrics for the UI.

1. `Proxy.Config.envoy_prometheus_bind_addr` (Consul's key for the proxy's Prometheus listener), when set;
2. else, for a sidecar whose public port is in Consul's sidecar range 21000–21255, port 19000 + (port − 21000)
   on 127.0.0.1 — the first sidecar gets Envoy's habitual 19000, the next 19001, … so several proxies on one
   host never fight over one port and the agent finds each without configuration;
3. else 127.0.0.1:19000.

Pure: no I/O. A malformed key raises `ProxyConfigError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proconsul.connect.proxy.config import ProxyConfigError

CONFIG_KEY = "envoy_prometheus_bind_addr"
ADMIN_PORT = 19000
SIDECAR_FIRST, SIDECAR_LAST = 21000, 21255
ADMIN_HELP = (f"Metrics/stats listener HOST:PORT, or off (default: Proxy.Config.{CONFIG_KEY}, else 127.0.0.1:19000 "
              "plus the sidecar's offset in 21000-21255).")


@dataclass(frozen=True, slots=True)
class AdminAddress:
    host: str
    port: int
    configured: bool  # named by the registration: binding it must succeed; a default may be skipped

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind(value: Any, field: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`; an empty host means every address) → (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ProxyConfigError(f"{field} {value!r} must be HOST:PORT, for example 127.0.0.1:19000")
    host, _, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ProxyConfigError(f"{field} {value!r}: the port must be a number") from None
    if not 0 < port <= 65535:
        raise ProxyConfigError(f"{field} {value!r}: the port must be 1-65535")
    return host or "0.0.0.0", port


def admin_address(registration: dict[str, Any]) -> AdminAddress:
    """The admin address of a `connect-proxy` registration (`/v1/agent/service/:id` or a catalog row's
    `{"Port": ServicePort, "Proxy": ServiceProxy}`)."""
    proxy = registration.get("Proxy") or {}
    config = (proxy.get("Config") if isinstance(proxy, dict) else None) or {}
    if isinstance(config, dict) and config.get(CONFIG_KEY) not in (None, ""):
        host, port = parse_bind(config[CONFIG_KEY], f"Proxy.Config.{CONFIG_KEY}")
        return AdminAddress(host, port, configured=True)
    public = registration.get("Port")
    if isinstance(public, int) and SIDECAR_FIRST <= public <= SIDECAR_LAST:
        return AdminAddress("127.0.0.1", ADMIN_PORT + public - SIDECAR_FIRST, configured=False)
    return AdminAddress("127.0.0.1", ADMIN_PORT, configured=False)
