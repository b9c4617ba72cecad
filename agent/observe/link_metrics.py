"""Golden metrics per mesh link — request rate, success rate, p99 — from two samples of the proxies' `/stats`.

A proxy's counters only grow, so what happened *lately* is the difference between two samples: the rate
is the count's growth over the seconds between them, the success rate the share of that growth that did
not fail, and p99 is read from the growth of the latency histogram's buckets (interpolated inside the
bucket, as Prometheus' `histogram_quantile` does). Several proxies of one service (its instances) add up.

Pure: samples carry the time they were taken; nothing here reads a clock or a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class StatsFormatError(ValueError):
    """A proxy's `/stats` answer is not the shape `connect/proxy/metrics.py` writes."""


@dataclass(frozen=True, slots=True)
class Counters:
    """One link's cumulative counters in one sample (or their growth: from Prometheus' `increase()`,
    which extrapolates, a growth need not be whole)."""

    connections: float
    failed: float
    refused: float
    requests: float
    answered: float  # HTTP responses of any class
    errors: float  # HTTP 5xx
    latency: tuple[float, ...]  # per bucket, not cumulative; the last is +Inf

    def minus(self, old: Counters) -> Counters | None:
        """The growth since `old`, or None when a counter went down (the proxy restarted)."""
        pairs = ((self.connections, old.connections), (self.failed, old.failed), (self.refused, old.refused),
                 (self.requests, old.requests), (self.answered, old.answered), (self.errors, old.errors))
        if any(new < was for new, was in pairs) or len(self.latency) != len(old.latency) or any(
                new < was for new, was in zip(self.latency, old.latency, strict=True)):
            return None
        return Counters(*(new - was for new, was in pairs),
                        latency=tuple(new - was for new, was in zip(self.latency, old.latency, strict=True)))


@dataclass(frozen=True, slots=True)
class Sample:
    """One proxy's `/stats` at time `at` (seconds on any steady clock), reduced to what the metrics need."""

    at: float
    proxy_id: str
    service: str
    bounds: tuple[float, ...]
    inbound: dict[str, Counters]  # by source service
    upstreams: dict[str, Counters]  # by destination service


@dataclass(frozen=True, slots=True)
class Growth:
    """A link's growth over `seconds` at one proxy."""

    seconds: float
    direction: str  # "inbound" or "upstream"
    delta: Counters
    http: bool  # the link has carried HTTP requests (in this interval or before)


def _counters(link: Any, where: str, buckets: int) -> Counters:
    if not isinstance(link, dict):
        raise StatsFormatError(f"{where} must be an object")
    try:
        responses = link.get("Responses") or {}
        latency = link.get("LatencyCounts") or [0] * buckets
        out = Counters(int(link["Connections"]), int(link["Failed"]), int(link.get("Refused", 0)),
                       int(link.get("Requests", 0)), sum(int(v) for v in responses.values()),
                       int(responses.get("5xx", 0)), tuple(int(c) for c in latency))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StatsFormatError(f"{where}: {e!r}") from None
    if len(out.latency) != buckets:
        raise StatsFormatError(f"{where}.LatencyCounts has {len(out.latency)} buckets, expected {buckets}")
    return out


def parse_stats(stats: Any, at: float) -> Sample:
    """A `Sample` of a proxy's `/stats` JSON taken at `at`."""
    if not isinstance(stats, dict):
        raise StatsFormatError("the answer is not a JSON object")
    try:
        bounds = tuple(float(b) for b in stats.get("LatencyBounds") or ())
    except (TypeError, ValueError):
        raise StatsFormatError("LatencyBounds must be a list of numbers") from None
    links = {}
    for key in ("Inbound", "Upstreams"):
        group = stats.get(key)
        group = {} if group is None else group
        if not isinstance(group, dict):
            raise StatsFormatError(f"{key} must be an object")
        links[key] = {str(peer): _counters(v, f"{key}.{peer}", len(bounds) + 1) for peer, v in group.items()}
    return Sample(at=at, proxy_id=str(stats.get("ProxyID", "")), service=str(stats.get("Service", "")),
                  bounds=bounds, inbound=links["Inbound"], upstreams=links["Upstreams"])


def growth(new: Sample, old: Sample) -> dict[tuple[str, str], Growth]:
    """Each link's growth from `old` to `new` (same proxy), keyed (direction, peer). A link that is new
    in `new` grew from zero; a link whose counters fell (a restart) is left out."""
    seconds = new.at - old.at
    if seconds <= 0 or new.bounds != old.bounds:
        return {}
    out: dict[tuple[str, str], Growth] = {}
    for direction, now, before in (("inbound", new.inbound, old.inbound), ("upstream", new.upstreams, old.upstreams)):
        for peer, counters in now.items():
            was = before.get(peer) or Counters(0, 0, 0, 0, 0, 0, (0,) * len(counters.latency))
            delta = counters.minus(was)
            if delta is not None:
                out[(direction, peer)] = Growth(seconds, direction, delta, http=counters.requests > 0)
    return out


def quantile(q: float, counts: tuple[float, ...], bounds: tuple[float, ...]) -> float | None:
    """The `q` quantile of a histogram (per-bucket counts, the last one +Inf), linearly interpolated inside
    its bucket; None when empty. Observations past the last bound count as the last bound."""
    total = sum(counts)
    if not total or not bounds:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / c
        seen += c
    return bounds[-1]


