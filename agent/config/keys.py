"""Consul's config keys: what each top-level key of a config file does to the AgentConfig.

Every key Consul documents is known here: most are honoured (`KEYS`); those that have no effect in
Proconsul are accepted with one warning line naming the key and why (`NO_EFFECT`); those that cannot
be honoured safely — a TLS or security setting, a listener that does not exist, federation that is not
built — stop the agent with one line (`REFUSED`), because nothing may fall back to plaintext or "off"
silently. A key no table knows is an error naming the key and the file. Nested blocks (ports,
addresses, connect, tls, dns_config, performance, …) check their own keys the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proconsul.agent.cluster import autopilot
from proconsul.agent.config import tls_policy
from proconsul.agent.config.model import (
    ACL_TOKEN_ALIASES,
    ACL_TOKEN_TYPES,
    TLS_KEYS,
    AgentConfig,
    ConfigError,
    TLSSettings,
)
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
         "serf_lan": "serf_lan_port", "serf_wan": "serf_wan_port", "grpc": "grpc_port", "grpc_tls": "grpc_tls_port",
         "sidecar_min_port": "sidecar_min_port", "sidecar_max_port": "sidecar_max_port",
         "expose_min_port": "expose_min_port", "expose_max_port": "expose_max_port"}


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


def _join_wan(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.retry_join_wan.extend(as_str_list(key, value, src))


def _services(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.services.extend(as_object(key, item, src) for item in as_list(value))


def _checks(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.checks.extend(as_object(key, item, src) for item in as_list(value))


def _node_meta(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: node_meta must be an object of strings")
    cfg.node_meta.update({str(k): str(v) for k, v in value.items()})


UI_METRICS_PROVIDERS = ("", "prometheus")
PROMETHEUS_PATHS = ["/api/v1/query", "/api/v1/query_range"]  # Consul's path_allowlist for prometheus


def _ui_config(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: ui_config must be an object (enabled, content_path, metrics_provider, "
                          "metrics_proxy)")
    for uk, uv in value.items():
        if uk == "enabled":
            cfg.ui_enabled = as_bool("ui_config.enabled", uv, src)
        elif uk == "content_path":
            _ui_content_path(cfg, "ui_config.content_path", uv, src)
        elif uk == "metrics_provider":
            if uv not in UI_METRICS_PROVIDERS:
                raise ConfigError(f"{src}: ui_config.metrics_provider {uv!r}: use \"prometheus\", or leave it out "
                                  "for the sidecars' own metrics (custom providers are not supported)")
            cfg.ui_metrics_provider = uv
            if uv == "prometheus" and not cfg.ui_metrics_proxy_path_allowlist:
                cfg.ui_metrics_proxy_path_allowlist = list(PROMETHEUS_PATHS)
        elif uk == "metrics_proxy":
            _metrics_proxy(cfg, uv, src)
        else:
            raise ConfigError(f"{src}: unknown or unsupported key ui_config.{uk} (supported: enabled, content_path, "
                              "metrics_provider, metrics_proxy)")


def _metrics_proxy(cfg: AgentConfig, value: Any, src: str) -> None:
    from urllib.parse import urlsplit

    if not isinstance(value, dict):
        raise ConfigError(f"{src}: ui_config.metrics_proxy must be an object (base_url, add_headers, path_allowlist)")
    for mk, mv in value.items():
        key = f"ui_config.metrics_proxy.{mk}"
        if mk == "base_url":
            url = urlsplit(mv) if isinstance(mv, str) else None
            if url is None or url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(f"{src}: {key} {mv!r} must be an http:// or https:// URL, for example "
                                  "\"http://127.0.0.1:9090\"")
            cfg.ui_metrics_proxy_base_url = mv.rstrip("/")
        elif mk == "add_headers":
            headers = []
            for h in as_list(mv):
                if not isinstance(h, dict) or not isinstance(h.get("name"), str) or not h["name"] or \
                        not isinstance(h.get("value", ""), str) or set(h) - {"name", "value"}:
                    raise ConfigError(f"{src}: {key} must be a list of {{name, value}} objects, got {h!r}")
                headers.append((h["name"], h.get("value", "")))
            cfg.ui_metrics_proxy_add_headers = headers
        elif mk == "path_allowlist":
            paths = as_str_list(key, mv, src)
            bad = [p for p in paths if not p.startswith("/")]
            if bad:
                raise ConfigError(f"{src}: {key}: {bad[0]!r} must be an absolute path such as \"/api/v1/query\"")
            cfg.ui_metrics_proxy_path_allowlist = paths
        else:
            raise ConfigError(f"{src}: unknown key {key} (supported: base_url, add_headers, path_allowlist)")


def _ui_content_path(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    from proconsul.ui.assets import UIContentError, normalize_content_path

    if not isinstance(value, str):
        raise ConfigError(f"{src}: {key} must be a URL path such as \"/ui/\", got {value!r}")
    try:
        cfg.ui_content_path = normalize_content_path(value)
    except UIContentError as e:
        raise ConfigError(f"{src}: {e}") from None


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
    """Consul's older top-level TLS keys apply to every listener: the server port and HTTPS."""
    _merge_tls(cfg.tls, {key: value}, src, "")
    if key in ("ca_file", "cert_file", "key_file", "verify_incoming", "tls_min_version", "tls_cipher_suites"):
        _merge_tls(cfg.https_tls, {key: value}, src, "")


