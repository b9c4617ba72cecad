"""A mesh gateway's counters (pure): connections, where they went (by destination datacenter), bytes both
ways, and those it could not splice (by flag); as JSON for `/stats` and Prometheus text for `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proconsul.connect.proxy.metrics import label_value


@dataclass(slots=True)
class DatacenterTraffic:
    connections: int = 0
    received: int = 0  # bytes from the callers
    sent: int = 0  # bytes back to them


@dataclass(slots=True)
class GatewayCounters:
    service: str
    connections: int = 0  # accepted
    open: int = 0
    routed_local: int = 0
    routed_remote: int = 0
    dial_failures: int = 0  # targets that did not answer (the next one was tried)
    by_datacenter: dict[str, DatacenterTraffic] = field(default_factory=dict)  # closed, spliced connections
    not_routed: dict[str, int] = field(default_factory=dict)  # closed and never spliced, by flag (NR, UH, UF)

    def opened(self) -> None:
        self.connections += 1
        self.open += 1

    def closed(self, datacenter: str, received: int, sent: int, flag: str) -> None:
        """A connection ended: spliced to `datacenter` (flag "-"), or not (flag NR, UH, UF)."""
        self.open -= 1
        if flag != "-":
            self.not_routed[flag] = self.not_routed.get(flag, 0) + 1
            return
        t = self.by_datacenter.get(datacenter)
        if t is None:
            t = self.by_datacenter[datacenter] = DatacenterTraffic()
        t.connections += 1
        t.received += received
        t.sent += sent

    def snapshot(self) -> dict[str, Any]:
        return {"Service": self.service, "Connections": self.connections, "Open": self.open,
                "RoutedLocal": self.routed_local, "RoutedRemote": self.routed_remote,
                "DialFailures": self.dial_failures, "NotRouted": dict(sorted(self.not_routed.items())),
                "Datacenters": {dc: {"Connections": t.connections, "ReceivedBytes": t.received, "SentBytes": t.sent}
                                for dc, t in sorted(self.by_datacenter.items())}}

    def prometheus(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        gw = f'gateway="{label_value(self.service)}"'
        out = [
            "# HELP proconsul_mesh_gateway_connections_total Connections accepted.",
            "# TYPE proconsul_mesh_gateway_connections_total counter",
            f"proconsul_mesh_gateway_connections_total{{{gw}}} {self.connections}",
            "# HELP proconsul_mesh_gateway_connections_active Connections open now.",
            "# TYPE proconsul_mesh_gateway_connections_active gauge",
            f"proconsul_mesh_gateway_connections_active{{{gw}}} {self.open}",
            "# HELP proconsul_mesh_gateway_routed_total Connections spliced, to a sidecar here (local) or to "
            "another datacenter's gateway (remote).",
            "# TYPE proconsul_mesh_gateway_routed_total counter",
            f'proconsul_mesh_gateway_routed_total{{{gw},target="local"}} {self.routed_local}',
            f'proconsul_mesh_gateway_routed_total{{{gw},target="remote"}} {self.routed_remote}',
            "# HELP proconsul_mesh_gateway_dial_failures_total Targets that did not answer (the next was tried).",
            "# TYPE proconsul_mesh_gateway_dial_failures_total counter",
            f"proconsul_mesh_gateway_dial_failures_total{{{gw}}} {self.dial_failures}",
            "# HELP proconsul_mesh_gateway_not_routed_total Connections closed without a target, by flag "
            "(NR no route, UH no healthy target, UF every target refused).",
            "# TYPE proconsul_mesh_gateway_not_routed_total counter",
            *(f'proconsul_mesh_gateway_not_routed_total{{{gw},flag="{label_value(f)}"}} {n}'
              for f, n in sorted(self.not_routed.items())),
        ]
        for name, help_, attr in (("destination_connections_total", "Closed spliced connections, by destination "
                                   "datacenter.", "connections"),
                                  ("received_bytes_total", "Bytes received from callers, by destination datacenter.",
                                   "received"),
                                  ("sent_bytes_total", "Bytes sent back to callers, by destination datacenter.",
                                   "sent")):
            out += [f"# HELP proconsul_mesh_gateway_{name} {help_}", f"# TYPE proconsul_mesh_gateway_{name} counter"]
            out += [f'proconsul_mesh_gateway_{name}{{{gw},destination_datacenter="{label_value(dc)}"}} {getattr(t, attr)}'
                    for dc, t in sorted(self.by_datacenter.items())]
        return "\n".join(out) + "\n"
