"""What every CLI command shares: one-line errors, the HTTP client, JSON and table output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from proconsul.agent.cli.client import Client, CLIError


def fail(message: str) -> typer.Exit:
    """Print one readable line to stderr and return the exit to raise (status 1)."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)



def client(addr: str | None, datacenter: str | None = None) -> Client:
    try:
        return Client(addr, datacenter=datacenter)
    except CLIError as e:
        raise fail(str(e)) from None


def check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        raise fail(f"--format must be 'table' or 'json', not {fmt!r}")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    tbl = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in columns:
        tbl.add_column(col, overflow="fold")
    for row in rows:
        tbl.add_row(*["" if v is None else str(v) for v in row])
    Console(width=max(120, Console().width)).print(tbl)


def run(fn: Callable[[], None]) -> None:
    """Run a command body; a CLIError becomes one line on stderr and exit status 1."""
    try:
        fn()
    except CLIError as e:
        raise fail(str(e)) from None


def read_value(value: str) -> bytes:
    """Consul's value forms: `@file` reads a file, `-` reads stdin, anything else is the value itself."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                return f.read()
        except OSError as e:
            raise CLIError(f"cannot read {value[1:]}: {e.strerror}") from None
    return value.encode()
