"""`proconsul agent`: run an agent (server or client) in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from proconsul.agent.cli.output import fail
from proconsul.agent.config.load import finalize, load_config
from proconsul.agent.config.model import AgentConfig, ConfigError
from proconsul.agent.config.values import as_duration


def _setup_logging(level: str) -> None:
    from proconsul.agent.agent import _log_level

    logging.basicConfig(level=_log_level(level), stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")



def agent(
    dev: Annotated[bool, typer.Option("--dev", help="Dev mode: one in-memory server+client, everything on 127.0.0.1.")] = False,
    server: Annotated[bool, typer.Option("--server", help="Run as a server (keeps the catalog, votes in Raft).")] = False,
    bootstrap_expect: Annotated[int, typer.Option("--bootstrap-expect", help="Servers to wait for before bootstrapping.")] = 0,
    node: Annotated[str, typer.Option("--node", help="Node name (default: the hostname).")] = "",
    datacenter: Annotated[str, typer.Option("--datacenter", help="Datacenter name.")] = "",
    data_dir: Annotated[str, typer.Option("--data-dir", help="Where state is kept (required outside dev mode).")] = "",
    bind: Annotated[str, typer.Option("--bind", help="Address for cluster traffic.")] = "",
    client: Annotated[str, typer.Option("--client", help="Address for the HTTP and DNS interfaces.")] = "",
    http_port: Annotated[int | None, typer.Option("--http-port", help="HTTP API port (8500; 0 picks one).")] = None,
    dns_port: Annotated[int | None, typer.Option("--dns-port", help="DNS port (8600; -1 disables).")] = None,
    server_port: Annotated[int | None, typer.Option("--server-port", help="Server RPC port (8300).")] = None,
    serf_lan_port: Annotated[int | None, typer.Option("--serf-lan-port", help="LAN membership port (8301).")] = None,
    serf_wan_port: Annotated[int | None, typer.Option("--serf-wan-port", help="WAN membership port (8302).")] = None,
    retry_join: Annotated[list[str] | None, typer.Option("--retry-join", help="Address of an agent to join, HOST[:LAN-PORT] (repeatable).")] = None,
    retry_interval: Annotated[str, typer.Option("--retry-interval", help="Wait between join attempts (30s).")] = "",
    config_file: Annotated[list[str] | None, typer.Option("--config-file", help="JSON or HCL config file (repeatable).")] = None,
    config_dir: Annotated[list[str] | None, typer.Option("--config-dir", help="Directory of .json/.hcl config files (repeatable).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="trace, debug, info, warn or error.")] = "",
    enable_script_checks: Annotated[bool, typer.Option("--enable-script-checks", help="Allow script checks.")] = False,
    recursor: Annotated[list[str] | None, typer.Option("--recursor", help="Upstream DNS server for names outside the domain (repeatable).")] = None,
    domain: Annotated[str, typer.Option("--domain", help="DNS domain (mesh.).")] = "",
    alt_domain: Annotated[str, typer.Option("--alt-domain", help="Alternate DNS domain.")] = "",
) -> None:
    """Run a Proconsul agent (server or client) in the foreground."""
    try:
        cfg = AgentConfig(dev=dev)
        if dev:
            cfg.node_name = "dev"
        cfg = load_config(config_file or [], config_dir or [], cfg)
        if server:
            cfg.server = True
        if bootstrap_expect:
            cfg.bootstrap_expect = bootstrap_expect
        for attr, value in (("node_name", node), ("datacenter", datacenter.lower()), ("data_dir", data_dir),
                            ("bind_addr", bind), ("client_addr", client), ("log_level", log_level.lower())):
            if value:
                setattr(cfg, attr, value)
        if domain:
            cfg.domain = domain.rstrip(".") + "."
        if alt_domain:
            cfg.alt_domain = alt_domain.rstrip(".") + "."
        for attr, port in (("http_port", http_port), ("dns_port", dns_port), ("server_port", server_port),
                           ("serf_lan_port", serf_lan_port), ("serf_wan_port", serf_wan_port)):
            if port is not None:
                setattr(cfg, attr, port)
        if retry_join:
            cfg.retry_join.extend(retry_join)
        if retry_interval:
            cfg.retry_interval = as_duration("retry_interval", retry_interval, "--retry-interval")
        if enable_script_checks:
            cfg.enable_script_checks = True
        if recursor:
            cfg.recursors = list(recursor)
        cfg = finalize(cfg)
        _refuse_unsupported(cfg)
    except ConfigError as e:
        raise fail(str(e)) from None
    _setup_logging(cfg.log_level)
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
