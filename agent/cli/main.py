"""The `proconsul` command line (typer + rich).

`proconsul agent` runs an agent; every other command talks to an agent's HTTP API (`--http-addr`,
or PROCONSUL_HTTP_ADDR / CONSUL_HTTP_ADDR). Errors are one line on stderr and exit status 1.
Each command group lives in its own module and adds itself to the app through `register`.
"""

from __future__ import annotations

import os
import re
import sys

import typer

from proconsul.agent.cli import (
    acl,
    agent,
    canary,
    catalog,
    config_entries,
    connect,
    debug,
    event,
    exec_cmd,
    intention,
    k8s_sync,
    keyring,
    kv,
    lock,
    maint,
    members,
    monitor,
    operator,
    rtt,
    services,
    snapshot,
    tls,
    troubleshoot,
    validate,
    watch,
)
from proconsul.agent.cli.client import CLIError, split_global_flags

app = typer.Typer(
    name="proconsul",
    help="Service discovery and a service mesh in the style of Consul. Every command that talks to an agent "
         "also takes Consul's -token, -token-file, -ca-file, -client-cert, -client-key and -tls-server-name "
         "(or CONSUL_HTTP_TOKEN, CONSUL_CACERT, …).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _group in (acl, agent, members, monitor, debug, lock, watch, maint, validate, operator, catalog, services, kv,
               config_entries, snapshot, event, exec_cmd, rtt, intention, connect, canary, tls, troubleshoot, k8s_sync,
               keyring):
    _group.register(app)


_SINGLE_DASH_LONG = re.compile(r"^-[A-Za-z][A-Za-z0-9_-]+(=.*)?$", re.S)


# Commands that end with a child command line: (positionals before it, their flags that take no value).
_CHILD_COMMANDS = {"lock": (1, {"child-exit-code", "verbose", "shell", "pass-stdin"}),
                   "watch": (0, {"stale", "passingonly"}),
                   "exec": (0, {"verbose"})}


def consul_spelling(argv: list[str]) -> list[str]:
    """Consul's CLI takes long flags with one dash (`-http-addr=…`, `kv get -recurse`); ours take two.
    Rewrite `-flag` and `-flag=value` to `--flag…` before the first `--` (values that are negative
    numbers or a lone `-` are left alone), so copied commands and scripts work unchanged. The child
    command of `lock` and `watch` is left exactly as typed (`lock app/ ls -la`)."""
    out: list[str] = []
    child = _CHILD_COMMANDS.get(argv[0]) if argv else None
    positionals, takes_value = 0, False
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if child is not None and i > 0:
            if takes_value:
                takes_value = False
            elif arg.startswith("-") and len(arg) > 1:
                name = arg.lstrip("-").split("=", 1)[0]
                takes_value = "=" not in arg and name not in child[1]
            else:
                if positionals == child[0]:
                    return out + argv[i:]  # the child command starts here
                positionals += 1
        out.append("-" + arg if _SINGLE_DASH_LONG.match(arg) else arg)
    return out


def main() -> None:
    try:
        args, env = split_global_flags(consul_spelling(sys.argv[1:]))
    except CLIError as e:
        typer.echo(f"Error: {e}", err=True)
        raise SystemExit(1) from None
    os.environ.update(env)
    raise SystemExit(run(args))


def run(args: list[str]) -> int:
    """Run one command line; the exit status. A command line the parser refuses (an unknown flag, a
    missing argument, a bad value) is one line on stderr and status 1, as Consul's CLI does — not
    click's boxed usage text and status 2. Status 2 stays what commands mean by it (`intention check`:
    denied)."""
    try:
        code = app(args=args, prog_name="proconsul", standalone_mode=False)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # click's ClickException and Abort, from the copy of click typer vendors
        message = getattr(e, "format_message", None)
        if message is None and type(e).__name__ != "Abort":
            raise
        text = message() if message else "Aborted."
        if text.strip() and "\n" not in text.strip():  # a group called bare has printed its help already
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"Error: {text}{hint}" if message else text, err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
