"""Golden metrics kept by the proxy: per upstream and per inbound source, counts, success, latency, bytes.

Cheap on the hot path: a counter is an int in a slot, a latency is one bisect into fixed log-spaced
buckets. `/metrics` renders Prometheus text; `/stats` the same as JSON for `proconsul connect
proxy-stats` and the agent, which turns two samples into the UI's per-link rates (with the bucket
counts, so its p99 is of the interval, not of the proxy's lifetime). Label sets are bounded by the
services the proxy talks to.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

# Upper bounds in seconds: 100 µs to ~60 s, growing by 1.5× (34 buckets), plus +Inf.
BOUNDS: tuple[float, ...] = tuple(1e-4 * 1.5 ** i for i in range(34))


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    total: int = 0
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def quantile(self, q: float) -> float:
        """The bucket upper bound below which a share `q` of observations lie (0 when empty)."""
        if not self.total:
            return 0.0
        rank = math.ceil(q * self.total)
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
        return BOUNDS[-1]


@dataclass(slots=True)
class Link:
    """One direction of traffic: inbound from a source service, or outbound to an upstream."""

    connections: int = 0  # accepted / opened
    refused: int = 0  # inbound: denied by intention or bad certificate
    failed: int = 0  # outbound: could not connect (after retries); inbound: local app unreachable
    active: int = 0
    bytes_in: int = 0  # towards the local side (received from the network peer)
    bytes_out: int = 0
    requests: int = 0  # HTTP mode
    responses_2xx: int = 0
    responses_3xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    retries: int = 0
    resumed: int = 0  # connections whose TLS session was resumed (no certificate exchange)
    latency: Histogram = field(default_factory=Histogram)  # HTTP: request time; TCP: connection setup

    def response(self, status: int) -> None:
        if status >= 500:
            self.responses_5xx += 1
        elif status >= 400:
            self.responses_4xx += 1
        elif status >= 300:
            self.responses_3xx += 1
        else:
            self.responses_2xx += 1

    @property
    def success_rate(self) -> float:
        """Share of requests not answered 5xx (HTTP), or of connections not failed (TCP); 1.0 when idle."""
        if self.requests:
            return 1.0 - self.responses_5xx / self.requests
        attempts = self.connections + self.failed
        return 1.0 - self.failed / attempts if attempts else 1.0

    def snapshot(self) -> dict[str, Any]:
        return {"Connections": self.connections, "Refused": self.refused, "Failed": self.failed,
                "Active": self.active, "BytesIn": self.bytes_in, "BytesOut": self.bytes_out,
                "Requests": self.requests, "Responses": {"2xx": self.responses_2xx, "3xx": self.responses_3xx,
                                                         "4xx": self.responses_4xx, "5xx": self.responses_5xx},
                "Retries": self.retries, "TLSResumed": self.resumed, "SuccessRate": round(self.success_rate, 4),
                "LatencyP50": self.latency.quantile(0.50), "LatencyP95": self.latency.quantile(0.95),
                "LatencyP99": self.latency.quantile(0.99), "LatencyCounts": list(self.latency.counts)}


class ProxyMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.inbound: dict[str, Link] = {}  # by source service (or "unknown")
        self.upstreams: dict[str, Link] = {}  # by destination service
        self.handshake_failures: dict[str, int] = {}  # downstream TLS handshakes that failed, by reason

    def inbound_link(self, source: str) -> Link:
        link = self.inbound.get(source)
        if link is None:
            link = self.inbound[source] = Link()
        return link

    def upstream_link(self, destination: str) -> Link:
        link = self.upstreams.get(destination)
        if link is None:
            link = self.upstreams[destination] = Link()
        return link

    def snapshot(self) -> dict[str, Any]:
        return {"Service": self.service, "LatencyBounds": list(BOUNDS),  # LatencyCounts: one more, for +Inf
                "Inbound": {k: v.snapshot() for k, v in sorted(self.inbound.items())},
                "Upstreams": {k: v.snapshot() for k, v in sorted(self.upstreams.items())},
                "TLSHandshakeFailures": dict(sorted(self.handshake_failures.items()))}

    def prometheus(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        out: list[str] = []
        families = [
            ("connections_total", "counter", "Connections accepted (inbound) or opened (upstream).", "connections"),
            ("connections_refused_total", "counter", "Inbound connections refused (intention or certificate).",
             "refused"),
            ("connections_failed_total", "counter", "Connections that could not be made.", "failed"),
            ("connections_active", "gauge", "Connections open now.", "active"),
            ("received_bytes_total", "counter", "Bytes received from the network peer.", "bytes_in"),
            ("sent_bytes_total", "counter", "Bytes sent to the network peer.", "bytes_out"),
            ("requests_total", "counter", "HTTP requests (protocol http).", "requests"),
            ("retries_total", "counter", "Retries made (within the retry budget).", "retries"),
            ("tls_resumed_total", "counter", "Connections whose TLS session was resumed.", "resumed"),
        ]
        links = [("inbound", "source", k, v) for k, v in sorted(self.inbound.items())] + \
                [("upstream", "destination", k, v) for k, v in sorted(self.upstreams.items())]
        for name, kind, help_, attr in families:
            out.append(f"# HELP proconsul_proxy_{name} {help_}")
            out.append(f"# TYPE proconsul_proxy_{name} {kind}")
            for direction, label, peer, link in links:
                out.append(f'proconsul_proxy_{name}{{service="{label_value(self.service)}",direction="{direction}",'
                           f'{label}="{label_value(peer)}"}} {getattr(link, attr)}')
        out.append("# HELP proconsul_proxy_responses_total HTTP responses by status class.")
        out.append("# TYPE proconsul_proxy_responses_total counter")
        for direction, label, peer, link in links:
            for cls in ("2xx", "3xx", "4xx", "5xx"):
                out.append(f'proconsul_proxy_responses_total{{service="{label_value(self.service)}",direction="{direction}",'
                           f'{label}="{label_value(peer)}",code_class="{cls}"}} {getattr(link, "responses_" + cls)}')
        out.append("# HELP proconsul_proxy_tls_handshake_failures_total Downstream TLS handshakes that failed "
                   "(a foreign or missing client certificate, an unknown server name, plain text, a timeout).")
        out.append("# TYPE proconsul_proxy_tls_handshake_failures_total counter")
        for reason, n in sorted(self.handshake_failures.items()):
            out.append(f'proconsul_proxy_tls_handshake_failures_total{{service="{label_value(self.service)}",'
                       f'reason="{label_value(reason)}"}} {n}')
        out.append("# HELP proconsul_proxy_latency_seconds Request time (http) or connection setup time (tcp).")
        out.append("# TYPE proconsul_proxy_latency_seconds histogram")
        for direction, label, peer, link in links:
            base = f'service="{label_value(self.service)}",direction="{direction}",{label}="{label_value(peer)}"'
            cum = 0
            for bound, count in zip(BOUNDS, link.latency.counts, strict=False):
                cum += count
                out.append(f'proconsul_proxy_latency_seconds_bucket{{{base},le="{bound:.6g}"}} {cum}')
            out.append(f'proconsul_proxy_latency_seconds_bucket{{{base},le="+Inf"}} {link.latency.total}')
            out.append(f"proconsul_proxy_latency_seconds_sum{{{base}}} {link.latency.sum:.6f}")
            out.append(f"proconsul_proxy_latency_seconds_count{{{base}}} {link.latency.total}")
        return "\n".join(out) + "\n"


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
