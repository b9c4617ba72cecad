"""k8s-sync's settings: consul-k8s `sync-catalog`'s flags and defaults, plus ours (session TTL, listen address).

Where we differ: `consul_domain` defaults to `mesh` (Proconsul's DNS domain); the namespace allow/deny
defaults are those of consul-k8s's Helm chart (allow `*`, deny kube-system and kube-public), which is how
operators run it; `consul_write_interval` is the period of a full re-check against the catalog (which writes
nothing when nothing differs), while changes themselves are written as soon as they are seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError

NODE_PORT_SYNC_TYPES = ("ExternalOnly", "ExternalFirst", "InternalOnly")
DEFAULT_DENY = ("kube-system", "kube-public")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
DATACENTER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # Consul's datacenter names (a DNS label of the domain)


@dataclass
class Options:
    kubeconfig: str = ""
    kube_context: str = ""
    http_addr: str = ""
    token: str = ""
    to_consul: bool = True
    to_k8s: bool = True
    k8s_default_sync: bool = True
    k8s_source_namespace: str = ""
    allow_k8s_namespaces: list[str] = field(default_factory=list)
    deny_k8s_namespaces: list[str] | None = None  # None: the default deny list
    k8s_write_namespace: str = "default"
    consul_domain: str = "mesh"
    k8s_service_prefix: str = ""
    consul_service_prefix: str = ""
    add_k8s_namespace_suffix: bool = False
    node_port_sync_type: str = "ExternalOnly"
    sync_clusterip_services: bool = True
    sync_lb_services_endpoints: bool = False
    consul_k8s_tag: str = "k8s"
    consul_node_name: str = "k8s-sync"
    consul_write_interval: float = 30.0
    to_k8s_mode: str = "externalname"  # or "endpoints": selector-less ClusterIP Service + EndpointSlices
    to_k8s_datacenter: str = ""  # mirror this (federated) datacenter's catalog into Kubernetes; "" = the agent's own
    session_ttl: str = "15s"
    listen: str = "127.0.0.1:8080"
    log_level: str = "info"
    settle: float = 0.05  # how long to let a burst of changes gather before writing them

    def allowed_namespaces(self) -> set[str]:
        if self.k8s_source_namespace:  # consul-k8s: a source namespace is the only one allowed
            return {self.k8s_source_namespace}
        return set(self.allow_k8s_namespaces or ["*"])

    def denied_namespaces(self) -> set[str]:
        return set(DEFAULT_DENY if self.deny_k8s_namespaces is None else self.deny_k8s_namespaces)

    def validate(self) -> None:
        """Raise ConfigError naming the first flag that cannot be honoured."""
        if not self.to_consul and not self.to_k8s:
            raise ConfigError("nothing to do: --to-consul and --to-k8s are both off")
        if self.node_port_sync_type not in NODE_PORT_SYNC_TYPES:
            raise ConfigError(f"--node-port-sync-type {self.node_port_sync_type!r} must be one of "
                              f"{', '.join(NODE_PORT_SYNC_TYPES)}")
        if not NODE_NAME.match(self.consul_node_name):
            raise ConfigError(f"--consul-node-name {self.consul_node_name!r} must be letters, digits and dashes "
                              "(at most 63), to be found through DNS")
        if not self.consul_k8s_tag.strip():
            raise ConfigError("--consul-k8s-tag must not be empty: it marks which services this syncer owns")
        if self.consul_write_interval <= 0:
            raise ConfigError("--consul-write-interval must be a positive duration")
        if self.to_k8s_mode not in ("externalname", "endpoints"):
            raise ConfigError(f"--to-k8s-mode {self.to_k8s_mode!r} must be externalname or endpoints")
        if self.to_k8s_datacenter and not DATACENTER.match(self.to_k8s_datacenter):
            raise ConfigError(f"--to-k8s-datacenter {self.to_k8s_datacenter!r} must be a datacenter name (letters, "
                              "digits, - and _)")
        host, _, port = self.listen.rpartition(":")
        if self.listen not in ("", "off") and (not host or not port.isdigit()):
            raise ConfigError(f"--listen {self.listen!r} must be HOST:PORT (or off)")
