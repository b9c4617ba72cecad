"""Agent configuration: Consul's key names, from files (JSON and HCL), flags and the environment.

Precedence, lowest first: built-in defaults, dev-mode defaults, config files (in the order given,
a directory's files in lexical order), then command-line flags. Unknown keys are an error that
names the key and the file, as Consul's are: nothing is silently ignored.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proconsul.agent.config.duration import DurationError, parse_duration


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


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _hcl_unwrap(obj: Any) -> Any:
    """python-hcl2 wraps every block in a list; Consul's files mean a single object."""
    if isinstance(obj, dict):
        return {k: _hcl_unwrap(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hcl_unwrap(v) for v in obj]
    if isinstance(obj, str) and len(obj) >= 2 and obj[0] == obj[-1] == '"':
        return obj[1:-1]
    return obj


_BLOCKS = {"service", "check", "ports", "dns_config", "ui_config", "connect", "node_meta", "addresses",
           "performance", "telemetry", "limits"}


def _hcl_single_blocks(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in _BLOCKS and isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict):
            v = v[0]
        out[k] = v
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Read one JSON or HCL config file into a dict of Consul keys."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    elif p.suffix == ".hcl":
        import hcl2

        try:
            data = _hcl_single_blocks(_hcl_unwrap(hcl2.loads(text)))
        except Exception as e:  # python-hcl2 raises lark errors of many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{p}: invalid HCL: {first}") from None
    else:
        raise ConfigError(f"{p}: config files must end in .json or .hcl")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be an object")
    return data


def config_dir_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"config dir {d} is not a directory")
    return sorted(f for f in d.iterdir() if f.suffix in (".json", ".hcl") and f.is_file())


def _bool(key: str, v: Any, src: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ConfigError(f"{src}: {key} must be true or false, got {v!r}")


def _int(key: str, v: Any, src: str) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{src}: {key} must be a number, got {v!r}")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{src}: {key} must be a whole number, got {v!r}") from None


def _dur(key: str, v: Any, src: str) -> float:
    try:
        return parse_duration(v, bare_unit=1.0)
    except DurationError as e:
        raise ConfigError(f"{src}: {key}: {e}") from None


def _str_list(key: str, v: Any, src: str) -> list[str]:
    items = _as_list(v)
    if not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{src}: {key} must be a list of strings")
    return list(items)


