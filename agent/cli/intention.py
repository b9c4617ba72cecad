"""`proconsul intention …`: create, inspect and test service-to-service intentions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, Datacenter, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, run, table

intention_app = typer.Typer(help="Create, inspect and test service-to-service intentions.", no_args_is_help=True)


def _meta(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--meta {item!r} must be key=value")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _find(api: Any, source: str, destination: str | None) -> dict[str, Any]:
    """An intention by source+destination, or by ID when only one argument is given."""
    if destination is None:
        resp = api.get(f"/v1/connect/intentions/{source}", ok404=True)
    else:
        resp = api.get("/v1/connect/intentions/exact", params={"source": source, "destination": destination},
                          ok404=True)
    if resp.status == 404:
        raise CLIError(f"no intention {source}{' => ' + destination if destination else ''} found")
    return resp.json()


@intention_app.command("create")
def intention_create(
    source: Annotated[str | None, typer.Argument(help="Source service (or * for all).")] = None,
    destination: Annotated[str | None, typer.Argument(help="Destination service (or *).")] = None,
    allow: Annotated[bool, typer.Option("--allow", help="Allow the connection (default).")] = False,
    deny: Annotated[bool, typer.Option("--deny", help="Deny the connection.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing intention for the pair.")] = False,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="key=value metadata (repeatable).")] = None,
    file: Annotated[str | None, typer.Option("--file", help="JSON file of one intention or a list of them.")] = None,
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
) -> None:
    """Create an intention, e.g. `proconsul intention create --deny web db`."""

    def body() -> None:
        if allow and deny:
            raise CLIError("--allow and --deny cannot both be given")
        if file:
            try:
                data = json.loads(Path(file).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CLIError(f"cannot read intentions from {file}: {e}") from None
            items = data if isinstance(data, list) else [data]
        else:
            if not source or not destination:
                raise CLIError("give SOURCE and DESTINATION (or --file)")
            items = [{"SourceName": source, "DestinationName": destination, "Action": "deny" if deny else "allow",
                      "Meta": _meta(meta)}]
        api = client(http_addr, datacenter)
        for ixn in items:
            if not isinstance(ixn, dict):
                raise CLIError(f"{file}: each intention must be a JSON object")
            src, dst = ixn.get("SourceName"), ixn.get("DestinationName")
            exists = api.get("/v1/connect/intentions/exact", params={"source": src, "destination": dst},
                                ok404=True).status == 200
            if exists and not replace:
                raise CLIError(f"an intention {src} => {dst} already exists; use --replace to change it")
            api.put("/v1/connect/intentions/exact", params={"source": src, "destination": dst}, body=ixn)
            typer.echo(f"Created: {src} => {dst} ({ixn.get('Action') or 'L7 permissions'})")

    run(body)


@intention_app.command("delete")
def intention_delete(
    source: Annotated[str, typer.Argument(help="Source service, or the intention's ID.")],
    destination: Annotated[str | None, typer.Argument(help="Destination service.")] = None,
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
) -> None:
    """Delete an intention by SOURCE DESTINATION, or by ID."""

    def body() -> None:
        api = client(http_addr, datacenter)
        ixn = _find(api, source, destination)
        api.delete(f"/v1/connect/intentions/{ixn['ID']}")
        typer.echo("Intention deleted.")

    run(body)


@intention_app.command("get")
def intention_get(
    source: Annotated[str, typer.Argument(help="Source service, or the intention's ID.")],
    destination: Annotated[str | None, typer.Argument(help="Destination service.")] = None,
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
    fmt: Format = "table",
) -> None:
    """Show one intention."""
    check_format(fmt)

    def body() -> None:
        ixn = _find(client(http_addr, datacenter), source, destination)
        if fmt == "json":
            return print_json(ixn)
        table(None, ["Field", "Value"], [[k, ixn.get(k)] for k in (
            "ID", "SourceName", "DestinationName", "Action", "Precedence", "Description", "Meta", "CreatedAt",
            "UpdatedAt")] + ([["Permissions", json.dumps(ixn["Permissions"])]] if ixn.get("Permissions") else []))

    run(body)


@intention_app.command("list")
def intention_list(
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
    fmt: Format = "table",
) -> None:
    """List every intention, most specific first."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr, datacenter).get("/v1/connect/intentions").json()
        if fmt == "json":
            return print_json(data)
        table(None, ["ID", "Source", "Action", "Destination", "Precedence"],
                   [[i["ID"], i["SourceName"], i["Action"] or "L7", i["DestinationName"], i["Precedence"]]
                    for i in data])

    run(body)


@intention_app.command("check")
def intention_check(
    source: Annotated[str, typer.Argument(help="Source service.")],
    destination: Annotated[str, typer.Argument(help="Destination service.")],
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
) -> None:
    """Would SOURCE be allowed to connect to DESTINATION? Prints Allowed (exit 0) or Denied (exit 2)."""
    result: dict[str, Any] = {}

    def body() -> None:
        result.update(client(http_addr, datacenter).get("/v1/connect/intentions/check",
                                                 params={"source": source, "destination": destination}).json())

    run(body)
    typer.echo("Allowed" if result["Allowed"] else "Denied")
    if not result["Allowed"]:
        raise typer.Exit(2)


@intention_app.command("match")
def intention_match(
    name: Annotated[str, typer.Argument(help="Service name.")],
    source: Annotated[bool, typer.Option("--source", help="Intentions with NAME as source.")] = False,
    destination: Annotated[bool, typer.Option("--destination", help="…as destination (default).")] = False,
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
    fmt: Format = "table",
) -> None:
    """List the intentions that apply to NAME, most specific first."""
    check_format(fmt)

    def body() -> None:
        if source and destination:
            raise CLIError("--source and --destination cannot both be given")
        data = client(http_addr, datacenter).get("/v1/connect/intentions/match", params={
            "by": "source" if source else "destination", "name": name}).json()[name]
        if fmt == "json":
            return print_json(data)
        for i in data:
            typer.echo(f"{i['SourceName']} => {i['DestinationName']} ({i['Action'] or 'L7'})")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(intention_app, name="intention")
