"""The agent's configuration as data: defaults are Consul's (with our DNS domain), one dataclass per block."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message names the key (and file) and the fix."""


@dataclass
class DNSConfig:
    node_ttl: float = 0.0
    service_ttl: dict[str, float] = field(default_factory=dict)
    only_passing: bool = False
    allow_stale: bool = True
    a_record_limit: int = 0
    udp_answer_limit: int = 3
    enable_truncate: bool = False
    node_meta_txt: bool = True  # enable_additional_node_meta_txt
    soa_min_ttl: int = 0
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    recursor_timeout: float = 2.0
    max_stale: float = 10 * 365 * 86400.0


@dataclass
class TLSSettings:
    """TLS for the server port (Raft and RPC): Consul's `tls.internal_rpc` / legacy top-level keys."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.verify_outgoing)


TLS_KEYS = ("ca_file", "cert_file", "key_file", "verify_incoming", "verify_outgoing", "verify_server_hostname")


@dataclass
class AgentConfig:
    dev: bool = False
    server: bool = False
    bootstrap_expect: int = 0
    datacenter: str = "dc1"
    node_name: str = ""
    node_id: str = ""
    data_dir: str = ""
    bind_addr: str = "127.0.0.1"
    client_addr: str = "127.0.0.1"
    advertise_addr: str = ""
    http_port: int = 8500
    https_port: int = -1
    dns_port: int = 8600
    server_port: int = 8300
    serf_lan_port: int = 8301
    serf_wan_port: int = 8302
    grpc_port: int = -1
    sidecar_min_port: int = 21000  # Connect sidecar_service ports are taken from this range
    sidecar_max_port: int = 21255
    retry_join: list[str] = field(default_factory=list)
    log_level: str = "info"
    enable_script_checks: bool = False
    enable_local_script_checks: bool = False
    recursors: list[str] = field(default_factory=list)
    domain: str = "mesh."
    alt_domain: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    services: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    node_meta: dict[str, str] = field(default_factory=dict)
    ui_enabled: bool = True
    connect_enabled: bool = True
    connect_ca_config: dict[str, Any] = field(default_factory=dict)
    default_intention_policy: str = ""
    check_update_interval: float = 300.0
    sync_interval: float = 60.0
    leave_on_terminate: bool | None = None  # None: Consul's default — true for clients, false for servers
    tls: TLSSettings = field(default_factory=TLSSettings)
    enable_debug: bool = False  # /v1/agent/debug/* (fault injection for tests and drills)
    retry_interval: float = 30.0  # between rounds of --retry-join attempts (Consul's default)
    gossip_interval: float = 1.0  # LAN push-pull period
    suspect_after: float = 5.0  # a member whose heartbeat stalls this long is failed
    raft_tick: float = 0.1  # Raft timing: elections after 8-16 ticks (0.8-1.6 s) without a leader
    raft_election_ticks: int = 8
    raft_snapshot_threshold: int = 8192  # applied entries between snapshots
    raft_trailing_logs: int = 1024  # entries kept behind a snapshot for slightly slow followers
    config_files: list[str] = field(default_factory=list)
    config_dirs: list[str] = field(default_factory=list)

    @property
    def advertise(self) -> str:
        return self.advertise_addr or (self.bind_addr if self.bind_addr not in ("0.0.0.0", "::") else "127.0.0.1")

    @property
    def intention_default_allow(self) -> bool:
        if self.default_intention_policy:
            return self.default_intention_policy == "allow"
        return True  # no ACLs yet: Consul's default is allow without ACLs