def merge_file_data(cfg: AgentConfig, data: dict[str, Any], src: str) -> None:
    """Fold one file's keys into `cfg`; an unknown key or a wrong type raises ConfigError."""
    for key, value in data.items():
        if key == "datacenter":
            cfg.datacenter = str(value).lower()
        elif key == "node_name":
            cfg.node_name = str(value)
        elif key == "node_id":
            cfg.node_id = str(value)
        elif key == "data_dir":
            cfg.data_dir = str(value)
        elif key == "server":
            cfg.server = _bool(key, value, src)
        elif key == "bootstrap_expect":
            cfg.bootstrap_expect = _int(key, value, src)
        elif key == "bootstrap":
            if _bool(key, value, src):
                cfg.bootstrap_expect = 1
        elif key == "bind_addr":
            cfg.bind_addr = str(value)
        elif key == "client_addr":
            cfg.client_addr = str(value)
        elif key == "advertise_addr":
            cfg.advertise_addr = str(value)
        elif key == "ports":
            if not isinstance(value, dict):
                raise ConfigError(f"{src}: ports must be an object")
            for pk, pv in value.items():
                attr = {"http": "http_port", "https": "https_port", "dns": "dns_port", "server": "server_port",
                        "serf_lan": "serf_lan_port", "serf_wan": "serf_wan_port", "grpc": "grpc_port"}.get(pk)
                if attr is None:
                    raise ConfigError(f"{src}: unknown key ports.{pk}")
                setattr(cfg, attr, _int(f"ports.{pk}", pv, src))
        elif key in ("retry_join", "start_join"):
            cfg.retry_join.extend(_str_list(key, value, src))
        elif key == "log_level":
            cfg.log_level = str(value).lower()
        elif key == "enable_script_checks":
            cfg.enable_script_checks = _bool(key, value, src)
        elif key == "enable_local_script_checks":
            cfg.enable_local_script_checks = _bool(key, value, src)
        elif key == "recursors":
            cfg.recursors = _str_list(key, value, src)
        elif key == "domain":
            cfg.domain = str(value).rstrip(".") + "."
        elif key == "alt_domain":
            cfg.alt_domain = str(value).rstrip(".") + "."
        elif key == "dns_config":
            _merge_dns(cfg.dns, value, src)
        elif key == "service":
            for item in _as_list(value):
                cfg.services.append(_check_obj("service", item, src))
        elif key == "services":
            for item in _as_list(value):
                cfg.services.append(_check_obj("services", item, src))
        elif key == "check":
            for item in _as_list(value):
                cfg.checks.append(_check_obj("check", item, src))
        elif key == "checks":
            for item in _as_list(value):
                cfg.checks.append(_check_obj("checks", item, src))
        elif key == "node_meta":
            if not isinstance(value, dict):
                raise ConfigError(f"{src}: node_meta must be an object of strings")
            cfg.node_meta.update({str(k): str(v) for k, v in value.items()})
        elif key == "ui":
            cfg.ui_enabled = _bool(key, value, src)
        elif key == "ui_config":
            if isinstance(value, dict) and "enabled" in value:
                cfg.ui_enabled = _bool("ui_config.enabled", value["enabled"], src)
        elif key == "connect":
            if not isinstance(value, dict):
                raise ConfigError(f"{src}: connect must be an object")
            for ck, cv in value.items():
                if ck == "enabled":
                    cfg.connect_enabled = _bool("connect.enabled", cv, src)
                elif ck == "ca_config":
                    cfg.connect_ca_config = dict(cv)
                elif ck == "ca_provider":
                    if cv != "consul":
                        raise ConfigError(f"{src}: connect.ca_provider {cv!r} is not supported; use \"consul\"")
                else:
                    raise ConfigError(f"{src}: unknown key connect.{ck}")
        elif key == "default_intention_policy":
            if value not in ("allow", "deny"):
                raise ConfigError(f"{src}: default_intention_policy must be \"allow\" or \"deny\"")
            cfg.default_intention_policy = value
        elif key == "check_update_interval":
            cfg.check_update_interval = _dur(key, value, src)
        elif key == "ae_interval":  # Consul's internal knob for the anti-entropy full-sync period
            cfg.sync_interval = _dur(key, value, src)
            if cfg.sync_interval < 1:
                raise ConfigError(f"{src}: ae_interval must be at least 1s")
        elif key in TLS_KEYS:
            _merge_tls(cfg.tls, {key: value}, src, "")
        elif key == "tls":
            if not isinstance(value, dict):
                raise ConfigError(f"{src}: tls must be an object")
            for section in ("defaults", "internal_rpc"):  # internal_rpc wins over defaults
                if section in value:
                    _merge_tls(cfg.tls, value[section], src, f"tls.{section}.")
            for section in value:
                if section not in ("defaults", "internal_rpc"):
                    raise ConfigError(f"{src}: tls.{section} is not supported yet (TLS covers the server port "
                                      "only: use tls.defaults or tls.internal_rpc)")
        elif key in ("raft_snapshot_threshold", "raft_trailing_logs"):
            n = _int(key, value, src)
            if n < 1:
                raise ConfigError(f"{src}: {key} must be at least 1")
            setattr(cfg, key, n)
        elif key == "enable_debug":
            cfg.enable_debug = _bool(key, value, src)
        elif key == "retry_interval":
            cfg.retry_interval = _dur(key, value, src)
        elif key == "leave_on_terminate":
            cfg.leave_on_terminate = _bool(key, value, src)
        elif key in NOT_YET:
            raise ConfigError(f"{src}: {key!r} is not supported yet ({NOT_YET[key]}); remove it to start the agent")
        else:
            raise ConfigError(f"{src}: unknown config key {key!r}")


NOT_YET = {"acl": "no ACL system yet",
           "encrypt": "no gossip encryption yet", "telemetry": "metrics are served at /v1/agent/metrics only",
           "auto_encrypt": "agent certificates are provisioned by hand (proconsul tls cert create)",
           "primary_datacenter": "no federation yet", "retry_join_wan": "no federation yet"}


