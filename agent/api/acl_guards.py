"""Which right each HTTP route needs: one table, checked before the handler runs.

Every /v1 route must appear here (a test holds us to it), so a new endpoint cannot be left open by
accident. A guard reads the path and query (never the body); routes whose right depends on the body,
and listings that Consul filters rather than refuses, say `INSIDE` and check in their handler (with
`agent/acl/filters.py` for listings; the rights of catalog writes are in `agent/acl/enforce.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proconsul.agent.acl import enforce
from proconsul.agent.acl.authorizer import Authorizer
from proconsul.agent.api.keys import AGENT

Guard = Callable[[web.Request, Authorizer], Awaitable[None]]


async def INSIDE(request: web.Request, authz: Authorizer) -> None:
    """The handler checks (its right depends on the body, or it filters a listing)."""


async def NONE(request: web.Request, authz: Authorizer) -> None:
    """Open to every caller, as in Consul (status, versions, CA roots, datacenters, bootstrap)."""


def seg(kind: str, access: str, param: str, *, source: str = "path") -> Guard:
    """`access` on `kind` named by a path parameter (or a query parameter with source="query")."""

    async def guard(request: web.Request, authz: Authorizer) -> None:
        name = request.match_info.get(param, "") if source == "path" else request.query.get(param, "")
        authz.require(kind, name, access)
    return guard


def own(kind: str, access: str) -> Guard:
    """`access` on this agent's own node name (agent:read for /v1/agent/self, node:write for maintenance)."""

    async def guard(request: web.Request, authz: Authorizer) -> None:
        authz.require(kind, request.app[AGENT].config.node_name, access)
    return guard


def single(kind: str, access: str) -> Guard:
    async def guard(request: web.Request, authz: Authorizer) -> None:
        authz.require_singleton(kind, access)
    return guard


def local_service(access: str) -> Guard:
    """`service:<access>` on the name of a service this agent holds, by ID (unknown IDs reach the handler's 404)."""

    async def guard(request: web.Request, authz: Authorizer) -> None:
        svc = request.app[AGENT].local.service(request.match_info["id"])
        if svc is not None:
            authz.require("service", svc["Service"], access)
    return guard


def local_check(access: str) -> Guard:
    """A local check's service (service:<access>) or, for a node check, the node (node:<access>)."""

    async def guard(request: web.Request, authz: Authorizer) -> None:
        agent = request.app[AGENT]
        chk = agent.local.check(request.match_info["id"])
        if chk is None:
            return
        require_check(authz, agent, chk.get("ServiceID") or "", access)
    return guard


def require_check(authz: Authorizer, agent: Any, service_id: str, access: str) -> None:
    svc = agent.local.service(service_id) if service_id else None
    if svc is not None:
        authz.require("service", svc["Service"], access)
    else:
        authz.require("node", agent.config.node_name, access)


def intention(access: str, param: str) -> Guard:
    async def guard(request: web.Request, authz: Authorizer) -> None:
        authz.require_intention(request.query.get(param, ""), access)
    return guard


def config_entry(access: str) -> Guard:
    async def guard(request: web.Request, authz: Authorizer) -> None:
        kind, name = request.match_info["kind"], request.match_info["name"]
        enforce.require(authz, [enforce.Need("config", f"{kind}/{name}", access)])
    return guard


OP_READ, OP_WRITE = single("operator", "read"), single("operator", "write")
MANAGEMENT = single("acl", "write")

