"""`proconsul agent`: run an agent (server or client) in the foreground."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import typer

from proconsul.agent.cli.output import fail
from proconsul.agent.config.keys import merge_file_data
from proconsul.agent.config.load import finalize, load_config
from proconsul.agent.config.model import AgentConfig, ConfigError


def _setup_logging(cfg: AgentConfig) -> None:
    from proconsul.agent.observe.logs import configure

    try:
        configure(cfg)
    except OSError as e:
        raise fail(f"cannot open log_file {cfg.log_file}: {e.strerror or e}") from None


Opt = typer.Option
ListOpt = Annotated[list[str] | None, typer.Option]


def agent(  # noqa: PLR0913 - Consul's agent takes this many flags; each maps to one config key
    dev: Annotated[bool, Opt("--dev", help="Dev mode: one in-memory server+client, everything on 127.0.0.1.")] = False,
    server: Annotated[bool, Opt("--server", help="Run as a server (keeps the catalog, votes in Raft).")] = False,
    bootstrap: Annotated[bool, Opt("--bootstrap", help="Bootstrap a single server at once (bootstrap_expect = 1).")] = False,
    bootstrap_expect: Annotated[int, Opt("--bootstrap-expect", help="Servers to wait for before bootstrapping.")] = 0,
    node: Annotated[str, Opt("--node", help="Node name (default: the hostname).")] = "",
    node_id: Annotated[str, Opt("--node-id", help="Node ID (a UUID; default: random, kept in the data dir).")] = "",
    node_meta: Annotated[list[str] | None, Opt("--node-meta", help="key:value node metadata (repeatable).")] = None,
    datacenter: Annotated[str, Opt("--datacenter", help="Datacenter name.")] = "",
    primary_datacenter: Annotated[str, Opt("--primary-datacenter", help="The primary datacenter.")] = "",
    data_dir: Annotated[str, Opt("--data-dir", help="Where state is kept (required outside dev mode).")] = "",
    bind: Annotated[str, Opt("--bind", help="Address for cluster traffic.")] = "",
    serf_lan_bind: Annotated[str, Opt("--serf-lan-bind", help="Address for LAN membership (default: -bind).")] = "",
    advertise: Annotated[str, Opt("--advertise", help="Address other agents use to reach this one.")] = "",
    advertise_wan: Annotated[str, Opt("--advertise-wan", help="Address advertised to other datacenters.")] = "",
    client: Annotated[str, Opt("--client", help="Address for the HTTP and DNS interfaces.")] = "",
    http_port: Annotated[int | None, Opt("--http-port", help="HTTP API port (8500; 0 picks one).")] = None,
    https_port: Annotated[int | None, Opt("--https-port", help="HTTPS API port (-1: off).")] = None,
    grpc_port: Annotated[int | None, Opt("--grpc-port", help="gRPC port (-1: off).")] = None,
    dns_port: Annotated[int | None, Opt("--dns-port", help="DNS port (8600; -1 disables).")] = None,
    server_port: Annotated[int | None, Opt("--server-port", help="Server RPC port (8300).")] = None,
    serf_lan_port: Annotated[int | None, Opt("--serf-lan-port", help="LAN membership port (8301).")] = None,
    serf_wan_port: Annotated[int | None, Opt("--serf-wan-port", help="WAN membership port (8302).")] = None,
    retry_join: Annotated[list[str] | None, Opt("--retry-join", help="Address of an agent to join, HOST[:LAN-PORT] (repeatable).")] = None,
    join: Annotated[list[str] | None, Opt("--join", help="Like -retry-join (Consul's older flag).")] = None,
    retry_join_wan: Annotated[list[str] | None, Opt("--retry-join-wan", help="Server of another datacenter to join, HOST[:WAN-PORT] (repeatable; retried until it answers).")] = None,
    join_wan: Annotated[list[str] | None, Opt("--join-wan", help="Server of another datacenter to join at start, HOST[:WAN-PORT].")] = None,
    retry_interval: Annotated[str, Opt("--retry-interval", help="Wait between join attempts (30s).")] = "",
    rejoin: Annotated[bool, Opt("--rejoin", help="After a graceful leave, still re-join the members the gossip "
                                                 "snapshot remembers (rejoin_after_leave).")] = False,
    config_file: Annotated[list[str] | None, Opt("--config-file", help="JSON or HCL config file (repeatable).")] = None,
    config_dir: Annotated[list[str] | None, Opt("--config-dir", help="Directory of .json/.hcl config files (repeatable).")] = None,
    config_format: Annotated[str, Opt("--config-format", help="Read every config file as json or hcl.")] = "",
    hcl: Annotated[list[str] | None, Opt("--hcl", help="Inline HCL config, applied after the files (repeatable).")] = None,
    log_level: Annotated[str, Opt("--log-level", help="trace, debug, info, warn or error.")] = "",
    log_json: Annotated[bool, Opt("--log-json", help="Log as JSON lines.")] = False,
    log_file: Annotated[str, Opt("--log-file", help="Also log to this file (or directory).")] = "",
    pid_file: Annotated[str, Opt("--pid-file", help="Write the agent's PID to this file.")] = "",
    enable_script_checks: Annotated[bool, Opt("--enable-script-checks", help="Allow script checks.")] = False,
    serf_lan_allowed_cidrs: Annotated[list[str] | None, Opt("--serf-lan-allowed-cidrs", help="Only accept LAN gossip from this network, CIDR (repeatable).")] = None,
    serf_wan_allowed_cidrs: Annotated[list[str] | None, Opt("--serf-wan-allowed-cidrs", help="Only accept WAN gossip from this network, CIDR (repeatable).")] = None,
    retry_max: Annotated[int | None, Opt("--retry-max", help="Failed --retry-join rounds before the agent gives up and exits (0: never).")] = None,
    retry_max_wan: Annotated[int | None, Opt("--retry-max-wan", help="Failed --retry-join-wan rounds before the agent gives up and exits (0: never).")] = None,
    allow_write_http_from: Annotated[list[str] | None, Opt("--allow-write-http-from", help="Only allow HTTP API writes from this network, CIDR (repeatable; http_config.allow_write_http_from).")] = None,
    enable_local_script_checks: Annotated[bool, Opt("--enable-local-script-checks",
                                                    help="Allow script checks from config files only.")] = False,
    recursor: Annotated[list[str] | None, Opt("--recursor", help="Upstream DNS server for names outside the domain (repeatable).")] = None,
    domain: Annotated[str, Opt("--domain", help="DNS domain (mesh.).")] = "",
    alt_domain: Annotated[str, Opt("--alt-domain", help="Alternate DNS domain.")] = "",
    ui: Annotated[bool, Opt("--ui", help="Serve the web UI (on by default).")] = False,
    ui_content_path: Annotated[str, Opt("--ui-content-path", help="Path the UI is served under (/ui/).")] = "",
    encrypt: Annotated[str, Opt("--encrypt", help="Gossip encryption key (base64).")] = "",
    raft_protocol: Annotated[int | None, Opt("--raft-protocol", help="Raft protocol version (3).")] = None,
) -> None:
    """Run a Proconsul agent (server or client) in the foreground.

    Flags are Consul's (`-dev`, `-server`, `-hcl '…'`, …, with one dash or two); each sets the config key of
    the same meaning and wins over config files and -hcl."""
    try:
        cfg = AgentConfig(dev=dev)
        if dev:
            cfg.node_name = "dev"
        cfg = load_config(config_file or [], config_dir or [], cfg, hcl=hcl or [], fmt=config_format.lower())
        flags: dict[str, Any] = {}

        def put(key: str, value: Any) -> None:
            if value not in (None, "", [], False, 0):
                flags[key] = value

        ports = {k: v for k, v in (("http", http_port), ("https", https_port), ("grpc", grpc_port),
                                   ("dns", dns_port), ("server", server_port), ("serf_lan", serf_lan_port),
                                   ("serf_wan", serf_wan_port)) if v is not None}
        for key, value in (("server", server), ("bootstrap", bootstrap), ("bootstrap_expect", bootstrap_expect),
                           ("node_name", node), ("node_id", node_id), ("datacenter", datacenter),
                           ("primary_datacenter", primary_datacenter), ("data_dir", data_dir), ("bind_addr", bind),
                           ("serf_lan", serf_lan_bind), ("advertise_addr", advertise),
                           ("advertise_addr_wan", advertise_wan), ("client_addr", client), ("ports", ports),
                           ("retry_join", retry_join), ("start_join", join), ("retry_join_wan", retry_join_wan),
                           ("start_join_wan", join_wan),
                           ("retry_interval", retry_interval), ("rejoin_after_leave", rejoin), ("log_level", log_level), ("log_json", log_json),
                           ("log_file", log_file), ("pid_file", pid_file),
                           ("enable_script_checks", enable_script_checks),
                           ("enable_local_script_checks", enable_local_script_checks), ("recursors", recursor),
                           ("domain", domain), ("alt_domain", alt_domain), ("ui", ui),
                           ("ui_content_path", ui_content_path), ("encrypt", encrypt),
                           ("raft_protocol", raft_protocol), ("serf_lan_allowed_cidrs", serf_lan_allowed_cidrs),
                           ("serf_wan_allowed_cidrs", serf_wan_allowed_cidrs), ("retry_max", retry_max),
                           ("retry_max_wan", retry_max_wan)):
            put(key, value)
        if node_meta:
            flags["node_meta"] = _node_meta(node_meta)
        if allow_write_http_from:
            flags["http_config"] = {"allow_write_http_from": allow_write_http_from}
        if recursor:
            cfg.recursors = []  # flags replace the files' recursors, as Consul's do
        merge_file_data(cfg, flags, "command-line flags")
        cfg = finalize(cfg)
        _refuse_unsupported(cfg)
    except ConfigError as e:
        raise fail(str(e)) from None
    _run(cfg)


def _node_meta(items: list[str]) -> dict[str, str]:
    """`-node-meta key:value` flags as the node_meta map."""
    meta = {}
    for item in items:
        k, sep, v = item.partition(":")
        if not sep or not k:
            raise ConfigError(f"-node-meta {item!r} must be key:value")
        meta[k] = v
    return meta


def _run(cfg: AgentConfig) -> None:
    """Log the config's warnings, then run the agent on uvloop until it stops (one line if it cannot start)."""
    _setup_logging(cfg)
    for warning in cfg.warnings:
        logging.getLogger("proconsul.config").warning("%s", warning)
    from proconsul.agent.agent import AgentError, run_agent

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        asyncio.run(run_agent(cfg))
    except AgentError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        pass


def _refuse_unsupported(cfg: AgentConfig) -> None:
    """Combinations the agent cannot honour fail loudly: none are silently ignored."""
    if cfg.dev and cfg.retry_join:
        raise ConfigError("--dev agents run alone: drop --retry-join, or run --server/client agents to cluster")
    if not cfg.server and cfg.bootstrap_expect:
        raise ConfigError("--bootstrap-expect only applies to servers: add --server")


def register(app: typer.Typer) -> None:
    app.command()(agent)
