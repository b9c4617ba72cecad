"""Agent configuration: Consul's key names, from files (JSON and HCL), flags and the environment.

Precedence, lowest first: built-in defaults, dev-mode defaults, config files (in the order given,
a directory's files in lexical order), then command-line flags. Unknown keys are an error that
names the key and the file, as Consul's are: nothing is silently ignored. The pieces: `model.py`
(the dataclasses), `files.py` (JSON/HCL), `keys.py` (what each key does), `values.py` (typed values).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from proconsul.agent.config import tls_policy
from proconsul.agent.config.files import config_dir_files, load_file, parse_text
from proconsul.agent.config.keys import merge_file_data
from proconsul.agent.config.model import AgentConfig, ConfigError


def load_config(files: list[str], dirs: list[str], base: AgentConfig | None = None, *,
                hcl: list[str] | None = None, fmt: str = "") -> AgentConfig:
    """Defaults, then each file (a dir's files in lexical order), then each inline `-hcl` fragment folded
    in; flags are applied after. `fmt` forces every file's format (Consul's -config-format)."""
    cfg = base or AgentConfig()
    cfg.config_files, cfg.config_dirs = list(files), list(dirs)
    cfg.hcl, cfg.config_format = list(hcl or []), fmt
    if fmt and fmt not in ("json", "hcl"):
        raise ConfigError(f"-config-format must be json or hcl, not {fmt!r}")
    paths: list[Path] = [Path(f) for f in files]
    for d in dirs:
        paths.extend(config_dir_files(d, fmt))
    for p in paths:
        merge_file_data(cfg, load_file(p, fmt), str(p))
    for i, text in enumerate(cfg.hcl):
        merge_file_data(cfg, parse_text(text, "hcl", f"-hcl #{i + 1}"), f"-hcl #{i + 1}")
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
    _refuse_missing_listeners(cfg)
    if cfg.skip_leave_on_interrupt is None:
        cfg.skip_leave_on_interrupt = cfg.server
    if not 1 <= cfg.sidecar_min_port <= cfg.sidecar_max_port <= 65535:
        raise ConfigError(f"ports.sidecar_min_port ({cfg.sidecar_min_port}) must be ≤ ports.sidecar_max_port "
                          f"({cfg.sidecar_max_port}), both within 1-65535")
    if cfg.ui_metrics_provider == "prometheus" and not cfg.ui_metrics_proxy_base_url:
        raise ConfigError("ui_config.metrics_provider = \"prometheus\" needs ui_config.metrics_proxy.base_url, the "
                          "address of Prometheus (for example \"http://127.0.0.1:9090\")")
    return cfg


def _refuse_missing_listeners(cfg: AgentConfig) -> None:
    """A port or setting that would need a listener or subsystem Proconsul does not have stops the agent;
    one that asks for nothing harmful is accepted with a warning."""
    t = cfg.https_tls
    if cfg.https_port >= 0 and not (t.cert_file and t.key_file):
        raise ConfigError(f"ports.https = {cfg.https_port} cannot be honoured without a certificate: set "
                          "tls.https (or tls.defaults) cert_file and key_file")
    if cfg.https_port >= 0 and t.verify_incoming and not t.ca_file:
        raise ConfigError("tls.https.verify_incoming needs ca_file (the CA that signs client certificates)")
    for where, tls in (("tls.internal_rpc", cfg.tls), ("tls.https", cfg.https_tls)):
        tls_policy.check(tls.tls_min_version, tls.tls_cipher_suites, where)
    if cfg.grpc_tls_port >= 0:
        raise ConfigError(f"ports.grpc_tls = {cfg.grpc_tls_port} cannot be honoured: there is no gRPC TLS "
                          "listener; set it to -1 (or remove it)")
    if cfg.grpc_port >= 0:
        cfg.warnings.append(f"ports.grpc = {cfg.grpc_port} has no effect in Proconsul (there is no gRPC/xDS "
                            "listener: the built-in proxy reads the HTTP API); accepted and ignored")
    if cfg.primary_datacenter and cfg.primary_datacenter != cfg.datacenter and cfg.server and cfg.serf_wan_port < 0:
        raise ConfigError(f"primary_datacenter {cfg.primary_datacenter!r} cannot be honoured: this server has no "
                          "WAN port (ports.serf_wan = -1) to reach it; give it one, or make this datacenter the primary")
