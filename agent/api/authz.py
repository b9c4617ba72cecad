"""The request's ACL token and its authorizer: `X-Consul-Token`, `Authorization: Bearer`, `?token=`.

With ACLs off every request gets the allow-all authorizer and nothing is looked up.
"""

from __future__ import annotations

from aiohttp import web

from proconsul.agent.acl.authorizer import AllowAll, Authorizer
from proconsul.agent.api.keys import AGENT

ALLOW_ALL = AllowAll()
_KEY = "proconsul.authz"
_TOKEN_KEY = "proconsul.acl_token"
FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"
GUARD_RAN = "proconsul.guard_ran"  # set on a request whose route guard checked a right before the handler


def request_token(request: web.Request) -> str:
    """The secret a request carries, in Consul's order: header, bearer, query; "" for none."""
    token = request.headers.get("X-Consul-Token")
    if token:
        return token.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.query.get("token", "")


def effective_token(request: web.Request) -> str:
    """The request's token, or the agent's default token when it carries none (Consul's `tokens.default`)."""
    token = request.get(_TOKEN_KEY)
    if token is None:
        agent = request.app[AGENT]
        token = request_token(request) or agent.acl_tokens.get("default", "")
        request[_TOKEN_KEY] = token
    return token


async def authorizer(request: web.Request) -> Authorizer:
    """The authorizer for this request, resolved once per request."""
    authz = request.get(_KEY)
    if authz is None:
        resolver = request.app[AGENT].acl
        if resolver is None:
            authz = ALLOW_ALL
        else:
            token = effective_token(request)
            authz = resolver.cached(token) or await resolver.resolve(token)
        request[_KEY] = authz
    return authz


def acl_enabled(request: web.Request) -> bool:
    return request.app[AGENT].acl is not None
