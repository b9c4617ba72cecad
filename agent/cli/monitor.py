"""`proconsul monitor`: stream the agent's logs (Consul's `consul monitor`)."""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import HttpAddr
from proconsul.agent.cli.output import client, run


def monitor(http_addr: HttpAddr = None,
            log_level: Annotated[str, typer.Option("--log-level", help="trace, debug, info, warn or error.")] = "info",
            log_json: Annotated[bool, typer.Option("--log-json", help="Lines as JSON.")] = False) -> None:
    """Stream the agent's log lines until interrupted (Ctrl-C)."""

    def body() -> None:
        try:
            for line in client(http_addr).stream("/v1/agent/monitor",
                                                 params={"loglevel": log_level, "logjson": log_json}):
                typer.echo(line)
        except KeyboardInterrupt:
            pass

    run(body)


def register(app: typer.Typer) -> None:
    app.command()(monitor)
