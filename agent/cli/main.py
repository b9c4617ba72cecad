"""The `proconsul` command line (typer + rich).

`proconsul agent` runs an agent; every other command talks to an agent's HTTP API (`--http-addr`,
or PROCONSUL_HTTP_ADDR / CONSUL_HTTP_ADDR). Errors are one line on stderr and exit status 1.
Each command group lives in its own module and adds itself to the app through `register`.
"""

from __future__ import annotations

import typer

from proconsul.agent.cli import (
    agent,
    catalog,
    connect,
    intention,
    kv,
    members,
    operator,
    services,
    snapshot,
    tls,
    troubleshoot,
)

app = typer.Typer(
    name="proconsul",
    help="Service discovery and a service mesh in the style of Consul.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _group in (agent, members, operator, catalog, services, kv, snapshot, intention, connect, tls, troubleshoot):
    _group.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
