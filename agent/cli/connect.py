"""`proconsul connect …`: the service mesh's certificate authority."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError, HttpAddr
from proconsul.agent.cli.output import client, print_json, run

connect_app = typer.Typer(help="Connect: the service mesh's certificate authority.", no_args_is_help=True)
ca_app = typer.Typer(help="Read and change the Connect CA's configuration.", no_args_is_help=True)
connect_app.add_typer(ca_app, name="ca")



@ca_app.command("get-config")
def ca_get_config(http_addr: HttpAddr = None) -> None:
    """Print the Connect CA configuration as JSON."""
    run(lambda: print_json(client(http_addr).get("/v1/connect/ca/configuration").json()))


@ca_app.command("set-config")
def ca_set_config(
    config_file: Annotated[str, typer.Option("--config-file", help="JSON file with Provider and Config.")],
    http_addr: HttpAddr = None,
) -> None:
    """Change the CA configuration; a new PrivateKey/RootCert rotates the root (cross-signed)."""

    def body() -> None:
        try:
            data = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CLIError(f"cannot read {config_file}: {e}") from None
        client(http_addr).put("/v1/connect/ca/configuration", body=data)
        typer.echo("Configuration updated!")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(connect_app, name="connect")