def golden(parts: list[Growth], bounds: tuple[float, ...]) -> dict[str, Any]:
    """Request rate, success rate and p99 of one link from its growth at each proxy that saw it.

    HTTP links (any request in the interval or before) count requests, success = not answered 5xx;
    TCP links count connections, success = not failed (upstream: could not connect; inbound: the local
    application could not be reached). Rates of several proxies add up; shares and p99 pool their counts."""
    assert parts
    http = any(p.http for p in parts)
    rate = attempts = ok = refused = 0.0
    latency = [0.0] * (len(bounds) + 1)
    for p in parts:
        d = p.delta
        if http:
            count, tried, good = d.requests, d.answered, d.answered - d.errors
        elif p.direction == "upstream":  # connections opened; failures are counted apart
            count = tried = d.connections + d.failed
            good = d.connections
        else:  # inbound: accepted connections, of which `failed` found no local application
            count = tried = d.connections
            good = d.connections - d.failed
        rate += count / p.seconds
        attempts += tried
        ok += max(0, good)
        refused += d.refused
        for i, c in enumerate(d.latency):
            latency[i] += c
    p99 = quantile(0.99, tuple(latency), bounds)
    return {
        "Protocol": "http" if http else "tcp",
        "RequestRate": round(rate, 3),
        "SuccessRate": round(min(1.0, ok / attempts), 4) if attempts > 0 else None,
        "P99Ms": round(p99 * 1000, 3) if p99 is not None else None,
        "Requests": round(attempts),
        "Errors": round(attempts - ok),
        "Refused": round(refused),
        "Window": round(max(p.seconds for p in parts), 2),
        "Proxies": len(parts),
    }


def link_metrics(pairs: list[tuple[Sample, Sample]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-link golden metrics of one service from (newest, reference) samples of each of its proxies:
    `{"Upstreams": {destination: m}, "Downstreams": {source: m}}` (its proxies' inbound links are its
    downstreams)."""
    collected: dict[tuple[str, str], list[Growth]] = {}
    bounds: tuple[float, ...] = ()
    for new, old in pairs:
        bounds = bounds or new.bounds
        if new.bounds != bounds:
            continue  # a proxy of another version: its buckets cannot be pooled with the others'
        for key, g in growth(new, old).items():
            collected.setdefault(key, []).append(g)
    out: dict[str, dict[str, dict[str, Any]]] = {"Upstreams": {}, "Downstreams": {}}
    for (direction, peer), parts in sorted(collected.items()):
        out["Upstreams" if direction == "upstream" else "Downstreams"][peer] = golden(parts, bounds)
    return out


# ---------------------------------------------------------------------- the same figures from Prometheus
# Each query's name, and the proxies' series it sums over the window, by link (connect/proxy/metrics.py).
PROMETHEUS_SERIES = {
    "connections": ("proconsul_proxy_connections_total", ""),
    "failed": ("proconsul_proxy_connections_failed_total", ""),
    "refused": ("proconsul_proxy_connections_refused_total", ""),
    "requests": ("proconsul_proxy_requests_total", ""),
    "answered": ("proconsul_proxy_responses_total", ""),
    "errors": ("proconsul_proxy_responses_total", ',code_class="5xx"'),
    "latency": ("proconsul_proxy_latency_seconds_bucket", ""),
}
LINK_LABELS = "direction, source, destination"


def promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def prometheus_queries(service: str, window: str) -> dict[str, str]:
    """PromQL for each counter's growth over `window` (e.g. "1m") on every link of `service`'s proxies,
    and `ever` (requests since start: an idle HTTP link is still HTTP)."""
    sel = f"service={promql_string(service)}"
    out = {}
    for name, (metric, extra) in PROMETHEUS_SERIES.items():
        by = LINK_LABELS + (", le" if name == "latency" else "")
        out[name] = f"sum by ({by}) (increase({metric}{{{sel}{extra}}}[{window}]))"
    out["ever"] = f"sum by ({LINK_LABELS}) (proconsul_proxy_requests_total{{{sel}}})"
    return out


def from_prometheus(results: dict[str, list[dict[str, Any]]], seconds: float) -> dict[str, dict[str, Any]]:
    """Per-link golden metrics from the answers (`data.result` vectors) to `prometheus_queries`."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    buckets: dict[tuple[str, str], dict[float, float]] = {}

    def key(metric: dict[str, str]) -> tuple[str, str] | None:
        direction = metric.get("direction", "")
        peer = metric.get("destination" if direction == "upstream" else "source", "")
        return (direction, peer) if direction in ("inbound", "upstream") and peer else None

    for name, vector in results.items():
        for item in vector:
            try:
                metric, value = item["metric"], float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                raise StatsFormatError(f"Prometheus answered {name} with an unexpected item: {item!r}") from None
            k = key(metric)
            if k is None or value != value:  # NaN: no samples in the window
                continue
            if name == "latency":
                le = metric.get("le", "")
                buckets.setdefault(k, {})[float("inf") if le == "+Inf" else float(le)] = value
            else:
                values.setdefault(k, {})[name] = value
    bounds = tuple(sorted({le for b in buckets.values() for le in b if le != float("inf")}))
    out: dict[str, dict[str, Any]] = {"Upstreams": {}, "Downstreams": {}}
    for k in sorted(set(values) | set(buckets)):
        v = values.get(k, {})
        cumulative = [buckets.get(k, {}).get(le, 0.0) for le in (*bounds, float("inf"))]
        per_bucket = tuple(max(0.0, c - (cumulative[i - 1] if i else 0.0)) for i, c in enumerate(cumulative))
        delta = Counters(v.get("connections", 0.0), v.get("failed", 0.0), v.get("refused", 0.0),
                         v.get("requests", 0.0), v.get("answered", 0.0), v.get("errors", 0.0), per_bucket)
        g = Growth(seconds, k[0], delta, http=v.get("ever", 0.0) > 0)
        out["Upstreams" if k[0] == "upstream" else "Downstreams"][k[1]] = golden([g], bounds)
    return out
