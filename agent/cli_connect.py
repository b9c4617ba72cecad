"""`proconsul intention …`, `proconsul connect ca …` and `proconsul tls …`."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_client import CLIError, Format, HttpAddr

intention_app = typer.Typer(help="Create, inspect and test service-to-service intentions.", no_args_is_help=True)
connect_app = typer.Typer(help="Connect: the service mesh's certificate authority.", no_args_is_help=True)
ca_app = typer.Typer(help="Read and change the Connect CA's configuration.", no_args_is_help=True)
connect_app.add_typer(ca_app, name="ca")
tls_app = typer.Typer(help="Make certificates for agent TLS.", no_args_is_help=True)
tls_ca_app = typer.Typer(help="Make a CA for agent TLS.", no_args_is_help=True)
tls_cert_app = typer.Typer(help="Make server, client or CLI certificates.", no_args_is_help=True)
tls_app.add_typer(tls_ca_app, name="ca")
tls_app.add_typer(tls_cert_app, name="cert")


def _cli() -> Any:
    from . import cli  # the shared options and output helpers live there

    return cli


def _meta(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--meta {item!r} must be key=value")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _find(client: Any, source: str, destination: str | None) -> dict[str, Any]:
    """An intention by source+destination, or by ID when only one argument is given."""
    if destination is None:
        resp = client.get(f"/v1/connect/intentions/{source}", ok404=True)
    else:
        resp = client.get("/v1/connect/intentions/exact", params={"source": source, "destination": destination},
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
    http_addr: HttpAddr = None,
) -> None:
    """Create an intention, e.g. `proconsul intention create --deny web db`."""
    cli = _cli()

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
        client = cli._client(http_addr)
        for ixn in items:
            if not isinstance(ixn, dict):
                raise CLIError(f"{file}: each intention must be a JSON object")
            src, dst = ixn.get("SourceName"), ixn.get("DestinationName")
            exists = client.get("/v1/connect/intentions/exact", params={"source": src, "destination": dst},
                                ok404=True).status == 200
            if exists and not replace:
                raise CLIError(f"an intention {src} => {dst} already exists; use --replace to change it")
            client.put("/v1/connect/intentions/exact", params={"source": src, "destination": dst}, body=ixn)
            typer.echo(f"Created: {src} => {dst} ({ixn.get('Action') or 'L7 permissions'})")

    cli._run(body)


@intention_app.command("delete")
def intention_delete(
    source: Annotated[str, typer.Argument(help="Source service, or the intention's ID.")],
    destination: Annotated[str | None, typer.Argument(help="Destination service.")] = None,
    http_addr: HttpAddr = None,
) -> None:
    """Delete an intention by SOURCE DESTINATION, or by ID."""
    cli = _cli()

    def body() -> None:
        client = cli._client(http_addr)
        ixn = _find(client, source, destination)
        client.delete(f"/v1/connect/intentions/{ixn['ID']}")
        typer.echo("Intention deleted.")

    cli._run(body)


@intention_app.command("get")
def intention_get(
    source: Annotated[str, typer.Argument(help="Source service, or the intention's ID.")],
    destination: Annotated[str | None, typer.Argument(help="Destination service.")] = None,
    http_addr: HttpAddr = None,
    fmt: Format = "table",
) -> None:
    """Show one intention."""
    cli = _cli()
    cli._check_format(fmt)

    def body() -> None:
        ixn = _find(cli._client(http_addr), source, destination)
        if fmt == "json":
            return cli._print_json(ixn)
        cli._table(None, ["Field", "Value"], [[k, ixn.get(k)] for k in (
            "ID", "SourceName", "DestinationName", "Action", "Precedence", "Description", "Meta", "CreatedAt",
            "UpdatedAt")] + ([["Permissions", json.dumps(ixn["Permissions"])]] if ixn.get("Permissions") else []))

    cli._run(body)


@intention_app.command("list")
def intention_list(
    http_addr: HttpAddr = None,
    fmt: Format = "table",
) -> None:
    """List every intention, most specific first."""
    cli = _cli()
    cli._check_format(fmt)

    def body() -> None:
        data = cli._client(http_addr).get("/v1/connect/intentions").json()
        if fmt == "json":
            return cli._print_json(data)
        cli._table(None, ["ID", "Source", "Action", "Destination", "Precedence"],
                   [[i["ID"], i["SourceName"], i["Action"] or "L7", i["DestinationName"], i["Precedence"]]
                    for i in data])

    cli._run(body)


@intention_app.command("check")
def intention_check(
    source: Annotated[str, typer.Argument(help="Source service.")],
    destination: Annotated[str, typer.Argument(help="Destination service.")],
    http_addr: HttpAddr = None,
) -> None:
    """Would SOURCE be allowed to connect to DESTINATION? Prints Allowed (exit 0) or Denied (exit 2)."""
    cli = _cli()
    result: dict[str, Any] = {}

    def body() -> None:
        result.update(cli._client(http_addr).get("/v1/connect/intentions/check",
                                                 params={"source": source, "destination": destination}).json())

    cli._run(body)
    typer.echo("Allowed" if result["Allowed"] else "Denied")
    if not result["Allowed"]:
        raise typer.Exit(2)


@intention_app.command("match")
def intention_match(
    name: Annotated[str, typer.Argument(help="Service name.")],
    source: Annotated[bool, typer.Option("--source", help="Intentions with NAME as source.")] = False,
    destination: Annotated[bool, typer.Option("--destination", help="…as destination (default).")] = False,
    http_addr: HttpAddr = None,
    fmt: Format = "table",
) -> None:
    """List the intentions that apply to NAME, most specific first."""
    cli = _cli()
    cli._check_format(fmt)

    def body() -> None:
        if source and destination:
            raise CLIError("--source and --destination cannot both be given")
        data = cli._client(http_addr).get("/v1/connect/intentions/match", params={
            "by": "source" if source else "destination", "name": name}).json()[name]
        if fmt == "json":
            return cli._print_json(data)
        for i in data:
            typer.echo(f"{i['SourceName']} => {i['DestinationName']} ({i['Action'] or 'L7'})")

    cli._run(body)


@ca_app.command("get-config")
def ca_get_config(http_addr: HttpAddr = None) -> None:
    """Print the Connect CA configuration as JSON."""
    cli = _cli()
    cli._run(lambda: cli._print_json(cli._client(http_addr).get("/v1/connect/ca/configuration").json()))


@ca_app.command("set-config")
def ca_set_config(
    config_file: Annotated[str, typer.Option("--config-file", help="JSON file with Provider and Config.")],
    http_addr: HttpAddr = None,
) -> None:
    """Change the CA configuration; a new PrivateKey/RootCert rotates the root (cross-signed)."""
    cli = _cli()

    def body() -> None:
        try:
            data = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CLIError(f"cannot read {config_file}: {e}") from None
        cli._client(http_addr).put("/v1/connect/ca/configuration", body=data)
        typer.echo("Configuration updated!")

    cli._run(body)


def _write(path: Path, text: str, private: bool = False) -> None:
    if path.exists():
        raise CLIError(f"{path} already exists; refusing to overwrite it")
    path.write_text(text)
    if private:
        os.chmod(path, 0o600)
    typer.echo(f"==> Saved {path}")


@tls_ca_app.command("create")
def tls_ca_create(
    domain: Annotated[str, typer.Option("--domain", help="DNS domain the CA may sign for.")] = "mesh",
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 1825,
) -> None:
    """Create proconsul-agent-ca.pem and proconsul-agent-ca-key.pem in the current directory."""
    from proconsul.connect.errors import ConnectError
    from proconsul.connect.tls import create_ca

    cli = _cli()

    def body() -> None:
        try:
            cert, key = create_ca(domain, dt.datetime.now(dt.UTC), secrets.randbits(63), days)
        except ConnectError as e:
            raise CLIError(str(e)) from None
        _write(Path("proconsul-agent-ca.pem"), cert)
        _write(Path("proconsul-agent-ca-key.pem"), key, private=True)

    cli._run(body)


@tls_cert_app.command("create")
def tls_cert_create(
    server: Annotated[bool, typer.Option("--server", help="A server certificate.")] = False,
    client: Annotated[bool, typer.Option("--client", help="A client agent certificate.")] = False,
    cli_cert: Annotated[bool, typer.Option("--cli", help="A certificate for the CLI.")] = False,
    dc: Annotated[str, typer.Option("--dc", help="Datacenter.")] = "dc1",
    domain: Annotated[str, typer.Option("--domain", help="DNS domain.")] = "mesh",
    ca_file: Annotated[str, typer.Option("--ca", help="CA certificate.")] = "proconsul-agent-ca.pem",
    key_file: Annotated[str, typer.Option("--key", help="CA key.")] = "proconsul-agent-ca-key.pem",
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 365,
    dns: Annotated[list[str] | None, typer.Option("--additional-dnsname", help="Extra DNS SAN (repeatable).")] = None,
    ips: Annotated[list[str] | None, typer.Option("--additional-ipaddress", help="Extra IP SAN (repeatable).")] = None,
) -> None:
    """Create <dc>-<kind>-proconsul-<n>.pem and its key, signed by the agent CA."""
    from proconsul.connect.errors import ConnectError
    from proconsul.connect.tls import create_cert

    cli = _cli()

    def body() -> None:
        kinds = [k for k, on in (("server", server), ("client", client), ("cli", cli_cert)) if on]
        if len(kinds) != 1:
            raise CLIError("give exactly one of --server, --client, --cli")
        try:
            ca_pem, ca_key = Path(ca_file).read_text(), Path(key_file).read_text()
        except OSError as e:
            raise CLIError(f"cannot read the CA: {e.filename}: {e.strerror} (run `proconsul tls ca create`)") from None
        try:
            cert, key = create_cert(kinds[0], dc, domain, ca_pem, ca_key, dt.datetime.now(dt.UTC),
                                    secrets.randbits(63), days, dns, ips)
        except ConnectError as e:
            raise CLIError(str(e)) from None
        n = 0
        while Path(f"{dc}-{kinds[0]}-proconsul-{n}.pem").exists():
            n += 1
        _write(Path(f"{dc}-{kinds[0]}-proconsul-{n}.pem"), cert)
        _write(Path(f"{dc}-{kinds[0]}-proconsul-{n}-key.pem"), key, private=True)

    cli._run(body)
