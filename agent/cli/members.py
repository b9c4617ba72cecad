"""Commands that talk to the local agent about itself and its cluster: version, members, info, reload, leave, join,
force-leave."""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, run, table
from proconsul.agent.version import CONSUL_COMPAT_VERSION, VERSION

_STATUS = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}


def version() -> None:
    """Print the Proconsul version and the Consul API version it speaks."""
    typer.echo(f"Proconsul v{VERSION}")
    typer.echo(f"Speaks the Consul HTTP API v1 (as Consul {CONSUL_COMPAT_VERSION})")


def members(http_addr: HttpAddr = None, fmt: Format = "table",
            wan: Annotated[bool, typer.Option("--wan", help="List WAN members.")] = False) -> None:
    """List the members of the cluster this agent knows."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/agent/members", params={"wan": wan}).json()
        if fmt == "json":
            return print_json(data)
        table(None, ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"],
               [[m["Name"], f"{m['Addr']}:{m['Port']}", _STATUS.get(m["Status"], m["Status"]),
                 "server" if m["Tags"].get("role") == "consul" else "client", m["Tags"].get("build", ""),
                 m.get("ProtocolCur", ""), m["Tags"].get("dc", "")] for m in data])

    run(body)


def info(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Show the agent's configuration summary and statistics."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/agent/self").json()
        if fmt == "json":
            return print_json(data)
        cfg = data["Config"]
        typer.echo(f"agent:\n\tnode = {cfg['NodeName']}\n\tdatacenter = {cfg['Datacenter']}\n"
                   f"\tserver = {str(cfg['Server']).lower()}\n\tversion = {cfg.get('ProconsulVersion', '')}")
        for section, values in sorted(data.get("Stats", {}).items()):
            typer.echo(f"{section}:")
            for k, v in sorted(values.items()):
                typer.echo(f"\t{k} = {v}")

    run(body)


def reload(http_addr: HttpAddr = None) -> None:
    """Make the agent re-read its configuration files (services, checks, log level)."""
    run(lambda: (client(http_addr).put("/v1/agent/reload"), typer.echo("Configuration reload triggered")))


def leave(http_addr: HttpAddr = None) -> None:
    """Make the agent leave the cluster gracefully and shut down."""
    run(lambda: (client(http_addr).put("/v1/agent/leave"), typer.echo("Graceful leave complete")))


def join(addresses: Annotated[list[str], typer.Argument(help="HOST[:LAN-PORT] of agents to join "
                                                          "(HOST[:WAN-PORT] of servers with --wan).")],
         http_addr: HttpAddr = None,
         wan: Annotated[bool, typer.Option("--wan", help="Join servers of other datacenters over the WAN "
                                                         "(run it on a server).")] = False) -> None:
    """Make the agent join a cluster through one or more of its members' LAN addresses."""

    def body() -> None:
        api = client(http_addr)
        for addr in addresses:
            api.put(f"/v1/agent/join/{addr}", params={"wan": wan})
        typer.echo(f"Successfully joined cluster by contacting {len(addresses)} node(s).")

    run(body)


def force_leave(node: Annotated[str, typer.Argument(help="Name of a failed member (<node>.<dc> with --wan).")],
                http_addr: HttpAddr = None,
                wan: Annotated[bool, typer.Option("--wan", help="Remove a failed server from the WAN pool.")] = False,
                prune: Annotated[bool, typer.Option("--prune", help="Forget the member at once instead of "
                                                                    "listing it as left.")] = False) -> None:
    """Mark a failed member as left, so the leader removes it from the catalog."""
    run(lambda: (client(http_addr).put(f"/v1/agent/force-leave/{node}", params={"wan": wan, "prune": prune}),
                  typer.echo(f"Member {node} marked as left")))


def register(app: typer.Typer) -> None:
    app.command()(version)
    app.command()(members)
    app.command()(info)
    app.command()(reload)
    app.command()(leave)
    app.command()(join)
    app.command("force-leave")(force_leave)
