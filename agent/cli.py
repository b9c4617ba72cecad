"""The `proconsul` command line (typer + rich).

`proconsul agent` runs an agent; every other command talks to an agent's HTTP API (`--http-addr`,
or PROCONSUL_HTTP_ADDR / CONSUL_HTTP_ADDR). Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .cli_client import Client, CLIError, Format, HttpAddr
from .config import AgentConfig, ConfigError, _dur, finalize, load_config
from .version import CONSUL_COMPAT_VERSION, VERSION

app = typer.Typer(
    name="proconsul",
    help="Service discovery and a service mesh in the style of Consul.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> typer.Exit:
    """Print one readable line to stderr and return the exit to raise (status 1)."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


def _setup_logging(level: str) -> None:
    from .agent import _log_level

    logging.basicConfig(level=_log_level(level), stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")


@app.command()
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
            cfg.retry_interval = _dur("retry_interval", retry_interval, "--retry-interval")
        if enable_script_checks:
            cfg.enable_script_checks = True
        if recursor:
            cfg.recursors = list(recursor)
        cfg = finalize(cfg)
        _refuse_unsupported(cfg)
    except ConfigError as e:
        raise fail(str(e)) from None
    _setup_logging(cfg.log_level)
    from .agent import AgentError, run_agent

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


# ---------------------------------------------------------------------- shared options and output


def _client(addr: str | None) -> Client:
    try:
        return Client(addr)
    except CLIError as e:
        raise fail(str(e)) from None


def _check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        raise fail(f"--format must be 'table' or 'json', not {fmt!r}")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=max(120, Console().width)).print(table)


def _run(fn: Callable[[], None]) -> None:
    """Run a command body; a CLIError becomes one line on stderr and exit status 1."""
    try:
        fn()
    except CLIError as e:
        raise fail(str(e)) from None


_STATUS = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}


@app.command()
def version() -> None:
    """Print the Proconsul version and the Consul API version it speaks."""
    typer.echo(f"Proconsul v{VERSION}")
    typer.echo(f"Speaks the Consul HTTP API v1 (as Consul {CONSUL_COMPAT_VERSION})")


@app.command()
def members(http_addr: HttpAddr = None, fmt: Format = "table",
            wan: Annotated[bool, typer.Option("--wan", help="List WAN members.")] = False) -> None:
    """List the members of the cluster this agent knows."""
    _check_format(fmt)

    def body() -> None:
        data = _client(http_addr).get("/v1/agent/members", params={"wan": wan}).json()
        if fmt == "json":
            return _print_json(data)
        _table(None, ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"],
               [[m["Name"], f"{m['Addr']}:{m['Port']}", _STATUS.get(m["Status"], m["Status"]),
                 "server" if m["Tags"].get("role") == "consul" else "client", m["Tags"].get("build", ""),
                 m.get("ProtocolCur", ""), m["Tags"].get("dc", "")] for m in data])

    _run(body)


