"""`proconsul kv …`: read and write the key/value store."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, Datacenter, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, read_value, run

kv_app = typer.Typer(help="Read and write the key/value store.", no_args_is_help=True)


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(help="Key (or prefix with --recurse/--keys).")] = "",
    http_addr: HttpAddr = None, datacenter: Datacenter = None, fmt: Format = "table",
    recurse: Annotated[bool, typer.Option("--recurse", help="Every key under the prefix, as key:value.")] = False,
    keys: Annotated[bool, typer.Option("--keys", help="List keys under the prefix.")] = False,
    separator: Annotated[str, typer.Option("--separator", help="With --keys: list up to this separator.")] = "/",
    detailed: Annotated[bool, typer.Option("--detailed", help="Show every field of the entry.")] = False,
    base64_: Annotated[bool, typer.Option("--base64", help="Print values base64-encoded.")] = False,
) -> None:
    """Read a key; `--recurse` for a prefix; `--keys` to list keys."""
    check_format(fmt)

    def body() -> None:
        api = client(http_addr, datacenter)
        path = f"/v1/kv/{key}"
        if keys:
            resp = api.get(path, params={"keys": True, "separator": separator or None}, ok404=True)
            data = resp.json() if resp.status == 200 else []
            if fmt == "json":
                return print_json(data)
            for k in data:
                typer.echo(k)
            return
        if not key and not recurse:
            raise CLIError("missing key: give a key, or --recurse for everything")
        resp = api.get(path, params={"recurse": recurse}, ok404=True)
        if resp.status == 404:
            if recurse:
                return print_json([]) if fmt == "json" else None
            raise CLIError(f"No key exists at: {key}")
        entries = resp.json()
        if fmt == "json":
            return print_json(entries)
        for e in entries:
            value = base64.b64decode(e["Value"]) if e.get("Value") else b""
            shown = base64.b64encode(value).decode() if base64_ else value.decode(errors="replace")
            if detailed:
                for field in ("CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session"):
                    typer.echo(f"{field:<16}{e.get(field, '-') if e.get(field, '') != '' else '-'}")
                typer.echo(f"{'Value':<16}{shown}")
                if len(entries) > 1:
                    typer.echo("")
            elif recurse:
                typer.echo(f"{e['Key']}:{shown}")
            else:
                typer.echo(shown)

    run(body)


@kv_app.command("put")
def kv_put(
    key: Annotated[str, typer.Argument(help="Key to write.")],
    value: Annotated[str, typer.Argument(help="Value, @file to read a file, or - for stdin.")] = "",
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
    cas: Annotated[bool, typer.Option("--cas", help="Check-and-set: write only if --modify-index matches.")] = False,
    modify_index: Annotated[int | None, typer.Option("--modify-index", help="With --cas: the expected index (0 = create only).")] = None,
    flags: Annotated[int, typer.Option("--flags", help="Opaque unsigned integer stored with the key.")] = 0,
    acquire: Annotated[bool, typer.Option("--acquire", help="Acquire the key's lock with --session.")] = False,
    release: Annotated[bool, typer.Option("--release", help="Release the key's lock held by --session.")] = False,
    session: Annotated[str, typer.Option("--session", help="Session for --acquire/--release.")] = "",
    base64_: Annotated[bool, typer.Option("--base64", help="The value is base64: decode it before writing.")] = False,
) -> None:
    """Write a key, e.g. `proconsul kv put config/web/max_conns 100`."""

    def body() -> None:
        data = read_value(value)
        if base64_:
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError:
                raise CLIError("--base64 given but the value is not valid base64") from None
        params: dict[str, Any] = {"flags": flags or None}
        if cas:
            if modify_index is None:
                raise CLIError("--cas needs --modify-index (0 to create only if absent)")
            params["cas"] = modify_index
        if acquire or release:
            if not session:
                raise CLIError("--acquire and --release need --session")
            params["acquire" if acquire else "release"] = session
        ok = client(http_addr, datacenter).put(f"/v1/kv/{key}", params=params, raw=data).json()
        if not ok:
            what = "CAS failed" if cas else "lock is held by another session" if acquire else "not written"
            raise CLIError(f"Did not write to {key}: {what}")
        typer.echo(f"Success! Data written to: {key}")

    run(body)


@kv_app.command("delete")
def kv_delete(
    key: Annotated[str, typer.Argument(help="Key (or prefix with --recurse).")] = "",
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
    recurse: Annotated[bool, typer.Option("--recurse", help="Delete every key under the prefix.")] = False,
    cas: Annotated[bool, typer.Option("--cas", help="Delete only if --modify-index matches.")] = False,
    modify_index: Annotated[int | None, typer.Option("--modify-index", help="With --cas: the expected index.")] = None,
) -> None:
    """Delete a key, or a whole prefix with --recurse."""

    def body() -> None:
        if not key and not recurse:
            raise CLIError("missing key: give a key, or --recurse with a prefix")
        if cas and recurse:
            raise CLIError("--cas cannot be combined with --recurse")
        params: dict[str, Any] = {"recurse": recurse}
        if cas:
            if modify_index is None:
                raise CLIError("--cas needs --modify-index")
            params["cas"] = modify_index
        ok = client(http_addr, datacenter).delete(f"/v1/kv/{key}", params=params).json()
        if not ok:
            raise CLIError(f"Did not delete key {key}: CAS failed")
        typer.echo(f"Success! Deleted keys with prefix: {key}" if recurse else f"Success! Deleted key: {key}")

    run(body)


@kv_app.command("export")
def kv_export(prefix: Annotated[str, typer.Argument(help="Prefix to export (all keys if empty).")] = "",
              http_addr: HttpAddr = None, datacenter: Datacenter = None) -> None:
    """Print every key under a prefix as Consul's export JSON (for `kv import`)."""

    def body() -> None:
        resp = client(http_addr, datacenter).get(f"/v1/kv/{prefix}", params={"recurse": True}, ok404=True)
        entries = resp.json() if resp.status == 200 else []
        print_json([{"key": e["Key"], "flags": e["Flags"], "value": e["Value"] or ""} for e in entries])

    run(body)


@kv_app.command("import")
def kv_import(
    data: Annotated[str, typer.Argument(help="Export JSON: @file, - for stdin, or the JSON itself.")] = "-",
    http_addr: HttpAddr = None, datacenter: Datacenter = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Prepend this to every imported key.")] = "",
) -> None:
    """Write keys from `kv export` JSON, e.g. `proconsul kv import @backup.json`."""

    def body() -> None:
        try:
            entries = json.loads(read_value(data))
        except json.JSONDecodeError as e:
            raise CLIError(f"import data is not JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(entries, list):
            raise CLIError("import data must be a JSON list of {key, flags, value} objects")
        decoded = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("key"), str):
                raise CLIError(f"import entry {i} must be an object with a string key")
            try:
                value = base64.b64decode(e.get("value") or "", validate=True)
            except ValueError:
                raise CLIError(f"import entry {i} ({e['key']}): value is not base64") from None
            decoded.append((prefix + e["key"], int(e.get("flags") or 0), value))
        api = client(http_addr, datacenter)
        for key, flags, value in decoded:
            api.put(f"/v1/kv/{key}", params={"flags": flags or None}, raw=value)
            typer.echo(f"Imported: {key}")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(kv_app, name="kv")
