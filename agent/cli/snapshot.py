"""`proconsul snapshot …`: save, restore and inspect snapshots of the server state."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from proconsul.agent.cli.client import CLIError, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, read_value, run, table

snapshot_app = typer.Typer(help="Save, restore and inspect snapshots of the server state.", no_args_is_help=True)


@snapshot_app.command("save")
def snapshot_save(file: Annotated[str, typer.Argument(help="Where to write the snapshot.")],
                  http_addr: HttpAddr = None) -> None:
    """Save a consistent snapshot of the state store to FILE (verified before it is kept)."""
    from proconsul.agent.cluster import snapshot as snap

    def body() -> None:
        data = client(http_addr).get("/v1/snapshot").body
        try:
            header = snap.read(data).header
        except snap.SnapshotError as e:
            raise CLIError(f"the agent sent a bad snapshot: {e}") from None
        tmp = file + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, file)
        except OSError as e:
            raise CLIError(f"cannot write {file}: {e.strerror}") from None
        typer.echo(f"Saved and verified snapshot to index {header['Index']}")

    run(body)


@snapshot_app.command("restore")
def snapshot_restore(file: Annotated[str, typer.Argument(help="A snapshot written by `snapshot save`.")],
                     http_addr: HttpAddr = None) -> None:
    """Replace the whole state with a snapshot."""

    def body() -> None:
        client(http_addr).put("/v1/snapshot", raw=read_value("@" + file))
        typer.echo("Restored snapshot")

    run(body)


@snapshot_app.command("inspect")
def snapshot_inspect(file: Annotated[str, typer.Argument(help="A snapshot file.")], fmt: Format = "table") -> None:
    """Show a snapshot's header and how many rows each table holds (reads the file only)."""
    from proconsul.agent.cluster import snapshot as snap

    check_format(fmt)

    def body() -> None:
        try:
            data = snap.inspect(snap.read(read_value("@" + file)))
        except snap.SnapshotError as e:
            raise CLIError(f"{file}: {e}") from None
        if fmt == "json":
            return print_json(data)
        table(None, ["Field", "Value"], [[k, data[k]] for k in ("Index", "Datacenter", "Created", "Size", "SHA256")])
        table(None, ["Table", "Rows"], [[k, v] for k, v in data["Counts"].items()])

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
