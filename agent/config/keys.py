"""Consul's config keys: what each top-level key of a config file does to the AgentConfig.

One entry per key in `KEYS`; a key the table does not know is an error naming the key and the file
(nothing is silently ignored). Nested blocks (ports, connect, tls, dns_config) check their own keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proconsul.agent.config.model import TLS_KEYS, AgentConfig, ConfigError, DNSConfig, TLSSettings
from proconsul.agent.config.values import (
    as_bool,
    as_duration,
    as_int,
    as_list,
    as_object,
    as_str_list,
)

# (config, key, value, source file) -> None; raises ConfigError naming the key and file.
Setter = Callable[[AgentConfig, str, Any, str], None]


def _set(attr: str, convert: Callable[[str, Any, str], Any]) -> Setter:
    def setter(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
        setattr(cfg, attr, convert(key, value, src))
    return setter


def _text(key: str, value: Any, src: str) -> str:
    return str(value)


def _lower(key: str, value: Any, src: str) -> str:
    return str(value).lower()


def _fqdn(key: str, value: Any, src: str) -> str:
    return str(value).rstrip(".") + "."


def _bootstrap(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if as_bool(key, value, src):
        cfg.bootstrap_expect = 1


PORTS = {"http": "http_port", "https": "https_port", "dns": "dns_port", "server": "server_port",
         "serf_lan": "serf_lan_port", "serf_wan": "serf_wan_port", "grpc": "grpc_port",
         "sidecar_min_port": "sidecar_min_port", "sidecar_max_port": "sidecar_max_port"}


def _ports(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: ports must be an object")
    for pk, pv in value.items():
        attr = PORTS.get(pk)
        if attr is None:
            raise ConfigError(f"{src}: unknown key ports.{pk}")
        setattr(cfg, attr, as_int(f"ports.{pk}", pv, src))


def _join(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.retry_join.extend(as_str_list(key, value, src))


def _services(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.services.extend(as_object(key, item, src) for item in as_list(value))


def _checks(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.checks.extend(as_object(key, item, src) for item in as_list(value))


def _node_meta(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: node_meta must be an object of strings")
    cfg.node_meta.update({str(k): str(v) for k, v in value.items()})


def _ui_config(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if isinstance(value, dict) and "enabled" in value:
        cfg.ui_enabled = as_bool("ui_config.enabled", value["enabled"], src)


def _connect(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: connect must be an object")
    for ck, cv in value.items():
        if ck == "enabled":
            cfg.connect_enabled = as_bool("connect.enabled", cv, src)
        elif ck == "ca_config":
            cfg.connect_ca_config = dict(cv)
        elif ck == "ca_provider":
            if cv != "consul":
                raise ConfigError(f"{src}: connect.ca_provider {cv!r} is not supported; use \"consul\"")
        else:
            raise ConfigError(f"{src}: unknown key connect.{ck}")


def _default_intention_policy(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if value not in ("allow", "deny"):
        raise ConfigError(f"{src}: default_intention_policy must be \"allow\" or \"deny\"")
    cfg.default_intention_policy = value


def _ae_interval(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    # Consul's internal knob for the anti-entropy full-sync period
    cfg.sync_interval = as_duration(key, value, src)
    if cfg.sync_interval < 1:
        raise ConfigError(f"{src}: ae_interval must be at least 1s")


def _legacy_tls(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    _merge_tls(cfg.tls, {key: value}, src, "")


def _tls(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: tls must be an object")
    for section in ("defaults", "internal_rpc"):  # internal_rpc wins over defaults
        if section in value:
            _merge_tls(cfg.tls, value[section], src, f"tls.{section}.")
    for section in value:
        if section not in ("defaults", "internal_rpc"):
            raise ConfigError(f"{src}: tls.{section} is not supported yet (TLS covers the server port "
                              "only: use tls.defaults or tls.internal_rpc)")


def _at_least_one(key: str, value: Any, src: str) -> int:
    n = as_int(key, value, src)
    if n < 1:
        raise ConfigError(f"{src}: {key} must be at least 1")
    return n


def _dns_config(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    _merge_dns(cfg.dns, value, src)


KEYS: dict[str, Setter] = {
    "datacenter": _set("datacenter", _lower),
    "node_name": _set("node_name", _text),
    "node_id": _set("node_id", _text),
    "data_dir": _set("data_dir", _text),
    "server": _set("server", as_bool),
    "bootstrap_expect": _set("bootstrap_expect", as_int),
    "bootstrap": _bootstrap,
    "bind_addr": _set("bind_addr", _text),
    "client_addr": _set("client_addr", _text),
    "advertise_addr": _set("advertise_addr", _text),
    "ports": _ports,
    "retry_join": _join,
    "start_join": _join,
    "log_level": _set("log_level", _lower),
    "enable_script_checks": _set("enable_script_checks", as_bool),
    "enable_local_script_checks": _set("enable_local_script_checks", as_bool),
    "recursors": _set("recursors", as_str_list),
    "domain": _set("domain", _fqdn),
    "alt_domain": _set("alt_domain", _fqdn),
    "dns_config": _dns_config,
    "service": _services,
    "services": _services,
    "check": _checks,
    "checks": _checks,
    "node_meta": _node_meta,
    "ui": _set("ui_enabled", as_bool),
    "ui_config": _ui_config,
    "connect": _connect,
    "default_intention_policy": _default_intention_policy,
    "check_update_interval": _set("check_update_interval", as_duration),
    "ae_interval": _ae_interval,
    **{k: _legacy_tls for k in TLS_KEYS},
    "tls": _tls,
    "raft_snapshot_threshold": _set("raft_snapshot_threshold", _at_least_one),
    "raft_trailing_logs": _set("raft_trailing_logs", _at_least_one),
    "enable_debug": _set("enable_debug", as_bool),
    "retry_interval": _set("retry_interval", as_duration),
    "leave_on_terminate": _set("leave_on_terminate", as_bool),
}


def merge_file_data(cfg: AgentConfig, data: dict[str, Any], src: str) -> None:
    """Fold one file's keys into `cfg`; an unknown key or a wrong type raises ConfigError."""
    for key, value in data.items():
        setter = KEYS.get(key)
        if setter is not None:
            setter(cfg, key, value, src)
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
            setattr(tls, k, as_bool(prefix + k, v, src))
        else:
            raise ConfigError(f"{src}: {prefix}{k} is not supported (known: {', '.join(TLS_KEYS)})")


