"""Prometheus metrics under consul-k8s's names (go-metrics' `consul.sync_catalog.to_consul.register` is
`consul_sync_catalog_to_consul_register` on the wire), plus a few of our own about writes and watches."""

from __future__ import annotations

from dataclasses import dataclass, field

HELP = {
    "consul_sync_catalog_to_consul_register": "Service instances registered to the catalog",
    "consul_sync_catalog_to_consul_deregister": "Service instances deregistered from the catalog",
    "consul_sync_catalog_to_consul_register_error": "Catalog writes (transactions) that failed",
    "consul_sync_catalog_to_consul_deregister_error": "Deregistrations that failed",
    "consul_sync_catalog_to_k8s_register": "Kubernetes objects created or updated from the catalog",
    "consul_sync_catalog_to_k8s_deregister": "Kubernetes objects deleted because their service left the catalog",
    "consul_sync_catalog_to_k8s_error": "Kubernetes writes that failed",
    "proconsul_k8s_sync_txn_total": "Transactions sent to /v1/txn (each is one Raft write)",
    "proconsul_k8s_sync_relist_total": "Full re-lists of a Kubernetes kind (first list, 410 Expired, lost watch)",
}
GAUGE_HELP = {
    "consul_sync_catalog_status": "1 when the agent's HTTP API answers, 0 when it does not",
    "proconsul_k8s_sync_instances": "Catalog instances this syncer wants on its node",
}


@dataclass
class Metrics:
    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HELP, 0.0))
    gauges: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GAUGE_HELP, 0.0))

    def inc(self, name: str, by: float = 1) -> None:
        self.counters[name] += by

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def prometheus(self) -> str:
        lines = []
        for name, value in self.counters.items():
            lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} counter", f"{name} {value:g}"]
        for name, value in self.gauges.items():
            lines += [f"# HELP {name} {GAUGE_HELP[name]}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