@app.command()
def info(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Show the agent's configuration summary and statistics."""
    _check_format(fmt)

    def body() -> None:
        data = _client(http_addr).get("/v1/agent/self").json()
        if fmt == "json":
            return _print_json(data)
        cfg = data["Config"]
        typer.echo(f"agent:\n\tnode = {cfg['NodeName']}\n\tdatacenter = {cfg['Datacenter']}\n"
                   f"\tserver = {str(cfg['Server']).lower()}\n\tversion = {cfg.get('ProconsulVersion', '')}")
        for section, values in sorted(data.get("Stats", {}).items()):
            typer.echo(f"{section}:")
            for k, v in sorted(values.items()):
                typer.echo(f"\t{k} = {v}")

    _run(body)


@app.command()
def reload(http_addr: HttpAddr = None) -> None:
    """Make the agent re-read its configuration files (services, checks, log level)."""
    _run(lambda: (_client(http_addr).put("/v1/agent/reload"), typer.echo("Configuration reload triggered")))


@app.command()
def leave(http_addr: HttpAddr = None) -> None:
    """Make the agent leave the cluster gracefully and shut down."""
    _run(lambda: (_client(http_addr).put("/v1/agent/leave"), typer.echo("Graceful leave complete")))


@app.command()
def join(addresses: Annotated[list[str], typer.Argument(help="HOST[:LAN-PORT] of agents to join.")],
         http_addr: HttpAddr = None) -> None:
    """Make the agent join a cluster through one or more of its members' LAN addresses."""

    def body() -> None:
        client = _client(http_addr)
        for addr in addresses:
            client.put(f"/v1/agent/join/{addr}")
        typer.echo(f"Successfully joined cluster by contacting {len(addresses)} node(s).")

    _run(body)


@app.command("force-leave")
def force_leave(node: Annotated[str, typer.Argument(help="Name of a failed member.")],
                http_addr: HttpAddr = None) -> None:
    """Mark a failed member as left, so the leader removes it from the catalog."""
    _run(lambda: (_client(http_addr).put(f"/v1/agent/force-leave/{node}"),
                  typer.echo(f"Member {node} marked as left")))


# ---------------------------------------------------------------------- operator raft
operator_app = typer.Typer(help="Cluster operations for operators.", no_args_is_help=True)
raft_app = typer.Typer(help="Inspect and change the Raft configuration of the servers.", no_args_is_help=True)
operator_app.add_typer(raft_app, name="raft")
app.add_typer(operator_app, name="operator")


@raft_app.command("list-peers")
def raft_list_peers(http_addr: HttpAddr = None, fmt: Format = "table",
                    stale: Annotated[bool, typer.Option("--stale", help="Ask any server, not only the leader.")] = False
                    ) -> None:
    """List the Raft servers: node, ID, address, state (leader/follower), voter."""
    _check_format(fmt)

    def body() -> None:
        data = _client(http_addr).get("/v1/operator/raft/configuration", params={"stale": stale}).json()
        if fmt == "json":
            return _print_json(data)
        _table(None, ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
               [[srv["Node"], srv["ID"], srv["Address"], "leader" if srv["Leader"] else "follower",
                 str(srv["Voter"]).lower(), srv.get("ProtocolVersion", "3")] for srv in data["Servers"]])

    _run(body)


@raft_app.command("remove-peer")
def raft_remove_peer(
    peer_id: Annotated[str, typer.Option("--id", help="Raft ID of the server to remove.")] = "",
    address: Annotated[str, typer.Option("--address", help="HOST:PORT (server port) of the server to remove.")] = "",
    http_addr: HttpAddr = None,
) -> None:
    """Remove a server from the Raft configuration (for a server that is gone for good)."""
    if bool(peer_id) == bool(address):
        raise fail("give exactly one of --id or --address")

    def body() -> None:
        _client(http_addr).delete("/v1/operator/raft/peer", params={"id": peer_id or None,
                                                                   "address": address or None})
        typer.echo(f"Removed peer with {'id' if peer_id else 'address'} {peer_id or address!r}")

    _run(body)


@raft_app.command("transfer-leader")
def raft_transfer_leader(
    peer_id: Annotated[str, typer.Option("--id", help="Raft ID of the new leader (default: the most caught-up voter).")] = "",
    http_addr: HttpAddr = None,
) -> None:
    """Hand leadership to another voter."""

    def body() -> None:
        _client(http_addr).call("POST", "/v1/operator/raft/transfer-leader", params={"id": peer_id or None})
        typer.echo("Success")

    _run(body)


# ---------------------------------------------------------------------- catalog
catalog_app = typer.Typer(help="List datacenters, nodes and services in the catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("datacenters")
def catalog_datacenters(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """List the known datacenters."""
    _check_format(fmt)

    def body() -> None:
        data = _client(http_addr).get("/v1/catalog/datacenters").json()
        if fmt == "json":
            return _print_json(data)
        for dc in data:
            typer.echo(dc)

    _run(body)


def _node_meta_params(node_meta: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in node_meta or []:
        if ":" not in item and "=" not in item:
            raise fail(f"--node-meta {item!r} must be key=value")
        k, _, v = item.replace("=", ":", 1).partition(":")
        out.append(("node-meta", f"{k}:{v}"))
    return out


@catalog_app.command("nodes")
def catalog_nodes(
    http_addr: HttpAddr = None, fmt: Format = "table",
    service: Annotated[str, typer.Option("--service", help="Only nodes running this service.")] = "",
    node_meta: Annotated[list[str] | None, typer.Option("--node-meta", help="key=value filter (repeatable).")] = None,
    detailed: Annotated[bool, typer.Option("--detailed", help="Show tagged addresses and metadata.")] = False,
    filter_: Annotated[str, typer.Option("--filter", help="Consul filter expression.")] = "",
) -> None:
    """List nodes in the catalog."""
    _check_format(fmt)
    meta = _node_meta_params(node_meta)

    def body() -> None:
        client = _client(http_addr)
        params: dict[str, Any] = {"filter": filter_ or None}
        path = f"/v1/catalog/service/{service}" if service else "/v1/catalog/nodes"
        url_meta = "&".join(f"node-meta={v}" for _, v in meta)
        data = client.get(path + (("?" + url_meta) if url_meta else ""), params=params).json()
        if service:
            seen: dict[str, dict[str, Any]] = {}
            for sn in data:
                seen.setdefault(sn["Node"], {"Node": sn["Node"], "ID": sn["ID"], "Address": sn["Address"],
                                             "Datacenter": sn["Datacenter"], "TaggedAddresses": sn["TaggedAddresses"],
                                             "Meta": sn["NodeMeta"]})
            data = list(seen.values())
        if fmt == "json":
            return _print_json(data)
        cols = ["Node", "ID", "Address", "DC"] + (["TaggedAddresses", "Meta"] if detailed else [])
        rows = []
        for n in data:
            row = [n["Node"], (n.get("ID") or "")[:8] if not detailed else n.get("ID"), n["Address"], n["Datacenter"]]
            if detailed:
                row += [",".join(f"{k}={v}" for k, v in sorted(n["TaggedAddresses"].items())),
                        ",".join(f"{k}={v}" for k, v in sorted(n["Meta"].items()))]
            rows.append(row)
        _table(None, cols, rows)

    _run(body)


@catalog_app.command("services")
def catalog_services(
    http_addr: HttpAddr = None, fmt: Format = "table",
    node: Annotated[str, typer.Option("--node", help="Only services on this node.")] = "",
    tags: Annotated[bool, typer.Option("--tags", help="Show each service's tags.")] = False,
    node_meta: Annotated[list[str] | None, typer.Option("--node-meta", help="key=value filter (repeatable).")] = None,
) -> None:
    """List services in the catalog."""
    _check_format(fmt)
    meta = _node_meta_params(node_meta)

    def body() -> None:
        client = _client(http_addr)
        if node:
            resp = client.get(f"/v1/catalog/node/{node}").json()
            if resp is None:
                raise CLIError(f"no node named {node!r} in the catalog")
            data: dict[str, list[str]] = {}
            for svc in resp["Services"].values():
                data.setdefault(svc["Service"], [])
                data[svc["Service"]] = sorted(set(data[svc["Service"]]) | set(svc["Tags"]))
        else:
            url_meta = "&".join(f"node-meta={v}" for _, v in meta)
            data = client.get("/v1/catalog/services" + (("?" + url_meta) if url_meta else "")).json()
        if fmt == "json":
            return _print_json(data)
        if tags:
            _table(None, ["Service", "Tags"], [[name, ",".join(t)] for name, t in sorted(data.items())])
        else:
            for name in sorted(data):
                typer.echo(name)

    _run(body)


# ---------------------------------------------------------------------- services
services_app = typer.Typer(help="Register and deregister services with the local agent.", no_args_is_help=True)
app.add_typer(services_app, name="services")


def _service_definitions(path: str) -> list[dict[str, Any]]:
    from .config import load_file
    from .definitions import DefinitionError, service_definition

    try:
        data = load_file(path)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    raw: list[Any] = []
    for key, value in data.items():
        if key in ("service", "Service"):
            raw.extend(value if isinstance(value, list) else [value])
        elif key in ("services", "Services"):
            raw.extend(value if isinstance(value, list) else [value])
        else:
            raise CLIError(f"{path}: unexpected key {key!r}: a service file holds `service` or `services`")
    if not raw:
        raise CLIError(f"{path}: no service definition found (expected a `service` block)")
    out = []
    for i, item in enumerate(raw):
        try:
            service_definition(item, f"{path}: service[{i}]")
        except DefinitionError as e:
            raise CLIError(str(e)) from None
        out.append(item)
    return out


@services_app.command("register")
def services_register(
    files: Annotated[list[str], typer.Argument(help="JSON or HCL files with a `service` block or `services` list.")],
    http_addr: HttpAddr = None,
) -> None:
    """Register services from definition files (Consul's format), e.g. `proconsul services register web.hcl`."""

    def body() -> None:
        client = _client(http_addr)
        for path in files:
            for svc in _service_definitions(path):
                client.put("/v1/agent/service/register", body=svc)
                name = next((svc[k] for k in ("Name", "name", "Service") if k in svc), "?")
                typer.echo(f"Registered service: {name}")

    _run(body)


@services_app.command("deregister")
def services_deregister(
    service_id: Annotated[str | None, typer.Argument(help="ID of the service to deregister.")] = None,
    id_: Annotated[str, typer.Option("--id", help="ID of the service to deregister.")] = "",
    files: Annotated[list[str] | None, typer.Option("--file", help="Deregister the services in this file.")] = None,
    http_addr: HttpAddr = None,
) -> None:
    """Deregister a service from the local agent by ID (or every service in a definition file)."""

    def body() -> None:
        ids = [x for x in (service_id, id_) if x]
        for path in files or []:
            for svc in _service_definitions(path):
                ids.append(svc.get("ID") or svc.get("id") or svc.get("Name") or svc.get("name"))
        if not ids:
            raise CLIError("give a service ID (argument or --id) or --file")
        client = _client(http_addr)
        for sid in ids:
            client.put(f"/v1/agent/service/deregister/{sid}")
            typer.echo(f"Deregistered service: {sid}")

    _run(body)


# ---------------------------------------------------------------------- kv
kv_app = typer.Typer(help="Read and write the key/value store.", no_args_is_help=True)
app.add_typer(kv_app, name="kv")


def _read_value(value: str) -> bytes:
    """Consul's value forms: `@file` reads a file, `-` reads stdin, anything else is the value itself."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                return f.read()
        except OSError as e:
            raise CLIError(f"cannot read {value[1:]}: {e.strerror}") from None
    return value.encode()


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(help="Key (or prefix with --recurse/--keys).")] = "",
    http_addr: HttpAddr = None, fmt: Format = "table",
    recurse: Annotated[bool, typer.Option("--recurse", help="Every key under the prefix, as key:value.")] = False,
    keys: Annotated[bool, typer.Option("--keys", help="List keys under the prefix.")] = False,
    separator: Annotated[str, typer.Option("--separator", help="With --keys: list up to this separator.")] = "/",
    detailed: Annotated[bool, typer.Option("--detailed", help="Show every field of the entry.")] = False,
    base64_: Annotated[bool, typer.Option("--base64", help="Print values base64-encoded.")] = False,
) -> None:
    """Read a key; `--recurse` for a prefix; `--keys` to list keys."""
    _check_format(fmt)

    def body() -> None:
        client = _client(http_addr)
        path = f"/v1/kv/{key}"
        if keys:
            resp = client.get(path, params={"keys": True, "separator": separator or None}, ok404=True)
            data = resp.json() if resp.status == 200 else []
            if fmt == "json":
                return _print_json(data)
            for k in data:
                typer.echo(k)
            return
        if not key and not recurse:
            raise CLIError("missing key: give a key, or --recurse for everything")
        resp = client.get(path, params={"recurse": recurse}, ok404=True)
        if resp.status == 404:
            if recurse:
                return _print_json([]) if fmt == "json" else None
            raise CLIError(f"No key exists at: {key}")
        entries = resp.json()
        if fmt == "json":
            return _print_json(entries)
        for e in entries:
            value = base64.b64decode(e["Value"]) if e.get("Value") else b""
            shown = base64.b64encode(value).decode() if base64_ else value.decode(errors="replace")
            if detailed:
                for field in ("CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session"):
                    typer.echo(f"{field:<16}{e.get(field, '-') if e.get(field, '') != '' else '-'}")
                typer.echo(f"{'Value':<16}{shown}")
                if len(entries) > 1:
                    typer.echo("")
            elif recurse:
                typer.echo(f"{e['Key']}:{shown}")
            else:
                typer.echo(shown)

    _run(body)


@kv_app.command("put")
def kv_put(
    key: Annotated[str, typer.Argument(help="Key to write.")],
    value: Annotated[str, typer.Argument(help="Value, @file to read a file, or - for stdin.")] = "",
    http_addr: HttpAddr = None,
    cas: Annotated[bool, typer.Option("--cas", help="Check-and-set: write only if --modify-index matches.")] = False,
    modify_index: Annotated[int | None, typer.Option("--modify-index", help="With --cas: the expected index (0 = create only).")] = None,
    flags: Annotated[int, typer.Option("--flags", help="Opaque unsigned integer stored with the key.")] = 0,
    acquire: Annotated[bool, typer.Option("--acquire", help="Acquire the key's lock with --session.")] = False,
    release: Annotated[bool, typer.Option("--release", help="Release the key's lock held by --session.")] = False,
    session: Annotated[str, typer.Option("--session", help="Session for --acquire/--release.")] = "",
    base64_: Annotated[bool, typer.Option("--base64", help="The value is base64: decode it before writing.")] = False,
) -> None:
    """Write a key, e.g. `proconsul kv put config/web/max_conns 100`."""

    def body() -> None:
        data = _read_value(value)
        if base64_:
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError:
                raise CLIError("--base64 given but the value is not valid base64") from None
        params: dict[str, Any] = {"flags": flags or None}
        if cas:
            if modify_index is None:
                raise CLIError("--cas needs --modify-index (0 to create only if absent)")
            params["cas"] = modify_index
        if acquire or release:
            if not session:
                raise CLIError("--acquire and --release need --session")
            params["acquire" if acquire else "release"] = session
        ok = _client(http_addr).put(f"/v1/kv/{key}", params=params, raw=data).json()
        if not ok:
            what = "CAS failed" if cas else "lock is held by another session" if acquire else "not written"
            raise CLIError(f"Did not write to {key}: {what}")
        typer.echo(f"Success! Data written to: {key}")

    _run(body)


@kv_app.command("delete")
def kv_delete(
    key: Annotated[str, typer.Argument(help="Key (or prefix with --recurse).")] = "",
    http_addr: HttpAddr = None,
    recurse: Annotated[bool, typer.Option("--recurse", help="Delete every key under the prefix.")] = False,
    cas: Annotated[bool, typer.Option("--cas", help="Delete only if --modify-index matches.")] = False,
    modify_index: Annotated[int | None, typer.Option("--modify-index", help="With --cas: the expected index.")] = None,
) -> None:
    """Delete a key, or a whole prefix with --recurse."""

    def body() -> None:
        if not key and not recurse:
            raise CLIError("missing key: give a key, or --recurse with a prefix")
        if cas and recurse:
            raise CLIError("--cas cannot be combined with --recurse")
        params: dict[str, Any] = {"recurse": recurse}
        if cas:
            if modify_index is None:
                raise CLIError("--cas needs --modify-index")
            params["cas"] = modify_index
        ok = _client(http_addr).delete(f"/v1/kv/{key}", params=params).json()
        if not ok:
            raise CLIError(f"Did not delete key {key}: CAS failed")
        typer.echo(f"Success! Deleted keys with prefix: {key}" if recurse else f"Success! Deleted key: {key}")

    _run(body)


@kv_app.command("export")
def kv_export(prefix: Annotated[str, typer.Argument(help="Prefix to export (all keys if empty).")] = "",
              http_addr: HttpAddr = None) -> None:
    """Print every key under a prefix as Consul's export JSON (for `kv import`)."""

    def body() -> None:
        resp = _client(http_addr).get(f"/v1/kv/{prefix}", params={"recurse": True}, ok404=True)
        entries = resp.json() if resp.status == 200 else []
        _print_json([{"key": e["Key"], "flags": e["Flags"], "value": e["Value"] or ""} for e in entries])

    _run(body)


@kv_app.command("import")
def kv_import(
    data: Annotated[str, typer.Argument(help="Export JSON: @file, - for stdin, or the JSON itself.")] = "-",
    http_addr: HttpAddr = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Prepend this to every imported key.")] = "",
) -> None:
    """Write keys from `kv export` JSON, e.g. `proconsul kv import @backup.json`."""

    def body() -> None:
        try:
            entries = json.loads(_read_value(data))
        except json.JSONDecodeError as e:
            raise CLIError(f"import data is not JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(entries, list):
            raise CLIError("import data must be a JSON list of {key, flags, value} objects")
        decoded = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("key"), str):
                raise CLIError(f"import entry {i} must be an object with a string key")
            try:
                value = base64.b64decode(e.get("value") or "", validate=True)
            except ValueError:
                raise CLIError(f"import entry {i} ({e['key']}): value is not base64") from None
            decoded.append((prefix + e["key"], int(e.get("flags") or 0), value))
        client = _client(http_addr)
        for key, flags, value in decoded:
            client.put(f"/v1/kv/{key}", params={"flags": flags or None}, raw=value)
            typer.echo(f"Imported: {key}")

    _run(body)


# ---------------------------------------------------------------------- snapshot
snapshot_app = typer.Typer(help="Save, restore and inspect snapshots of the server state.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("save")
def snapshot_save(file: Annotated[str, typer.Argument(help="Where to write the snapshot.")],
                  http_addr: HttpAddr = None) -> None:
    """Save a consistent snapshot of the state store to FILE (verified before it is kept)."""
    from . import snapshot as snap

    def body() -> None:
        data = _client(http_addr).get("/v1/snapshot").body
        try:
            header = snap.read(data).header
        except snap.SnapshotError as e:
            raise CLIError(f"the agent sent a bad snapshot: {e}") from None
        tmp = file + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, file)
        except OSError as e:
            raise CLIError(f"cannot write {file}: {e.strerror}") from None
        typer.echo(f"Saved and verified snapshot to index {header['Index']}")

    _run(body)


@snapshot_app.command("restore")
def snapshot_restore(file: Annotated[str, typer.Argument(help="A snapshot written by `snapshot save`.")],
                     http_addr: HttpAddr = None) -> None:
    """Replace the whole state with a snapshot."""

    def body() -> None:
        _client(http_addr).put("/v1/snapshot", raw=_read_value("@" + file))
        typer.echo("Restored snapshot")

    _run(body)


@snapshot_app.command("inspect")
def snapshot_inspect(file: Annotated[str, typer.Argument(help="A snapshot file.")], fmt: Format = "table") -> None:
    """Show a snapshot's header and how many rows each table holds (reads the file only)."""
    from . import snapshot as snap

    _check_format(fmt)

    def body() -> None:
        try:
            data = snap.inspect(snap.read(_read_value("@" + file)))
        except snap.SnapshotError as e:
            raise CLIError(f"{file}: {e}") from None
        if fmt == "json":
            return _print_json(data)
        _table(None, ["Field", "Value"], [[k, data[k]] for k in ("Index", "Datacenter", "Created", "Size", "SHA256")])
        _table(None, ["Table", "Rows"], [[k, v] for k, v in data["Counts"].items()])

    _run(body)


def _add_connect_commands() -> None:
    from .cli_connect import connect_app, intention_app, tls_app

    app.add_typer(intention_app, name="intention")
    app.add_typer(connect_app, name="connect")
    app.add_typer(tls_app, name="tls")


_add_connect_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
