"""`proconsul maint`: node or service maintenance mode (Consul's `consul maint`)."""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError, HttpAddr
from proconsul.agent.cli.output import client, run, table


def maint(enable: Annotated[bool, typer.Option("--enable", help="Turn maintenance on.")] = False,
          disable: Annotated[bool, typer.Option("--disable", help="Turn maintenance off.")] = False,
          service: Annotated[str, typer.Option("--service", help="A service ID (default: the whole node).")] = "",
          reason: Annotated[str, typer.Option("--reason", help="Why (shown in the check's notes).")] = "",
          http_addr: HttpAddr = None) -> None:
    """Put the node or one service in maintenance mode (or take it out); with no flag, list what is in it."""
    if enable and disable:
        raise typer.BadParameter("give -enable or -disable, not both")

    def body() -> None:
        api = client(http_addr)
        if not enable and not disable:
            checks = api.get("/v1/agent/checks").json()
            rows = [[c["ServiceID"] or "(node)", c["Notes"]] for c in checks.values()
                    if c["CheckID"] == "_node_maintenance" or c["CheckID"].startswith("_service_maintenance:")]
            if not rows:
                typer.echo("Nothing is in maintenance mode.")
                return
            table(None, ["Maintenance", "Reason"], rows)
            return
        params = {"enable": "true" if enable else "false", "reason": reason or None}
        if service:
            resp = api.put(f"/v1/agent/service/maintenance/{service}", params=params, ok404=True)
            if resp.status == 404:
                raise CLIError(f"No service registered with ID {service!r}")
            typer.echo(f"Service maintenance is now {'enabled' if enable else 'disabled'}")
        else:
            api.put("/v1/agent/maintenance", params=params)
            typer.echo(f"Node maintenance is now {'enabled' if enable else 'disabled'}")

    run(body)


def register(app: typer.Typer) -> None:
    app.command()(maint)
