"""`proconsul watch -type … [handler]`: Consul's watches from the command line.

Each type follows one endpoint with blocking queries; every time its answer changes, the handler runs
with the answer as JSON on its stdin (and `CONSUL_INDEX` in its environment). For `-type event` the
handler gets only the events after the last one it was given, as Consul's event watch prunes them.
Without a handler the first answer is printed and the command exits, as Consul's does.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, HttpAddr
from proconsul.agent.cli.output import client, fail, run
from proconsul.agent.local.events import id_to_index

TYPES = ("key", "keyprefix", "services", "nodes", "service", "checks", "event")


def _endpoint(kind: str, key: str, prefix: str, service: str, tag: list[str], passingonly: bool, state: str,
              name: str) -> tuple[str, dict[str, Any]]:
    if kind == "key":
        if not key:
            raise CLIError("-type key needs -key")
        return f"/v1/kv/{key}", {}
    if kind == "keyprefix":
        if not prefix:
            raise CLIError("-type keyprefix needs -prefix")
        return f"/v1/kv/{prefix}", {"recurse": True}
    if kind == "services":
        return "/v1/catalog/services", {}
    if kind == "nodes":
        return "/v1/catalog/nodes", {}
    if kind == "service":
        if not service:
            raise CLIError("-type service needs -service")
        return f"/v1/health/service/{service}", {"tag": tag[0] if tag else None, "passing": passingonly or None}
    if kind == "checks":
        if service and state:
            raise CLIError("-type checks takes -service or -state, not both")
        return (f"/v1/health/checks/{service}", {}) if service else (f"/v1/health/state/{state or 'any'}", {})
    if kind == "event":
        return "/v1/event/list", {"name": name or None}
    raise CLIError(f"-type {kind!r} must be one of {', '.join(TYPES)}")


def _new_events(events: list[dict[str, Any]], last_index: int) -> list[dict[str, Any]]:
    """The events after the one whose ID the last index was made from (all of them on the first run)."""
    for i, event in enumerate(events):
        if last_index and id_to_index(event.get("ID", "")) == last_index:
            return events[i + 1:]
    return events


def watch(handler: Annotated[list[str] | None, typer.Argument(help="Command to run on every change.")] = None,
          type_: Annotated[str, typer.Option("--type", help=f"One of {', '.join(TYPES)}.")] = "",
          key: Annotated[str, typer.Option("--key", help="For -type key.")] = "",
          prefix: Annotated[str, typer.Option("--prefix", help="For -type keyprefix.")] = "",
          service: Annotated[str, typer.Option("--service", help="For -type service or checks.")] = "",
          tag: Annotated[list[str] | None, typer.Option("--tag", help="For -type service.")] = None,
          passingonly: Annotated[bool, typer.Option("--passingonly", help="For -type service.")] = False,
          state: Annotated[str, typer.Option("--state", help="For -type checks.")] = "",
          name: Annotated[str, typer.Option("--name", help="For -type event.")] = "",
          http_addr: HttpAddr = None) -> None:
    """Watch a view of the catalog, KV or events; run HANDLER (JSON on stdin) whenever it changes."""
    if not type_:
        raise fail(f"-type is required: one of {', '.join(TYPES)}")

    def body() -> None:
        path, params = _endpoint(type_, key, prefix, service, tag or [], passingonly, state, name)
        api = client(http_addr)
        api.timeout = 360.0  # a blocking query may be parked for up to 5 minutes
        index, last = 0, None
        while True:
            resp = api.get(path, params=dict(params, index=index or None, wait="5m" if index else None),
                           ok404=True)
            data = resp.json() if resp.status == 200 else None
            new_index = resp.index
            if new_index < index and type_ != "event":  # an event list's index is a hash, not a counter
                new_index = 0  # the index went backwards (a restore): start over, as Consul's watches do
            if not handler:
                print(json.dumps(data, indent=2))
                return
            if type_ == "event" and isinstance(data, list):
                data = _new_events(data, index)
                if index and new_index == index:
                    continue  # the wait ended with no new event
            if data != last or type_ == "event":
                env = dict(os.environ, CONSUL_INDEX=str(new_index))
                argv = handler if len(handler) > 1 else ["/bin/sh", "-c", handler[0]]
                subprocess.run(argv, input=json.dumps(data).encode(), env=env, check=False)
                last = data
            index = new_index

    try:
        run(body)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(watch)
