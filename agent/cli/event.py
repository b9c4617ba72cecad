"""`proconsul event -name NAME [-node RE] [-service RE] [-tag RE] [payload]`: fire a user event (Consul's
`consul event`), through the agent's `PUT /v1/event/fire/:name`. Handle events with `proconsul watch -type event`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError, HttpAddr
from proconsul.agent.cli.output import check_format, client, fail, print_json, read_value, run
from proconsul.agent.local.events import EventError, new_event


def event(payload: Annotated[list[str] | None, typer.Argument(
              help="The event's payload (small: name and payload share 512 bytes); '-' reads stdin, @file a file.")] = None,
          name: Annotated[str, typer.Option("--name", help="The event's name (required).")] = "",
          node: Annotated[str, typer.Option("--node", help="Regular expression: only nodes whose name matches.")] = "",
          service: Annotated[str, typer.Option("--service",
                                               help="Regular expression: only nodes running a matching service.")] = "",
          tag: Annotated[str, typer.Option("--tag", help="Regular expression on the service's tags (needs -service).")
                         ] = "",
          format_: Annotated[str, typer.Option("--format", help="table (its ID) or json (the fired event).")] = "table",
          http_addr: HttpAddr = None) -> None:
    """Fire a user event to the datacenter; agents whose node and services match the filters deliver it."""
    check_format(format_)
    if len(payload or []) > 1:
        raise fail("Too many command line arguments: the payload is one argument (quote it)")
    if not name:
        raise fail("Event name must be specified (-name)")
    try:
        data = read_value((payload or [""])[0])
    except CLIError as e:
        raise fail(str(e)) from None
    try:
        new_event(name, data, node, service, tag)  # Consul's checks, before anything is sent
    except EventError as e:
        raise fail(str(e)) from None

    def body() -> None:
        resp = client(http_addr).put(f"/v1/event/fire/{name}", raw=data,
                                     params={"node": node or None, "service": service or None, "tag": tag or None})
        fired = resp.json()
        if not isinstance(fired, dict) or "ID" not in fired:
            raise CLIError(f"unexpected answer from the agent: {fired!r}")
        if format_ == "json":
            print_json(fired)
        else:
            typer.echo(f"Event ID: {fired['ID']}")

    run(body)


def register(app: typer.Typer) -> None:
    app.command()(event)
