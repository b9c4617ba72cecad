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
    tls_min_version: str = "TLSv1_2"  # Consul's names (agent/config/tls_policy.py)
    tls_cipher_suites: str = ""  # OpenSSL's cipher string for TLS 1.2 ("": Python's defaults)

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.verify_outgoing)


ACL_TOKEN_TYPES = ("initial_management", "agent", "default", "replication", "agent_recovery",
                   "config_file_service_registration", "dns")
ACL_TOKEN_ALIASES = {"master": "initial_management", "agent_master": "agent_recovery"}


@dataclass
class ACLConfig:
    """Consul's `acl` block: off unless enabled; a deny default is what production runs."""

    enabled: bool = False
    default_policy: str = "allow"
    down_policy: str = "extend-cache"
    enable_token_persistence: bool = False
    enable_key_list_policy: bool = False
    enable_token_replication: bool = False
    token_ttl: float = 30.0
    policy_ttl: float = 30.0
    role_ttl: float = 30.0
    tokens: dict[str, str] = field(default_factory=dict)


TLS_KEYS = ("ca_file", "cert_file", "key_file", "verify_incoming", "verify_outgoing", "verify_server_hostname",
            "tls_min_version", "tls_cipher_suites")


@dataclass
class AgentConfig:
    dev: bool = False
    server: bool = False
    bootstrap_expect: int = 0
    datacenter: str = "dc1"
    node_name: str = ""
    node_id: str = ""
    data_dir: str = ""
    encrypt: str = ""  # base64 gossip key (checked when read); the keyring file in the data dir wins after the first start
    encrypt_verify_incoming: bool = True
    encrypt_verify_outgoing: bool = True
    disable_keyring_file: bool = False
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
    grpc_tls_port: int = -1
    expose_min_port: int = 21500  # Consul's expose.paths range (accepted; no expose listeners yet)
    expose_max_port: int = 21755
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
    https_tls: TLSSettings = field(default_factory=TLSSettings)  # tls.defaults + tls.https (+ legacy keys)
    acl: ACLConfig = field(default_factory=ACLConfig)
    # Consul's auto_encrypt: `tls` on a client agent (ask the servers for its agent certificate), `allow_tls`
    # on a server (sign them, and accept TLS without a client certificate for that one call).
    auto_encrypt_tls: bool = False
    auto_encrypt_allow_tls: bool = False
    auto_encrypt_dns_san: list[str] = field(default_factory=list)
    auto_encrypt_ip_san: list[str] = field(default_factory=list)
    enable_debug: bool = False  # /v1/agent/debug/* (fault injection for tests and drills)
    translate_wan_addrs: bool = False  # other datacenters' nodes and services at their WAN addresses
    disable_remote_exec: bool = True  # Consul's default: `exec` jobs are not run here unless set to false
    enable_agent_tls_for_checks: bool = False  # checks present the agent's TLS certificate (agent/checks/agent_tls.py)
    http_response_headers: dict[str, str] = field(default_factory=dict)  # http_config.response_headers
    http_block_endpoints: list[str] = field(default_factory=list)  # http_config.block_endpoints
    http_max_conns_per_client: int = 0  # limits.http_max_conns_per_client (0: no limit; Consul's default 200)
    allow_write_http_from: list[str] = field(default_factory=list)  # http_config.allow_write_http_from
    serf_lan_allowed_cidrs: list[str] = field(default_factory=list)  # empty: gossip from anywhere
    serf_wan_allowed_cidrs: list[str] = field(default_factory=list)
    retry_interval: float = 30.0  # between rounds of --retry-join attempts (Consul's default)
    raft_tick: float = 0.1  # Raft timing: elections after 8-16 ticks (0.8-1.6 s) without a leader
    raft_election_ticks: int = 8
    raft_snapshot_threshold: int = 8192  # applied entries between snapshots
    raft_trailing_logs: int = 1024  # entries kept behind a snapshot for slightly slow followers
    config_files: list[str] = field(default_factory=list)
    config_dirs: list[str] = field(default_factory=list)
    hcl: list[str] = field(default_factory=list)  # inline config fragments (-hcl), applied after the files
    config_format: str = ""  # -config-format: read every file as "json" or "hcl" whatever its extension
    # Consul keys honoured as they are read:
    http_addr: str = ""  # addresses.http (default: client_addr)
    https_addr: str = ""  # addresses.https (default: client_addr)
    dns_addr: str = ""  # addresses.dns (default: client_addr)
    advertise_addr_wan: str = ""
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    log_json: bool = False
    log_file: str = ""  # a file (or a directory, as Consul: then proconsul-<time>.log) to log to as well
    log_rotate_bytes: int = 0
    log_rotate_max_files: int = 0
    pid_file: str = ""
    raft_multiplier: int = 1  # performance.raft_multiplier: scales Raft's timing (1 = fastest, Consul's dev)
    reconnect_timeout: float = 72 * 3600.0  # failed members are reaped after this long (minimum 8h)
    reconnect_timeout_wan: float = 72 * 3600.0
    rejoin_after_leave: bool = False
    primary_datacenter: str = ""
    retry_join_wan: list[str] = field(default_factory=list)  # servers of other datacenters to join over the WAN
    retry_interval_wan: float = 30.0
    retry_max: int = 0  # failed retry_join rounds before the agent gives up (0: never)
    retry_max_wan: int = 0
    serf_wan_addr: str = ""  # serf_wan: the WAN pool's bind address (default: bind_addr)
    gossip_lan: dict[str, Any] = field(default_factory=dict)
    gossip_wan: dict[str, Any] = field(default_factory=dict)
    # Network coordinates (Consul's names): each agent sends its coordinate to the servers every
    # max(interval_min, members / rate_target) seconds (plus a random stagger); the leader writes the
    # pending ones every coordinate_update_period, in batches (consul { coordinate { … } }).
    disable_coordinates: bool = False
    sync_coordinate_interval_min: float = 15.0
    sync_coordinate_rate_target: float = 64.0
    coordinate_update_period: float | None = None  # None: 5 s, 100 ms in dev mode (Consul's dev default)
    coordinate_update_batch_size: int = 128
    coordinate_update_max_batches: int = 5
    autopilot: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    check_output_max_size: int = 4096
    discard_check_output: bool = False
    default_query_time: float = 300.0  # a blocking query's wait when ?wait= is not given
    max_query_time: float = 600.0  # the longest ?wait= honoured
    session_ttl_min: float = 10.0
    skip_leave_on_interrupt: bool | None = None  # None: Consul's default — true for servers, false for clients
    serf_lan_addr: str = ""  # serf_lan: the LAN membership bind address (default: bind_addr)
    config_entries: list[dict[str, Any]] = field(default_factory=list)  # config_entries.bootstrap
    ui_content_path: str = "/ui/"  # where the web UI is served (ui_config.content_path, --ui-content-path)
    ui_dir: str = ""
    # ui_config.metrics_provider: "" = the sidecars' own /stats (built in); "prometheus" = Consul's provider
    ui_metrics_provider: str = ""
    ui_metrics_proxy_base_url: str = ""  # ui_config.metrics_proxy: /v1/internal/ui/metrics-proxy/* goes here
    ui_metrics_proxy_add_headers: list[tuple[str, str]] = field(default_factory=list)
    ui_metrics_proxy_path_allowlist: list[str] = field(default_factory=list)  # empty: every path
    # Keys accepted without effect here, each with the reason: printed as one warning line per key at start.
    warnings: list[str] = field(default_factory=list)

    @property
    def http_bind(self) -> str:
        return self.http_addr or self.client_addr

    @property
    def https_bind(self) -> str:
        return self.https_addr or self.client_addr

    @property
    def dns_bind(self) -> str:
        return self.dns_addr or self.client_addr

    @property
    def advertise(self) -> str:
        return self.advertise_addr or (self.bind_addr if self.bind_addr not in ("0.0.0.0", "::") else "127.0.0.1")

    @property
    def intention_default_allow(self) -> bool:
        if self.default_intention_policy:
            return self.default_intention_policy == "allow"
        if self.acl.enabled:  # Consul: with ACLs on, intentions default to the ACL default policy
            return self.acl.default_policy == "allow"
        return True  # Consul's default is allow without ACLs