def _merge_tls(tls: TLSSettings, value: Any, src: str, prefix: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: {prefix.rstrip('.') or 'tls'} must be an object")
    for k, v in value.items():
        if k in ("ca_file", "cert_file", "key_file"):
            if not isinstance(v, str):
                raise ConfigError(f"{src}: {prefix}{k} must be a file path")
            setattr(tls, k, v)
        elif k in ("verify_incoming", "verify_outgoing", "verify_server_hostname"):
            setattr(tls, k, _bool(prefix + k, v, src))
        else:
            raise ConfigError(f"{src}: {prefix}{k} is not supported (known: {', '.join(TLS_KEYS)})")


def _check_obj(key: str, item: Any, src: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConfigError(f"{src}: {key} must be an object (or a list of objects)")
    return item


def _merge_dns(dns: DNSConfig, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: dns_config must be an object")
    for k, v in value.items():
        name = f"dns_config.{k}"
        if k == "node_ttl":
            dns.node_ttl = _dur(name, v, src)
        elif k == "service_ttl":
            if not isinstance(v, dict):
                raise ConfigError(f"{src}: {name} must be an object of service name to duration")
            dns.service_ttl = {str(sk): _dur(f"{name}.{sk}", sv, src) for sk, sv in v.items()}
        elif k in ("only_passing", "allow_stale", "enable_truncate"):
            setattr(dns, k, _bool(name, v, src))
        elif k == "enable_additional_node_meta_txt":
            dns.node_meta_txt = _bool(name, v, src)
        elif k in ("a_record_limit", "udp_answer_limit"):
            setattr(dns, k, _int(name, v, src))
        elif k == "max_stale":
            dns.max_stale = _dur(name, v, src)
        elif k == "recursor_timeout":
            dns.recursor_timeout = _dur(name, v, src)
        elif k == "soa":
            if not isinstance(v, dict):
                raise ConfigError(f"{src}: {name} must be an object")
            for sk, sv in v.items():
                if sk not in ("min_ttl", "refresh", "retry", "expire"):
                    raise ConfigError(f"{src}: unknown key {name}.{sk}")
                setattr(dns, "soa_" + sk, _int(f"{name}.{sk}", sv, src))
        else:
            raise ConfigError(f"{src}: unknown key {name}")


def load_config(files: list[str], dirs: list[str], base: AgentConfig | None = None) -> AgentConfig:
    """Defaults, then each file (a dir's files in lexical order) folded in; flags are applied after."""
    cfg = base or AgentConfig()
    cfg.config_files, cfg.config_dirs = list(files), list(dirs)
    paths: list[Path] = [Path(f) for f in files]
    for d in dirs:
        paths.extend(config_dir_files(d))
    for p in paths:
        merge_file_data(cfg, load_file(p), str(p))
    return cfg


def _persistent_node_id(cfg: AgentConfig) -> str:
    """Outside dev mode the node ID lives in `<data_dir>/node-id`, so a restart keeps its identity
    (its Raft server ID) as Consul's does; a new one is written on first start."""
    if cfg.dev or not cfg.data_dir:
        return str(uuid.uuid4())
    path = Path(cfg.data_dir) / "node-id"
    try:
        text = path.read_text().strip()
        uuid.UUID(text)
        return text
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot use the node ID in {path}: {e}") from None
    node_id = str(uuid.uuid4())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write the node ID to {path}: {e.strerror or e}") from None
    return node_id


def finalize(cfg: AgentConfig) -> AgentConfig:
    """Fill derived defaults and refuse combinations the agent cannot run with."""
    if cfg.dev:
        cfg.server = True
        cfg.bootstrap_expect = cfg.bootstrap_expect or 1
    if cfg.leave_on_terminate is None:
        cfg.leave_on_terminate = not cfg.server
    if not cfg.node_name:
        cfg.node_name = os.uname().nodename.split(".")[0] or "proconsul"
    if not cfg.node_id:
        cfg.node_id = _persistent_node_id(cfg)
    else:
        try:
            uuid.UUID(cfg.node_id)
        except ValueError:
            raise ConfigError(f"node_id {cfg.node_id!r} must be a UUID") from None
    if cfg.log_level not in ("trace", "debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"log_level {cfg.log_level!r} must be one of trace, debug, info, warn, error")
    if not cfg.dev and not cfg.data_dir:
        raise ConfigError("data_dir is required outside dev mode: pass --data-dir DIR (or use --dev)")
    for port_attr in ("http_port", "dns_port", "server_port", "serf_lan_port", "serf_wan_port"):
        port = getattr(cfg, port_attr)
        if not (-1 <= port <= 65535):
            raise ConfigError(f"{port_attr.replace('_port', '')} port {port} is out of range (0-65535, -1 = off)")
    return cfg
