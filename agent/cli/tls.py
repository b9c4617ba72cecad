"""`proconsul tls …`: make a CA and certificates for agent TLS."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError
from proconsul.agent.cli.output import run

tls_app = typer.Typer(help="Make certificates for agent TLS.", no_args_is_help=True)
tls_ca_app = typer.Typer(help="Make a CA for agent TLS.", no_args_is_help=True)
tls_cert_app = typer.Typer(help="Make server, client or CLI certificates.", no_args_is_help=True)
tls_app.add_typer(tls_ca_app, name="ca")
tls_app.add_typer(tls_cert_app, name="cert")




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


    def body() -> None:
        try:
            cert, key = create_ca(domain, dt.datetime.now(dt.UTC), secrets.randbits(63), days)
        except ConnectError as e:
            raise CLIError(str(e)) from None
        _write(Path("proconsul-agent-ca.pem"), cert)
        _write(Path("proconsul-agent-ca-key.pem"), key, private=True)

    run(body)


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

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(tls_app, name="tls")