def _merge_dns(dns: DNSConfig, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: dns_config must be an object")
    for k, v in value.items():
        name = f"dns_config.{k}"
        if k == "node_ttl":
            dns.node_ttl = as_duration(name, v, src)
        elif k == "service_ttl":
            if not isinstance(v, dict):
                raise ConfigError(f"{src}: {name} must be an object of service name to duration")
            dns.service_ttl = {str(sk): as_duration(f"{name}.{sk}", sv, src) for sk, sv in v.items()}
        elif k in ("only_passing", "allow_stale", "enable_truncate"):
            setattr(dns, k, as_bool(name, v, src))
        elif k == "enable_additional_node_meta_txt":
            dns.node_meta_txt = as_bool(name, v, src)
        elif k in ("a_record_limit", "udp_answer_limit"):
            setattr(dns, k, as_int(name, v, src))
        elif k == "max_stale":
            dns.max_stale = as_duration(name, v, src)
        elif k == "recursor_timeout":
            dns.recursor_timeout = as_duration(name, v, src)
        elif k == "soa":
            if not isinstance(v, dict):
                raise ConfigError(f"{src}: {name} must be an object")
            for sk, sv in v.items():
                if sk not in ("min_ttl", "refresh", "retry", "expire"):
                    raise ConfigError(f"{src}: unknown key {name}.{sk}")
                setattr(dns, "soa_" + sk, as_int(f"{name}.{sk}", sv, src))
        else:
            raise ConfigError(f"{src}: unknown key {name}")