GUARDS: dict[tuple[str, str], Guard] = {
    # agent
    ("GET", "/v1/agent/self"): own("agent", "read"),
    ("GET", "/v1/agent/host"): OP_READ,
    ("GET", "/v1/agent/version"): NONE,
    ("GET", "/v1/agent/members"): INSIDE,
    ("GET", "/v1/agent/services"): INSIDE,
    ("GET", "/v1/agent/service/{id}"): local_service("read"),
    ("GET", "/v1/agent/checks"): INSIDE,
    ("PUT", "/v1/agent/service/register"): INSIDE,
    ("PUT", "/v1/agent/service/deregister/{id}"): local_service("write"),
    ("PUT", "/v1/agent/service/maintenance/{id}"): local_service("write"),
    ("PUT", "/v1/agent/check/register"): INSIDE,
    **{("PUT", f"/v1/agent/check/{verb}/{{id}}"): local_check("write")
       for verb in ("deregister", "pass", "warn", "fail", "update")},
    ("PUT", "/v1/agent/maintenance"): own("node", "write"),
    ("GET", "/v1/agent/health/service/id/{id}"): local_service("read"),
    ("GET", "/v1/agent/health/service/name/{name}"): seg("service", "read", "name"),
    ("PUT", "/v1/agent/reload"): own("agent", "write"),
    ("PUT", "/v1/agent/leave"): own("agent", "write"),
    ("PUT", "/v1/agent/join/{address}"): own("agent", "write"),
    ("PUT", "/v1/agent/force-leave/{node}"): OP_WRITE,
    ("GET", "/v1/agent/monitor"): own("agent", "read"),
    ("GET", "/v1/agent/metrics"): own("agent", "read"),
    ("PUT", "/v1/agent/token/{type}"): single("acl", "write"),
    ("GET", "/v1/agent/connect/ca/leaf/{service}"): seg("service", "write", "service"),
    ("POST", "/v1/agent/connect/authorize"): INSIDE,
    ("GET", "/v1/agent/connect/ca/roots"): NONE,
    ("GET", "/v1/agent/connect/tap/{service}"): seg("service", "read", "service"),  # request paths: service:read
    ("GET", "/v1/agent/debug/profile"): OP_READ,
    ("PUT", "/v1/agent/debug/partition"): OP_WRITE,
    # catalog and health (listings are filtered in run_query)
    ("GET", "/v1/catalog/datacenters"): NONE,
    ("GET", "/v1/catalog/nodes"): INSIDE,
    ("GET", "/v1/catalog/services"): INSIDE,
    ("GET", "/v1/catalog/service/{name}"): INSIDE,
    ("GET", "/v1/catalog/connect/{name}"): INSIDE,
    ("GET", "/v1/catalog/node/{node}"): INSIDE,
    ("GET", "/v1/catalog/node-services/{node}"): INSIDE,
    ("GET", "/v1/catalog/gateway-services/{gateway}"): seg("service", "read", "gateway"),
    ("PUT", "/v1/catalog/register"): INSIDE,
    ("PUT", "/v1/catalog/deregister"): INSIDE,
    # Consul: service:read on the chain's service (POST only adds compile overrides).
    ("GET", "/v1/discovery-chain/{service}"): seg("service", "read", "service"),
    # canaries write the service's splitter: service:write to start, promote, abort; service:read to look
    ("PUT", "/v1/connect/canary/{service}"): seg("service", "write", "service"),
    ("POST", "/v1/connect/canary/{service}/promote"): seg("service", "write", "service"),
    ("POST", "/v1/connect/canary/{service}/abort"): seg("service", "write", "service"),
    ("GET", "/v1/connect/canary/{service}"): seg("service", "read", "service"),
    ("GET", "/v1/connect/canaries"): OP_READ,
    ("POST", "/v1/discovery-chain/{service}"): seg("service", "read", "service"),
    ("GET", "/v1/health/node/{node}"): INSIDE,
    ("GET", "/v1/health/checks/{name}"): INSIDE,
    ("GET", "/v1/health/ingress/{name}"): INSIDE,
    ("GET", "/v1/health/service/{name}"): INSIDE,
    ("GET", "/v1/health/connect/{name}"): INSIDE,
    ("GET", "/v1/health/state/{state}"): INSIDE,
    # KV and transactions: the key decides
    ("GET", "/v1/kv/{key:.*}"): INSIDE,
    ("PUT", "/v1/kv/{key:.*}"): INSIDE,
    ("DELETE", "/v1/kv/{key:.*}"): INSIDE,
    ("PUT", "/v1/txn"): INSIDE,
    # sessions: the session's node decides
    ("PUT", "/v1/session/create"): INSIDE,
    ("PUT", "/v1/session/destroy/{id}"): INSIDE,
    ("PUT", "/v1/session/renew/{id}"): INSIDE,
    ("GET", "/v1/session/info/{id}"): INSIDE,
    ("GET", "/v1/session/node/{node}"): INSIDE,
    ("GET", "/v1/session/list"): INSIDE,
    # events, status
    ("PUT", "/v1/event/fire/{name}"): seg("event", "write", "name"),
    ("GET", "/v1/event/list"): INSIDE,
    ("GET", "/v1/status/leader"): NONE,
    ("GET", "/v1/status/peers"): NONE,
    # operator
    ("GET", "/v1/operator/raft/configuration"): OP_READ,
    ("DELETE", "/v1/operator/raft/peer"): OP_WRITE,
    ("POST", "/v1/operator/raft/transfer-leader"): OP_WRITE,
    ("GET", "/v1/operator/autopilot/configuration"): OP_READ,
    ("PUT", "/v1/operator/autopilot/configuration"): OP_WRITE,
    ("GET", "/v1/operator/autopilot/health"): OP_READ,
    ("GET", "/v1/operator/autopilot/state"): OP_READ,
    ("GET", "/v1/operator/federation"): OP_READ,
    ("DELETE", "/v1/operator/federation/{dc}"): OP_WRITE,
    ("GET", "/v1/operator/usage"): OP_READ,
    ("GET", "/v1/operator/keyring"): single("keyring", "read"),
    **{(m, "/v1/operator/keyring"): single("keyring", "write") for m in ("POST", "PUT", "DELETE")},
    ("GET", "/v1/snapshot"): MANAGEMENT,
    ("PUT", "/v1/snapshot"): MANAGEMENT,
    # config entries
    ("PUT", "/v1/config"): INSIDE,
    ("GET", "/v1/config/{kind}"): INSIDE,
    ("GET", "/v1/config/{kind}/{name}"): config_entry("read"),
    ("DELETE", "/v1/config/{kind}/{name}"): config_entry("write"),
    # Connect
    ("GET", "/v1/connect/ca/roots"): NONE,
    ("GET", "/v1/connect/ca/configuration"): OP_READ,
    ("PUT", "/v1/connect/ca/configuration"): OP_WRITE,
    ("GET", "/v1/connect/intentions"): INSIDE,
    ("POST", "/v1/connect/intentions"): INSIDE,
    ("GET", "/v1/connect/intentions/exact"): intention("read", "destination"),
    ("PUT", "/v1/connect/intentions/exact"): intention("write", "destination"),
    ("DELETE", "/v1/connect/intentions/exact"): intention("write", "destination"),
    ("GET", "/v1/connect/intentions/match"): intention("read", "name"),
    ("GET", "/v1/connect/intentions/check"): seg("service", "read", "destination", source="query"),
    ("GET", "/v1/connect/intentions/{id}"): INSIDE,
    ("PUT", "/v1/connect/intentions/{id}"): INSIDE,
    ("DELETE", "/v1/connect/intentions/{id}"): INSIDE,
    # coordinates (listings filtered by node:read) and prepared queries (query:<access> on the query's name)
    ("GET", "/v1/agent/metrics/stream"): own("agent", "read"),
    ("GET", "/v1/coordinate/datacenters"): NONE,
    ("GET", "/v1/coordinate/nodes"): INSIDE,
    ("GET", "/v1/coordinate/node/{node}"): seg("node", "read", "node"),
    ("PUT", "/v1/coordinate/update"): INSIDE,
    ("POST", "/v1/query"): INSIDE,
    ("GET", "/v1/query"): INSIDE,
    ("GET", "/v1/query/{id}"): INSIDE,
    ("PUT", "/v1/query/{id}"): INSIDE,
    ("DELETE", "/v1/query/{id}"): INSIDE,
    ("GET", "/v1/query/{id}/execute"): seg("query", "read", "id"),
    ("GET", "/v1/query/{id}/explain"): seg("query", "read", "id"),
    # the web UI's reads
    ("GET", "/v1/internal/ui/services"): INSIDE,
    ("GET", "/v1/internal/ui/nodes"): INSIDE,
    ("GET", "/v1/internal/ui/node/{node}"): seg("node", "read", "node"),
    ("GET", "/v1/internal/ui/service-topology/{service}"): seg("service", "read", "service"),
    ("GET", "/v1/internal/ui/intention-check"): intention("read", "destination"),
    ("POST", "/v1/internal/ui/validate"): NONE,
}


def guard_for(method: str, path: str) -> Guard | None:
    """The guard of a route; ACL endpoints check inside; None for a /v1 route nobody classified."""
    if path.startswith("/v1/acl/"):
        return INSIDE
    return GUARDS.get((method, path))
