"""`proconsul services …`: register and deregister services with the local agent."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, HttpAddr
from proconsul.agent.cli.output import client, run

services_app = typer.Typer(help="Register and deregister services with the local agent.", no_args_is_help=True)


def _service_definitions(path: str) -> list[dict[str, Any]]:
    from proconsul.agent.config.files import load_file
    from proconsul.agent.config.model import ConfigError
    from proconsul.agent.local.definitions import DefinitionError, service_definition

    try:
        data = load_file(path)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    raw: list[Any] = []
    for key, value in data.items():
        if key in ("service", "Service"):
            raw.extend(value if isinstance(value, list) else [value])
        elif key in ("services", "Services"):
            raw.extend(value if isinstance(value, list) else [value])
        else:
            raise CLIError(f"{path}: unexpected key {key!r}: a service file holds `service` or `services`")
    if not raw:
        raise CLIError(f"{path}: no service definition found (expected a `service` block)")
    out = []
    for i, item in enumerate(raw):
        try:
            service_definition(item, f"{path}: service[{i}]")
        except DefinitionError as e:
            raise CLIError(str(e)) from None
        out.append(item)
    return out


@services_app.command("register")
def services_register(
    files: Annotated[list[str], typer.Argument(help="JSON or HCL files with a `service` block or `services` list.")],
    http_addr: HttpAddr = None,
) -> None:
    """Register services from definition files (Consul's format), e.g. `proconsul services register web.hcl`."""

    def body() -> None:
        api = client(http_addr)
        for path in files:
            for svc in _service_definitions(path):
                api.put("/v1/agent/service/register", body=svc)
                name = next((svc[k] for k in ("Name", "name", "Service") if k in svc), "?")
                typer.echo(f"Registered service: {name}")

    run(body)


@services_app.command("deregister")
def services_deregister(
    service_id: Annotated[str | None, typer.Argument(help="ID of the service to deregister.")] = None,
    id_: Annotated[str, typer.Option("--id", help="ID of the service to deregister.")] = "",
    files: Annotated[list[str] | None, typer.Option("--file", help="Deregister the services in this file.")] = None,
    http_addr: HttpAddr = None,
) -> None:
    """Deregister a service from the local agent by ID (or every service in a definition file)."""

    def body() -> None:
        ids = [x for x in (service_id, id_) if x]
        for path in files or []:
            for svc in _service_definitions(path):
                ids.append(svc.get("ID") or svc.get("id") or svc.get("Name") or svc.get("name"))
        if not ids:
            raise CLIError("give a service ID (argument or --id) or --file")
        api = client(http_addr)
        for sid in ids:
            api.put(f"/v1/agent/service/deregister/{sid}")
            typer.echo(f"Deregistered service: {sid}")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(services_app, name="services")
