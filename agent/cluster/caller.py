"""Whose token an RPC carries: the caller's, wherever in the agent the call is made.

An HTTP request (or an RPC a server is serving) sets its token for the task that serves it; every RPC that
task makes — a client agent's call to a server, a follower's forward to the leader, a call to another
datacenter — carries that token, and the server that runs it checks it. Work the agent does on its own
(anti-entropy, Connect's watches) runs with no caller token set and carries the agent's own token
(`acl.tokens.agent`, else `default`), as Consul's agent does. A context variable, not an argument, because
the token must cross every layer between a handler and the socket (the catalog backends, the Connect
client, the replicators) without each of them learning about ACLs; asyncio copies it into each task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_TOKEN: ContextVar[str | None] = ContextVar("proconsul_caller_token", default=None)
# Whether the server cut the last read's answer to what the caller's token may read (a client agent sets
# X-Consul-Results-Filtered-By-ACLs from it, since what it gets back has nothing left to drop).
_FILTERED: ContextVar[bool] = ContextVar("proconsul_results_filtered", default=False)
TOKEN_ARG = "token"


def caller_token() -> str | None:
    """The token of the request or RPC this task serves; None for the agent's own work."""
    return _TOKEN.get()


def set_caller_token(token: str | None) -> None:
    """For the task that serves one request or RPC (each has its own copy of the context)."""
    _TOKEN.set(token)


@contextlib.contextmanager
def acting_as(token: str) -> Iterator[None]:
    """Calls made inside carry `token` (anti-entropy with a service's token, replication with its own)."""
    reset = _TOKEN.set(token)
    try:
        yield
    finally:
        _TOKEN.reset(reset)


def with_token(args: dict[str, Any], own: str) -> dict[str, Any]:
    """`args` with the caller's token (else `own`, the agent's) added, unless it names one already."""
    if TOKEN_ARG in args:
        return args
    token = _TOKEN.get()
    return {**args, TOKEN_ARG: own if token is None else token}


def mark_filtered(filtered: bool) -> None:
    _FILTERED.set(filtered)


def results_filtered() -> bool:
    """Whether the server dropped rows from the last read this task made (then cleared)."""
    out = _FILTERED.get()
    if out:
        _FILTERED.set(False)
    return out
