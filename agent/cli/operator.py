"""`proconsul operator …`: cluster operations for operators (Raft peers, leadership, autopilot)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, fail, print_json, run, table

operator_app = typer.Typer(help="Cluster operations for operators.", no_args_is_help=True)
raft_app = typer.Typer(help="Inspect and change the Raft configuration of the servers.", no_args_is_help=True)
operator_app.add_typer(raft_app, name="raft")
autopilot_app = typer.Typer(help="Autopilot: server health, promotion of new servers, dead-server cleanup.",
                            no_args_is_help=True)
operator_app.add_typer(autopilot_app, name="autopilot")
federation_app = typer.Typer(help="The link view of WAN federation; removing a dead datacenter.",
                             invoke_without_command=True)
operator_app.add_typer(federation_app, name="federation")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _ago(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s ago"


def _gateways(g: dict[str, Any] | None) -> str:
    """A datacenter's mesh gateways as probed: answering/listed, or why they could not be listed."""
    if not g:
        return "-"
    if g.get("Error"):
        return "?"
    ok = sum(1 for x in g["Gateways"] if x["OK"])
    return f"{ok}/{len(g['Gateways'])}" if g["Gateways"] else "none"


@federation_app.callback()
def federation_show(ctx: typer.Context, http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Per datacenter: servers alive, RTT, last contact, last forwarded call; replication from the primary."""
    if ctx.invoked_subcommand is not None:
        return
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/operator/federation").json()
        if fmt == "json":
            return print_json(data)
        gateways = (data.get("Extra") or {}).get("MeshGateways") or {}
        table(f"Datacenters seen from {data['Server']} ({data['Datacenter']}"
              f"{', primary ' + data['PrimaryDatacenter'] if data['PrimaryDatacenter'] else ''})",
              ["Datacenter", "Reachable", "Servers", "Gateways", "RTT", "Last contact", "Last forward", "Last error"],
              [[d["Datacenter"] + (" (local)" if d["Local"] else "") + (" (primary)" if d["Primary"] else ""),
                "yes" if d["Reachable"] else "NO", f"{d['AliveServers']}/{len(d['Servers'])}",
                _gateways(gateways.get(d["Datacenter"])), _ms(d["RTTMillis"]),
                "-" if d["Local"] else _ago(d["LastContactSeconds"]), _ago(d["LastForwardSecondsAgo"]),
                d["LastForwardError"]] for d in data["Datacenters"]])
        if data["Replication"]:
            table("Replication from the primary", ["Replicator", "Running", "Index", "Applied", "Last error"],
                  [[r["Name"], str(r["Running"]).lower(), str(r["ReplicatedIndex"]), str(r["Applied"]),
                    r["LastError"]] for r in data["Replication"]])

    run(body)


@federation_app.command("remove-dc")
def federation_remove_dc(datacenter: Annotated[str, typer.Argument(help="The dead datacenter to forget.")],
                         http_addr: HttpAddr = None) -> None:
    """Forget a datacenter whose servers are all gone, at once (Consul lists it for 72 h)."""

    def body() -> None:
        data = client(http_addr).delete(f"/v1/operator/federation/{datacenter}").json()
        typer.echo(f"Removed datacenter {datacenter}: {', '.join(data['Removed'])}")

    run(body)


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


AUTOPILOT_ORDER = ("CleanupDeadServers", "LastContactThreshold", "MaxTrailingLogs", "MinQuorum",
                   "ServerStabilizationTime", "RedundancyZoneTag", "DisableUpgradeMigration", "UpgradeVersionTag")


def _setting(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return '""' if v == "" else str(v)


@autopilot_app.command("get-config")
def autopilot_get_config(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Show autopilot's configuration."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/operator/autopilot/configuration").json()
        if fmt == "json":
            return print_json(data)
        for k in AUTOPILOT_ORDER:
            typer.echo(f"{k} = {_setting(data.get(k, ''))}")

    run(body)


def _bool_flag(name: str, v: str | None) -> bool | None:
    if v is None:
        return None
    if v.lower() not in ("true", "false"):
        raise fail(f"-{name} must be true or false, got {v!r}")
    return v.lower() == "true"


@autopilot_app.command("set-config")
def autopilot_set_config(
    cleanup_dead_servers: Annotated[str | None, typer.Option("--cleanup-dead-servers", metavar="BOOL",
                                                             help="Remove failed servers from Raft.")] = None,
    last_contact_threshold: Annotated[str | None, typer.Option(
        "--last-contact-threshold", help="Longest a server may go unheard by the leader and stay healthy.")] = None,
    max_trailing_logs: Annotated[int | None, typer.Option(
        "--max-trailing-logs", help="Most log entries a healthy server may trail the leader by.")] = None,
    min_quorum: Annotated[int | None, typer.Option(
        "--min-quorum", help="Voters that dead-server cleanup never goes below.")] = None,
    server_stabilization_time: Annotated[str | None, typer.Option(
        "--server-stabilization-time", help="How long a new server stays healthy before it may vote.")] = None,
    http_addr: HttpAddr = None,
) -> None:
    """Change autopilot's configuration; settings not given keep their values (compare-and-set)."""
    changes = {"CleanupDeadServers": _bool_flag("cleanup-dead-servers", cleanup_dead_servers),
               "LastContactThreshold": last_contact_threshold, "MaxTrailingLogs": max_trailing_logs,
               "MinQuorum": min_quorum, "ServerStabilizationTime": server_stabilization_time}

    def body() -> None:
        api = client(http_addr)
        current = api.get("/v1/operator/autopilot/configuration").json()
        new = {k: current.get(k) for k in AUTOPILOT_ORDER} | {k: v for k, v in changes.items() if v is not None}
        ok = api.put("/v1/operator/autopilot/configuration", params={"cas": current.get("ModifyIndex", 0)},
                     body=new).json()
        if ok is not True:
            raise fail("the configuration changed while it was being updated; run the command again")
        typer.echo("Configuration updated!")

    run(body)


@autopilot_app.command("state")
def autopilot_state(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Each server as autopilot sees it: health, voter status, how far behind, failure tolerance."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/operator/autopilot/state").json()
        if fmt == "json":
            return print_json(data)
        typer.echo(f"Healthy: {str(data['Healthy']).lower()}   Failure tolerance: {data['FailureTolerance']}   "
                   f"Leader: {data['Servers'].get(data['Leader'], {}).get('Name', data['Leader'] or '-')}")
        table(None, ["Name", "ID", "Address", "Status", "Healthy", "Last contact", "Last index", "Stable since"],
              [[srv["Name"], srv["ID"], srv["Address"], srv["Status"], str(srv["Healthy"]).lower(),
                srv["LastContact"], str(srv["LastIndex"]), srv["StableSince"]] for srv in data["Servers"].values()])

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(operator_app, name="operator")
