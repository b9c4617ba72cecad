"""Errors the HTTP API raises on purpose, and the one place every component's errors become HTTP statuses.

Handlers never build error responses themselves: they raise (an HTTPError, or a component's own error
type) and `error_boundary`, applied to every route when the app is built, turns it into a status and a
one-line plain-text message with `status_for`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from proconsul.agent.acl.errors import ACLDisabled, ACLError, ACLNotFound, PermissionDenied
from proconsul.agent.api.compress import gzip_if_worth_it
from proconsul.agent.api.forward import ForwardToDatacenter, forward_request
from proconsul.agent.api.keys import TELEMETRY
from proconsul.agent.cluster.errors import ClusterError, DatacenterUnreachable, NoPathToDatacenter
from proconsul.agent.cluster.rpc import NoLeader, RPCError
from proconsul.agent.cluster.server import NotLeaderError
from proconsul.agent.local.definitions import DefinitionError
from proconsul.catalog.errors import CatalogError, Conflict, InvalidRequest, NotFound, UnknownCommand
from proconsul.connect.errors import CANotReady, ConcurrentChange, ConnectError
from proconsul.consensus.errors import LeadershipLost, RaftError

log = logging.getLogger("proconsul.http")


class HTTPError(Exception):
    """An error a handler raises on purpose: becomes `status` with a one-line plain-text body."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(HTTPError):
    status = 400


class NotFoundHTTP(HTTPError):
    status = 404


class TooLarge(HTTPError):
    status = 413


# Component errors and their HTTP statuses, most specific first (a subclass before its base). A
# message of None is the error's own text; a string is Consul's fixed wording for that state.
STATUSES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str | None], ...] = (
    ((PermissionDenied, ACLNotFound), 403, None),
    (ACLDisabled, 401, None),
    (ACLError, 400, None),
    ((InvalidRequest, UnknownCommand), 400, None),
    (NotFound, 404, None),
    (Conflict, 409, None),
    (CatalogError, 400, None),
    (NoPathToDatacenter, 500, "No path to datacenter"),
    (DatacenterUnreachable, 500, "Remote DC has no server currently reachable"),
    ((NotLeaderError, NoLeader), 500, "No cluster leader"),
    (ClusterError, 400, None),
    (LeadershipLost, 500, "leadership lost while committing log: {}"),
    ((RaftError, RPCError), 500, None),
    (DefinitionError, 400, None),
    (CANotReady, 500, None),
    (ConcurrentChange, 409, None),
    (ConnectError, 400, None),
)


def status_for(exc: BaseException) -> tuple[int, str]:
    """The one place errors of every component become HTTP statuses and messages."""
    if isinstance(exc, HTTPError):
        return exc.status, str(exc)
    for types, status, words in STATUSES:
        if isinstance(exc, types):
            return status, str(exc) if words is None else words.format(exc)
    return 500, "internal error"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_boundary(handler: Handler) -> Handler:
    """Wrap a route handler so every error leaves as a status and a one-line message (via status_for).

    Applied to each route when the app is built rather than as aiohttp middleware, which would
    build a wrapper per request on the hot path. A large answer to a client that accepts gzip leaves
    compressed (`compress.py`), as Consul's do.
    """

    async def guarded(request: web.Request) -> web.StreamResponse:
        request.app[TELEMETRY].incr(request.method)
        try:
            try:
                response = await handler(request)
            except ForwardToDatacenter as fwd:  # ?dc= names another datacenter: its servers answer
                response = await forward_request(request, fwd.datacenter)
            gzip_if_worth_it(request, response)
            return response
        except web.HTTPException:
            raise
        except Exception as exc:
            status, message = status_for(exc)
            if status >= 500:
                log.error("%s %s failed: %s", request.method, request.path, exc,
                          exc_info=message == "internal error")
            return web.Response(status=status, text=message + "\n", content_type="text/plain")

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded
