"""The agent's metrics under Consul's names (`consul.raft.apply`, `consul.kvs.apply`, `consul.http.GET`, …),
served by `/v1/agent/metrics` as Consul's JSON (Gauges, Counters, Samples) or Prometheus text.

The hot paths only bump counters and add timing samples (a dict update each); gauges — store sizes,
members, Raft state, runtime figures — are read when someone scrapes. `telemetry.metrics_prefix`
(default "consul") and `disable_hostname` are honoured.
"""

from __future__ import annotations

import gc
import resource
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Sample:
    count: int = 0
    sum: float = 0.0
    min: float = float("inf")
    max: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)


@dataclass
class Telemetry:
    """Counters and timing samples (milliseconds) the agent's parts report as they work."""

    counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    samples: dict[str, Sample] = field(default_factory=lambda: defaultdict(Sample))

    def incr(self, name: str, n: float = 1.0) -> None:
        self.counters[name] += n

    def sample(self, name: str, millis: float) -> None:
        self.samples[name].add(millis)


def gauges(agent: Any) -> dict[str, float]:
    """Gauges read at scrape time (names without the prefix)."""
    out: dict[str, float] = {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["runtime.alloc_bytes"] = usage.ru_maxrss * 1024.0
    out["runtime.sys_bytes"] = usage.ru_maxrss * 1024.0
    out["runtime.num_goroutines"] = float(threading.active_count())
    out["runtime.total_gc_runs"] = float(sum(s["collections"] for s in gc.get_stats()))
    out["runtime.cpu_seconds"] = usage.ru_utime + usage.ru_stime
    out["agent.services"] = float(len(agent.local.services()))
    out["agent.checks"] = float(len(agent.local.checks()))
    members = agent.members()
    out["members.clients"] = float(sum(1 for m in members if m["Tags"].get("role") != "consul" and m["Status"] == 1))
    out["members.servers"] = float(sum(1 for m in members if m["Tags"].get("role") == "consul" and m["Status"] == 1))
    if agent.server is not None:
        store = agent.server.store
        out["state.nodes"] = float(store.count("nodes"))
        out["state.services"] = float(store.count("services"))
        out["state.service_instances"] = float(store.count("service_instances"))
        out["state.kv_entries"] = float(store.count("kvs"))
        out["raft.applied_index"] = float(store.last_index)
        out["raft.state.leader"] = 1.0 if agent.is_leader() else 0.0
        out["server.isLeader"] = out["raft.state.leader"]
        out["http.blocking_queries"] = float(agent.server.notifier.waiting)
        raft = agent.cluster.raft
        if raft is not None and raft.core is not None:
            st = raft.stats()
            out["raft.commitIndex"] = float(st["commit_index"])
            out["raft.lastIndex"] = float(st["last_log_index"])
            out["raft.peers"] = float(st["num_peers"] + 1)
            lc = st.get("last_contact")
            out["raft.leader.lastContact"] = 0.0 if st["state"] == "leader" or lc in (None, float("inf")) \
                else lc * 1000.0
    if agent.read_cache is not None:
        out["http.read_cache.hits"] = float(agent.read_cache.hits)
        out["http.read_cache.misses"] = float(agent.read_cache.misses)
    dns = getattr(agent.dns_handler, "stats", None)
    if isinstance(dns, dict):
        for k, v in dns.items():
            out[f"dns.{k}"] = float(v)
    return out


def _labels(agent: Any, extra: dict[str, str] | None = None) -> dict[str, str]:
    return dict(extra or {})


def _prefix(agent: Any) -> str:
    return str(agent.config.telemetry.get("metrics_prefix") or "consul")


def as_json(agent: Any, telemetry: Telemetry) -> dict[str, Any]:
    p = _prefix(agent)
    return {
        "Timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime()),
        "Gauges": [{"Name": f"{p}.{k}", "Value": v, "Labels": {}} for k, v in sorted(gauges(agent).items())],
        "Points": [],
        "Counters": [{"Name": f"{p}.{k}", "Count": int(v), "Rate": v, "Sum": v, "Min": 1, "Max": 1, "Mean": 1,
                      "Stddev": 0, "Labels": {}} for k, v in sorted(telemetry.counters.items())],
        "Samples": [{"Name": f"{p}.{k}", "Count": s.count, "Rate": s.sum / 1000.0, "Sum": s.sum,
                     "Min": s.min if s.count else 0, "Max": s.max, "Mean": s.sum / s.count if s.count else 0,
                     "Stddev": 0, "Labels": {}} for k, s in sorted(telemetry.samples.items())],
    }


def _prom_name(prefix: str, name: str) -> str:
    return (prefix + "_" + name).replace(".", "_").replace("-", "_")


def as_prometheus(agent: Any, telemetry: Telemetry) -> str:
    p = _prefix(agent)
    out: list[str] = []
    for k, v in sorted(gauges(agent).items()):
        n = _prom_name(p, k)
        out += [f"# HELP {n} {k}", f"# TYPE {n} gauge", f"{n} {v:g}"]
    for k, v in sorted(telemetry.counters.items()):
        n = _prom_name(p, k)
        out += [f"# HELP {n} {k}", f"# TYPE {n} counter", f"{n} {v:g}"]
    for k, s in sorted(telemetry.samples.items()):
        n = _prom_name(p, k)
        out += [f"# HELP {n} {k} (milliseconds)", f"# TYPE {n} summary", f"{n}_sum {s.sum:g}", f"{n}_count {s.count}"]
    return "\n".join(out) + "\n"
