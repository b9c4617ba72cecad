"""`proconsul operator …`: cluster operations for operators (Raft peers, leadership)."""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, fail, print_json, run, table

operator_app = typer.Typer(help="Cluster operations for operators.", no_args_is_help=True)
raft_app = typer.Typer(help="Inspect and change the Raft configuration of the servers.", no_args_is_help=True)
operator_app.add_typer(raft_app, name="raft")


@raft_app.command("list-peers")
def raft_list_peers(http_addr: HttpAddr = None, fmt: Format = "table",
                    stale: Annotated[bool, typer.Option("--stale", help="Ask any server, not only the leader.")] = False
                    ) -> None:
    """List the Raft servers: node, ID, address, state (leader/follower), voter."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/operator/raft/configuration", params={"stale": stale}).json()
        if fmt == "json":
            return print_json(data)
        table(None, ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
               [[srv["Node"], srv["ID"], srv["Address"], "leader" if srv["Leader"] else "follower",
                 str(srv["Voter"]).lower(), srv.get("ProtocolVersion", "3")] for srv in data["Servers"]])

    run(body)


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
        client(http_addr).delete("/v1/operator/raft/peer", params={"id": peer_id or None,
                                                                   "address": address or None})
        typer.echo(f"Removed peer with {'id' if peer_id else 'address'} {peer_id or address!r}")

    run(body)


@raft_app.command("transfer-leader")
def raft_transfer_leader(
    peer_id: Annotated[str, typer.Option("--id", help="Raft ID of the new leader (default: the most caught-up voter).")] = "",
    http_addr: HttpAddr = None,
) -> None:
    """Hand leadership to another voter."""

    def body() -> None:
        client(http_addr).call("POST", "/v1/operator/raft/transfer-leader", params={"id": peer_id or None})
        typer.echo("Success")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(operator_app, name="operator")
