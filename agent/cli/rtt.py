"""`proconsul rtt NODE1 [NODE2]`: the estimated round-trip time between two nodes from their network
coordinates (Consul's `consul rtt`); NODE2 defaults to the agent's own node."""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError, HttpAddr
from proconsul.agent.cli.output import client, fail, run
from proconsul.agent.cluster.vivaldi import Coordinate, CoordinateError, distance


def rtt(nodes: Annotated[list[str], typer.Argument(help="NODE1 [NODE2] (NODE2: this agent's node).")],
        wan: Annotated[bool, typer.Option("--wan", help="Use WAN coordinates (servers, NODE.DC).")] = False,
        http_addr: HttpAddr = None) -> None:
    """Estimate the round-trip time between two nodes from their network coordinates."""
    if len(nodes) > 2:
        raise fail("Too many arguments: give NODE1 and optionally NODE2")

    def body() -> None:
        api = client(http_addr)
        pair = list(nodes)
        if len(pair) == 1:
            pair.append(api.get("/v1/agent/self").json()["Config"]["NodeName"])
        if wan:
            rows = [c for dc in api.get("/v1/coordinate/datacenters").json() for c in dc["Coordinates"]]
        else:
            rows = api.get("/v1/coordinate/nodes").json()
        coords = {r["Node"].lower(): r["Coord"] for r in rows}
        found = []
        for name in pair:
            raw = coords.get(name.lower())
            if raw is None:
                raise CLIError(f"Could not find a coordinate for node {name!r}")
            try:
                found.append(Coordinate.from_json(raw))
            except CoordinateError as e:
                raise CLIError(f"node {name!r} has an unusable coordinate: {e}") from None
        ms = distance(found[0], found[1]) * 1000
        typer.echo(f"Estimated {pair[0]} <-> {pair[1]} rtt: {ms:.3f} ms (using {'WAN' if wan else 'LAN'} coordinates)")

    run(body)


def register(app: typer.Typer) -> None:
    app.command()(rtt)