def _tls(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: tls must be an object")
    for section in ("defaults", "internal_rpc"):  # internal_rpc wins over defaults
        if section in value:
            _merge_tls(cfg.tls, value[section], src, f"tls.{section}.")
    for section in ("defaults", "https"):  # and https wins over defaults for the HTTPS listener
        if section in value:
            _merge_tls(cfg.https_tls, value[section], src, f"tls.{section}.")
    for section in value:
        if section == "grpc":
            _warn(cfg, src, "tls.grpc", "there is no gRPC listener")
        elif section not in ("defaults", "internal_rpc", "https"):
            raise ConfigError(f"{src}: unknown key tls.{section} (known: defaults, internal_rpc, https, grpc)")


def _at_least_zero(key: str, value: Any, src: str) -> int:
    n = as_int(key, value, src)
    if n < 0:
        raise ConfigError(f"{src}: {key} must be 0 (no limit) or more")
    return n


def _at_least_one(key: str, value: Any, src: str) -> int:
    n = as_int(key, value, src)
    if n < 1:
        raise ConfigError(f"{src}: {key} must be at least 1")
    return n


def _cidrs(key: str, value: Any, src: str) -> list[str]:
    """A list of networks in CIDR form (an address alone is its /32 or /128)."""
    import ipaddress

    cidrs = as_str_list(key, value, src)
    for c in cidrs:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ConfigError(f"{src}: {key}: {c!r} is not a CIDR such as 127.0.0.0/8") from None
    return cidrs


def _limits(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Consul's `limits`: `http_max_conns_per_client` is enforced; the RPC rate limits are accepted with a
    warning (agents' RPCs are not rate limited)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: limits must be an object")
    for k, v in value.items():
        if k == "http_max_conns_per_client":
            cfg.http_max_conns_per_client = _at_least_zero(f"limits.{k}", v, src)
        else:
            _warn(cfg, src, f"limits.{k}", "RPC and request rate limits are not enforced")


def _http_config(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Consul's `http_config`: `response_headers` (on every API and UI answer), `block_endpoints` (path
    prefixes answered 403), `allow_write_http_from` (CIDRs allowed to write); `use_cache` and
    `max_header_bytes` are accepted with a warning."""

    if not isinstance(value, dict):
        raise ConfigError(f"{src}: http_config must be an object")
    for k, v in value.items():
        where = f"http_config.{k}"
        if k == "response_headers":
            if not isinstance(v, dict) or not all(isinstance(x, str) and isinstance(y, str | int | float)
                                                  for x, y in v.items()):
                raise ConfigError(f"{src}: {where} must map header names to values")
            for name, text in v.items():
                if not name or any(c in name for c in " :\r\n") or any(c in str(text) for c in "\r\n"):
                    raise ConfigError(f"{src}: {where}: {name!r} is not a valid header (name or value)")
                cfg.http_response_headers[name] = str(text)
        elif k == "block_endpoints":
            prefixes = as_str_list(where, v, src)
            if any(not p.startswith("/") for p in prefixes):
                raise ConfigError(f"{src}: {where} lists path prefixes such as \"/v1/acl\"")
            cfg.http_block_endpoints = prefixes
        elif k == "allow_write_http_from":
            cfg.allow_write_http_from = _cidrs(where, v, src)
        elif k in ("use_cache", "max_header_bytes"):
            _warn(cfg, src, where, "the agent has no HTTP cache to switch, and aiohttp's header limits apply")
        else:
            raise ConfigError(f"{src}: unknown key {where} (known: response_headers, block_endpoints, "
                              "allow_write_http_from, use_cache, max_header_bytes)")


def _dns_config(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    _merge_dns(cfg, value, src)


def _warn(cfg: AgentConfig, src: str, key: str, why: str) -> None:
    cfg.warnings.append(f"{src}: {key} has no effect in Proconsul ({why}); accepted and ignored")


def _no_effect(why: str) -> Setter:
    def setter(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
        _warn(cfg, src, key, why)
    return setter


def _refused(why: str, allow: Callable[[Any], bool] = lambda v: False) -> Setter:
    """A key Proconsul cannot honour: an error, unless its value asks for nothing (`allow`)."""
    def setter(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
        if not allow(value):
            raise ConfigError(f"{src}: {key} cannot be honoured: {why}; remove it to start the agent")
    return setter


def _encrypt(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """The gossip key: checked here, so a malformed one stops the agent with one line naming it."""
    from proconsul.membership.keyring import KeyringError, decode_key

    if value in ("", None):
        return
    try:
        decode_key(value if isinstance(value, str) else repr(value), key)
    except KeyringError as e:
        raise ConfigError(f"{src}: {e}") from None
    cfg.encrypt = value.strip()


def _silently(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Keys whose Consul meaning is already what Proconsul does (e.g. there is no update check to disable)."""


def _off(value: Any) -> bool:
    """A block or flag that enables nothing: false, or an object whose `enabled` is false (or absent)."""
    if isinstance(value, bool) or value in ("false", "true"):
        return value in (False, "false")
    if isinstance(value, dict):
        return value.get("enabled", False) in (False, "false") and not value.get("allow_tls")
    return not value


def _addresses(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: addresses must be an object")
    for k, v in value.items():
        if k == "http":
            cfg.http_addr = str(v)
        elif k == "dns":
            cfg.dns_addr = str(v)
        elif k == "https":
            cfg.https_addr = str(v)
        elif k in ("grpc", "grpc_tls"):
            _warn(cfg, src, f"addresses.{k}", f"there is no {k} listener")
        else:
            raise ConfigError(f"{src}: unknown key addresses.{k}")


def _positive(convert: Callable[[str, Any, str], Any]) -> Callable[[str, Any, str], Any]:
    def check(key: str, value: Any, src: str) -> Any:
        v = convert(key, value, src)
        if not v > 0:
            raise ConfigError(f"{src}: {key} must be positive, got {value!r}")
        return v
    return check


def _as_float(key: str, v: Any, src: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ConfigError(f"{src}: {key} must be a number, got {v!r}")
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"{src}: {key} must be a number, got {v!r}") from None


_COORDINATE_KEYS: dict[str, tuple[str, Callable[[str, Any, str], Any]]] = {
    "update_period": ("coordinate_update_period", _positive(as_duration)),
    "update_batch_size": ("coordinate_update_batch_size", _positive(as_int)),
    "update_max_batches": ("coordinate_update_max_batches", _positive(as_int)),
}


def _consul_block(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Consul's internal `consul { … }` block: `coordinate { update_period, update_batch_size,
    update_max_batches }` is honoured (the leader's coordinate batching); the rest has no effect here."""
    for k, v in as_object(key, value, src).items():
        if k != "coordinate":
            _warn(cfg, src, f"consul.{k}", "Consul's internal timing knobs")
            continue
        for ck, cv in as_object("consul.coordinate", v, src).items():
            if ck not in _COORDINATE_KEYS:
                raise ConfigError(f"{src}: unknown key consul.coordinate.{ck} (known: {', '.join(_COORDINATE_KEYS)})")
            attr, convert = _COORDINATE_KEYS[ck]
            setattr(cfg, attr, convert(f"consul.coordinate.{ck}", cv, src))


def _advertise_v4(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not cfg.advertise_addr:
        cfg.advertise_addr = str(value)


def _advertise_wan(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if key == "advertise_addr_wan" or not cfg.advertise_addr_wan:
        cfg.advertise_addr_wan = str(value)


def _tagged_addresses(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: tagged_addresses must be an object of strings")
    cfg.tagged_addresses.update({str(k): str(v) for k, v in value.items()})


def _performance(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: performance must be an object")
    for k, v in value.items():
        if k == "raft_multiplier":
            n = as_int("performance.raft_multiplier", v, src)
            if not 1 <= n <= 10:
                raise ConfigError(f"{src}: performance.raft_multiplier must be between 1 and 10, got {n}")
            cfg.raft_multiplier = n
        elif k in ("leave_drain_time", "rpc_hold_timeout", "grpc_keepalive_interval", "grpc_keepalive_timeout"):
            _warn(cfg, src, f"performance.{k}", "leaving and RPC retries are timed by Proconsul itself")
        else:
            raise ConfigError(f"{src}: unknown key performance.{k}")


def _reconnect(attr: str) -> Setter:
    def setter(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
        seconds = as_duration(key, value, src)
        if seconds < 8 * 3600:
            raise ConfigError(f"{src}: {key} must be at least 8h (Consul's minimum), got {value!r}")
        setattr(cfg, attr, seconds)
    return setter


def _raft_protocol(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if as_int(key, value, src) != 3:
        raise ConfigError(f"{src}: raft_protocol {value!r} is not supported: only 3 (Consul's default)")


def _primary_datacenter(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.primary_datacenter = str(value).lower()


def _keep_dict(attr: str) -> Setter:
    def setter(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {key} must be an object")
        getattr(cfg, attr).update(value)
    return setter


def _autopilot(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: autopilot must be an object")
    merged = {**cfg.autopilot, **value}
    try:
        autopilot.checked({"".join(p[:1].upper() + p[1:] for p in k.split("_")): v for k, v in merged.items()})
    except autopilot.InvalidSetting as e:
        raise ConfigError(f"{src}: autopilot: {e}") from None
    cfg.autopilot.update(value)


def _telemetry(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: telemetry must be an object")
    honoured = {"prometheus_retention_time", "disable_hostname", "metrics_prefix", "disable_compat_1.9"}
    for k in value:
        if k not in honoured:
            _warn(cfg, src, f"telemetry.{k}", "metrics are served at /v1/agent/metrics (JSON or Prometheus) only")
    cfg.telemetry.update(value)


def _verify_incoming_rpc(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.tls.verify_incoming = as_bool(key, value, src)


def _verify_incoming_https(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    cfg.https_tls.verify_incoming = as_bool(key, value, src)


def _log_rotate_duration(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    as_duration(key, value, src)
    _warn(cfg, src, key, "log files rotate by size (log_rotate_bytes), not by time")


def _watches(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if value:
        raise ConfigError(f"{src}: watches cannot be honoured: agent-run watch handlers are not supported; run "
                          "`proconsul watch -type … <handler>` instead, and remove them to start the agent")


def _config_entries(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: config_entries must be an object with a bootstrap list")
    for k, v in value.items():
        if k != "bootstrap":
            raise ConfigError(f"{src}: unknown key config_entries.{k}")
        for i, entry in enumerate(as_list(v)):
            if not isinstance(entry, dict) or not entry.get("kind", entry.get("Kind")):
                raise ConfigError(f"{src}: config_entries.bootstrap[{i}] must be a config entry with a kind")
            cfg.config_entries.append(entry)


ACL_POLICIES = ("allow", "deny")
ACL_DOWN_POLICIES = ("allow", "deny", "extend-cache", "async-cache")


def _auto_encrypt(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Consul's `auto_encrypt { tls, allow_tls, dns_san, ip_san }` (which side may use which is checked once
    the whole configuration is read)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: auto_encrypt must be an object (tls = true on clients, allow_tls = true on "
                          "servers)")
    for k, v in value.items():
        if k in ("tls", "allow_tls"):
            setattr(cfg, f"auto_encrypt_{k}", as_bool(f"auto_encrypt.{k}", v, src))
        elif k in ("dns_san", "ip_san"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{src}: auto_encrypt.{k} must be a list of strings")
            setattr(cfg, f"auto_encrypt_{k}", list(v))
        else:
            raise ConfigError(f"{src}: unknown key auto_encrypt.{k} (tls, allow_tls, dns_san, ip_san)")


def _acl(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Consul's `acl` block: enabled, default_policy, down_policy, token TTLs, persistence, tokens."""
    if isinstance(value, bool) or value in ("false", "true"):  # `acl = false` turns nothing on
        cfg.acl.enabled = value in (True, "true")
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: acl must be an object (enabled, default_policy, down_policy, tokens, …)")
    acl = cfg.acl
    for k, v in value.items():
        name = f"acl.{k}"
        if k in ("enabled", "enable_token_persistence", "enable_key_list_policy", "enable_token_replication"):
            setattr(acl, k, as_bool(name, v, src))
        elif k == "default_policy":
            acl.default_policy = _choice(name, v, src, ACL_POLICIES)
        elif k == "down_policy":
            acl.down_policy = _choice(name, v, src, ACL_DOWN_POLICIES)
        elif k in ("token_ttl", "policy_ttl", "role_ttl"):
            setattr(acl, k, as_duration(name, v, src))
        elif k == "tokens":
            if not isinstance(v, dict):
                raise ConfigError(f"{src}: acl.tokens must be an object ({', '.join(ACL_TOKEN_TYPES)})")
            for tk, tv in v.items():
                kind = ACL_TOKEN_ALIASES.get(tk, tk)
                if kind not in ACL_TOKEN_TYPES:
                    raise ConfigError(f"{src}: unknown key acl.tokens.{tk} (known: {', '.join(ACL_TOKEN_TYPES)})")
                if not isinstance(tv, str):
                    raise ConfigError(f"{src}: acl.tokens.{tk} must be a token secret (a string)")
                acl.tokens[kind] = tv
        elif k == "msp_disable_bootstrap":
            _warn(cfg, src, name, "HCP is not supported")
        else:
            raise ConfigError(f"{src}: unknown key acl.{k}")


def _choice(key: str, value: Any, src: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{src}: {key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _legacy_acl(cfg: AgentConfig, key: str, value: Any, src: str) -> None:
    """Consul's pre-1.4 top-level ACL keys, folded into the `acl` block."""
    tokens = {"acl_master_token": "initial_management", "acl_agent_token": "agent", "acl_token": "default",
              "acl_agent_master_token": "agent_recovery", "acl_replication_token": "replication"}
    if key in tokens:
        _acl(cfg, "acl", {"tokens": {tokens[key]: value}}, src)
    elif key == "acl_default_policy":
        _acl(cfg, "acl", {"default_policy": value}, src)
    elif key == "acl_down_policy":
        _acl(cfg, "acl", {"down_policy": value}, src)
    elif key == "acl_datacenter":  # setting it was how ACLs were turned on
        cfg.acl.enabled = True
        if not cfg.primary_datacenter:
            cfg.primary_datacenter = str(value).lower()
    elif key == "acl_ttl":
        _acl(cfg, "acl", {"token_ttl": value}, src)
    elif key == "acl_enable_key_list_policy":
        _acl(cfg, "acl", {"enable_key_list_policy": value}, src)


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
    "retry_join_wan": _join_wan,
    "start_join_wan": _join_wan,
    "retry_interval_wan": _set("retry_interval_wan", as_duration),
    "retry_max": _set("retry_max", _at_least_zero),
    "retry_max_wan": _set("retry_max_wan", _at_least_zero),
    "start_join": _join,
    "log_level": _set("log_level", _lower),
    "enable_script_checks": _set("enable_script_checks", as_bool),
    "enable_local_script_checks": _set("enable_local_script_checks", as_bool),
    "recursors": _set("recursors", as_str_list),
    "domain": _set("domain", _fqdn),
    "alt_domain": _set("alt_domain", _fqdn),
    "dns_config": _dns_config,
    "http_config": _http_config,
    "limits": _limits,
    "service": _services,
    "services": _services,
    "check": _checks,
    "checks": _checks,
    "node_meta": _node_meta,
    "ui": _set("ui_enabled", as_bool),
    "ui_config": _ui_config,
    "ui_content_path": _ui_content_path,  # Consul's older top-level spelling
    "connect": _connect,
    "default_intention_policy": _default_intention_policy,
    "check_update_interval": _set("check_update_interval", as_duration),
    "ae_interval": _ae_interval,
    **{k: _legacy_tls for k in TLS_KEYS},
    "tls": _tls,
    "raft_snapshot_threshold": _set("raft_snapshot_threshold", _at_least_one),
    "raft_trailing_logs": _set("raft_trailing_logs", _at_least_one),
    "enable_debug": _set("enable_debug", as_bool),
    "translate_wan_addrs": _set("translate_wan_addrs", as_bool),
    "enable_agent_tls_for_checks": _set("enable_agent_tls_for_checks", as_bool),
    "retry_interval": _set("retry_interval", as_duration),
    "leave_on_terminate": _set("leave_on_terminate", as_bool),
    "skip_leave_on_interrupt": _set("skip_leave_on_interrupt", as_bool),
    "addresses": _addresses,
    "advertise_addr_ipv4": _advertise_v4,
    "advertise_addr_ipv6": _advertise_v4,
    "advertise_addr_wan": _advertise_wan,
    "advertise_addr_wan_ipv4": _advertise_wan,
    "advertise_addr_wan_ipv6": _advertise_wan,
    "tagged_addresses": _tagged_addresses,
    "log_json": _set("log_json", as_bool),
    "log_file": _set("log_file", _text),
    "log_rotate_bytes": _set("log_rotate_bytes", as_int),
    "log_rotate_max_files": _set("log_rotate_max_files", as_int),
    "log_rotate_duration": _log_rotate_duration,
    "pid_file": _set("pid_file", _text),
    "performance": _performance,
    "reconnect_timeout": _reconnect("reconnect_timeout"),
    "reconnect_timeout_wan": _reconnect("reconnect_timeout_wan"),
    "rejoin_after_leave": _set("rejoin_after_leave", as_bool),
    "raft_protocol": _raft_protocol,
    "primary_datacenter": _primary_datacenter,
    "gossip_lan": _keep_dict("gossip_lan"),
    "gossip_wan": _keep_dict("gossip_wan"),
    "disable_coordinates": _set("disable_coordinates", as_bool),
    "sync_coordinate_interval_min": _set("sync_coordinate_interval_min", _positive(as_duration)),
    "sync_coordinate_rate_target": _set("sync_coordinate_rate_target", _positive(_as_float)),
    "consul": _consul_block,
    "autopilot": _autopilot,
    "telemetry": _telemetry,
    "check_output_max_size": _set("check_output_max_size", _at_least_one),
    "discard_check_output": _set("discard_check_output", as_bool),
    "default_query_time": _set("default_query_time", as_duration),
    "max_query_time": _set("max_query_time", as_duration),
    "session_ttl_min": _set("session_ttl_min", as_duration),
    "verify_incoming_rpc": _verify_incoming_rpc,
    "config_entries": _config_entries,
    "watches": _watches,
    "ui_dir": _set("ui_dir", _text),
    # Already what Proconsul does: nothing to change.
    "disable_update_check": _silently,  # Proconsul never phones home
    "disable_host_node_id": _silently,  # node IDs are random UUIDs, kept in the data dir
    "disable_remote_exec": _set("disable_remote_exec", as_bool),
    "disable_anonymous_signature": _silently,
    "enable_central_service_config": _silently,  # proxies read service-defaults and proxy-defaults
    "snapshot_agent": _silently,  # Consul documents it as a placeholder for the snapshot agent's config
    "protocol": _silently,
    **{k: _no_effect(why) for k, why in {
        "cache": "the agent cache has no rate limits to tune",
        "enable_syslog": "logs go to stderr and log_file",
        "syslog_facility": "logs go to stderr and log_file",
        "server_name": "the server port's TLS checks names with verify_server_hostname",
        "disable_http_unprintable_char_filter": "keys and names are not filtered",
        "discovery_max_stale": "client agents forward DNS to servers, answered from their replica",
        "tls_prefer_server_cipher_suites": "Python's default cipher suites are used",
        "raft_snapshot_interval": "snapshots follow raft_snapshot_threshold",
        "check_deregister_interval_min": "an internal knob", "check_reap_interval": "an internal knob",
        "segment_limit": "an internal knob", "segment_name_limit": "an internal knob",
        "revision": "an internal value", "version": "an internal value",
        "version_prerelease": "an internal value",
        "segment": "network segments are Consul Enterprise", "segments": "network segments are Consul Enterprise",
        "non_voting_server": "Consul Enterprise", "audit": "Consul Enterprise",
        "license_path": "Consul Enterprise", "reporting": "Consul Enterprise",
        "experiments": "no experiments", "locality": "no locality-aware routing",
        "raft_logstore": "Raft has its own segmented log", "raft_boltdb": "Raft has its own segmented log",
        "auto_reload_config": "reload with SIGHUP or `proconsul reload`",
        "xds": "the built-in proxy reads the HTTP API, not xDS",
        "rpc": "RPC streaming settings do not apply",
        "enable_acl_replication": "ACL replication is on in a secondary once acl.tokens.replication is set",
        "acl_disabled_ttl": "an agent knows whether its servers have ACLs on from its own config",
    }.items()},
    # Cannot be honoured safely: stop with one line rather than run without what was asked.
    "encrypt": _encrypt,
    "encrypt_verify_incoming": _set("encrypt_verify_incoming", as_bool),
    "encrypt_verify_outgoing": _set("encrypt_verify_outgoing", as_bool),
    "disable_keyring_file": _set("disable_keyring_file", as_bool),
    "acl": _acl,
    **{k: _legacy_acl for k in (
        "acl_agent_master_token", "acl_agent_token", "acl_datacenter", "acl_default_policy", "acl_down_policy",
        "acl_master_token", "acl_replication_token", "acl_token", "acl_ttl", "acl_enable_key_list_policy")},
    "auto_encrypt": _auto_encrypt,
    "auto_config": _refused("auto_config is not built yet", _off),
    "verify_incoming_https": _verify_incoming_https,
    "ca_path": _refused("a directory of CAs is not supported: give one bundle with ca_file"),
    "serf_wan": _set("serf_wan_addr", _text),
    "serf_lan": _set("serf_lan_addr", _text),
    "serf_lan_allowed_cidrs": _set("serf_lan_allowed_cidrs", _cidrs),
    "serf_wan_allowed_cidrs": _set("serf_wan_allowed_cidrs", _cidrs),
    "unix_sockets": _refused("the API does not listen on unix sockets"),
    "peering": _refused("cluster peering is not built", _off),
    "cloud": _refused("HCP is not supported", lambda v: not v),
    "primary_gateways": _refused("WAN federation through mesh gateways is not built yet"),
    "primary_gateways_interval": _no_effect("WAN federation does not go through mesh gateways"),
}


def merge_file_data(cfg: AgentConfig, data: dict[str, Any], src: str) -> None:
    """Fold one file's keys into `cfg`; an unknown key or a wrong type raises ConfigError."""
    for key, value in data.items():
        setter = KEYS.get(key)
        if setter is not None:
            setter(cfg, key, value, src)
        else:
            raise ConfigError(f"{src}: unknown config key {key!r}")


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
        elif k == "tls_min_version":
            tls.tls_min_version = tls_policy.min_version(prefix + k, v, src)
        elif k == "tls_cipher_suites":
            tls.tls_cipher_suites = tls_policy.cipher_suites(prefix + k, v, src)
        else:
            raise ConfigError(f"{src}: {prefix}{k} is not supported (known: {', '.join(TLS_KEYS)})")


DNS_NO_EFFECT = {"use_cache": "answers are always cached, invalidated by the catalog index",
                 "cache_max_age": "answers are always cached, invalidated by the catalog index",
                 "disable_compression": "names are always compressed", "recursor_strategy": "recursors are tried in order",
                 "prefer_namespace": "namespaces are Consul Enterprise"}


def _merge_dns(cfg: AgentConfig, value: Any, src: str) -> None:
    dns = cfg.dns
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
        elif k in DNS_NO_EFFECT:
            _warn(cfg, src, name, DNS_NO_EFFECT[k])
        else:
            raise ConfigError(f"{src}: unknown key {name}")
