"""`proconsul config …`: Consul's centralized config entries (`config write entry.hcl`, read, list, delete)."""

from __future__ import annotations

from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError, Datacenter, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, run, table

config_app = typer.Typer(help="Write, read, list and delete config entries (service-defaults, proxy-defaults, …).",
                         no_args_is_help=True)
Kind = Annotated[str, typer.Option("--kind", help="The entry's kind (service-defaults, proxy-defaults, …).")]
Name = Annotated[str, typer.Option("--name", help="The entry's name.")]


@config_app.command("write")
def write(file: Annotated[str, typer.Argument(help="An entry as HCL or JSON (snake_case or PascalCase keys).")],
          cas: Annotated[bool, typer.Option("--cas", help="Write only if unchanged since -modify-index.")] = False,
          modify_index: Annotated[int, typer.Option("--modify-index", help="The index for -cas.")] = 0,
          http_addr: HttpAddr = None, datacenter: Datacenter = None) -> None:
    """Create or update a config entry from a file (Consul's `config write`)."""
    from proconsul.agent.config.files import load_file
    from proconsul.agent.config.model import ConfigError

    def body() -> None:
        try:
            entry = load_file(file)
        except ConfigError as e:
            raise CLIError(str(e)) from None
        params = {"cas": str(modify_index)} if cas else None
        ok = client(http_addr, datacenter).put("/v1/config", body=entry, params=params).json()
        kind = entry.get("Kind") or entry.get("kind")
        name = entry.get("Name") or entry.get("name")
        if ok is False:
            raise CLIError(f"Config entry not updated: {kind}/{name} changed since index {modify_index}")
        typer.echo(f'Config entry written: {kind}/{name}')

    run(body)


@config_app.command("read")
def read(kind: Kind, name: Name, http_addr: HttpAddr = None, datacenter: Datacenter = None) -> None:
    """Print one config entry as JSON."""
    run(lambda: print_json(client(http_addr, datacenter).get(f"/v1/config/{kind}/{name}").json()))


@config_app.command("list")
def list_(kind: Kind, http_addr: HttpAddr = None, datacenter: Datacenter = None, fmt: Format = "table") -> None:
    """List the entries of one kind."""
    check_format(fmt)

    def body() -> None:
        rows = client(http_addr, datacenter).get(f"/v1/config/{kind}").json() or []
        if fmt == "json":
            return print_json(rows)
        if not rows:
            typer.echo(f"No {kind} entries.")
            return None
        table(None, ["Name", "ModifyIndex"], [[r["Name"], r.get("ModifyIndex", "")] for r in rows])

    run(body)


@config_app.command("delete")
def delete(kind: Kind, name: Name, http_addr: HttpAddr = None, datacenter: Datacenter = None) -> None:
    """Delete a config entry."""

    def body() -> None:
        client(http_addr, datacenter).delete(f"/v1/config/{kind}/{name}")
        typer.echo(f"Config entry deleted: {kind}/{name}")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
