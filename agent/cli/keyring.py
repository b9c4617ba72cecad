"""`proconsul keygen` and `proconsul keyring -list|-list-primary|-install|-use|-remove` (Consul's commands).

Every keyring operation reaches every member of the pool (the agent asked fans it out, see
agent/cluster/keyring.py); the command exits 1 when any member failed to answer or reported an error,
as Consul's does.
"""

from __future__ import annotations

import base64
import os
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, fail, print_json, run, table


def keygen() -> None:
    """Print a new 32-byte gossip encryption key (base64, AES-256), as Consul's `keygen` does."""
    typer.echo(base64.b64encode(os.urandom(32)).decode())


def _pool(row: dict[str, Any]) -> str:
    return "WAN" if row.get("WAN") else f"{row.get('Datacenter', '')} (LAN)"


def keyring(http_addr: HttpAddr = None, fmt: Format = "table",
            list_keys: Annotated[bool, typer.Option("--list", help="List the keys installed on every member, "
                                                                   "with how many members hold each.")] = False,
            list_primary: Annotated[bool, typer.Option("--list-primary", help="List the primary keys in use, "
                                                                              "with how many members use each.")]
            = False,
            install: Annotated[str, typer.Option("--install", help="Install a new key on every member (it is "
                                                                   "accepted at once, used after --use).")] = "",
            use: Annotated[str, typer.Option("--use", help="Make an installed key the primary (the key frames "
                                                           "are sealed with) on every member.")] = "",
            remove: Annotated[str, typer.Option("--remove", help="Remove a key from every member (never the "
                                                                 "primary).")] = "",
            local_only: Annotated[bool, typer.Option("--local-only", help="With --list: ask no member of another "
                                                                          "datacenter.")] = False,
            relay_factor: Annotated[int, typer.Option("--relay-factor", help="Accepted for Consul's scripts "
                                                                              "(0-5); answers come back directly.")]
            = 0) -> None:
    """Examine and rotate the gossip encryption keys of the cluster (install → use → remove)."""
    check_format(fmt)
    chosen = [n for n, v in (("-list", list_keys), ("-list-primary", list_primary), ("-install", install),
                             ("-use", use), ("-remove", remove)) if v]
    if len(chosen) != 1:
        raise fail("give exactly one of -list, -list-primary, -install, -use, -remove"
                   + (f" (got {', '.join(chosen)})" if chosen else ""))
    if local_only and not (list_keys or list_primary):
        raise fail("-local-only applies to -list and -list-primary only")
    if not 0 <= relay_factor <= 5:
        raise fail("-relay-factor must be between 0 and 5")

    def body() -> None:
        api = client(http_addr)
        params = {"relay-factor": relay_factor or None, "local-only": "true" if local_only else None}
        if list_keys or list_primary:
            rows = api.get("/v1/operator/keyring", params=params).json()
            if fmt == "json":
                print_json(rows)
            else:
                field = "PrimaryKeys" if list_primary else "Keys"
                table(None, ["Pool", "Key", "Members"],
                      [[_pool(r), k, f"{n}/{r['NumNodes']}"] for r in rows for k, n in sorted(
                          r.get(field, {}).items(), key=lambda kv: -kv[1])])
                for r in rows:
                    for node, msg in sorted(r.get("Messages", {}).items()):
                        typer.echo(f"  {_pool(r)}: {node}: {msg}", err=True)
            if any(r.get("Messages") for r in rows):
                raise typer.Exit(1)
            return
        key, method, done = ((install, "POST", "Successfully installed key!") if install else
                             (use, "PUT", "Successfully changed primary key!") if use else
                             (remove, "DELETE", "Successfully removed key!"))
        api.call(method, "/v1/operator/keyring", body={"Key": key}, params={"relay-factor": relay_factor or None})
        if fmt == "json":
            print_json({"Operation": method, "Key": key, "Result": "ok"})
        else:
            typer.echo(done)

    run(body)


def register(app: typer.Typer) -> None:
    app.command()(keygen)
    app.command()(keyring)
