"""ACLs on the server port: every RPC is checked against the token it carries, with the HTTP API's rules.

A client agent forwards each request with the caller's token (`caller.py`); a server resolves it from its
own replica (cached until the ACL tables change) and asks `agent/acl/enforce.py` — the same table the HTTP
layer asks — what the call needs: a catalog command's rights, a named read's right or the filter that cuts
its answer to what the token may read, an operator call's `operator` right. A method nobody classified
needs management, so a new RPC cannot be left open by accident (a test holds every method to this table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proconsul.agent.acl import enforce
from proconsul.agent.acl.authorizer import Authorizer
from proconsul.agent.acl.errors import ACLNotFound, PermissionDenied
from proconsul.agent.acl.filters import QUERY_FILTERS, filter_query
from proconsul.agent.acl.resolver import ACLUnavailable, Resolver
from proconsul.agent.cluster.caller import TOKEN_ARG
from proconsul.agent.cluster.rpc import register_error
from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore

Need = enforce.Need
Post = Callable[[Any], Any] | None  # what to do to the method's result (filter it), or nothing
Check = Callable[[Authorizer, dict[str, Any], "StoreView"], Post]

# PermissionDenied and ACLNotFound cross the wire as themselves, so a client agent answers 403 with the
# server's words ("Permission denied: token with AccessorID '…' lacks permission 'key:write' on …").
register_error(PermissionDenied, lambda m: PermissionDenied(detail=m.removeprefix("Permission denied").lstrip(": ")))
register_error(ACLNotFound, lambda m: ACLNotFound())
register_error(ACLUnavailable)


class StoreView:
    """`enforce.StateView` over a server's state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def session_node(self, sid: str) -> str | None:
        _, sess = self.store.session_get(sid)
        return sess["Node"] if sess else None

    def service_name(self, node: str, service_id: str) -> str | None:
        _, (_, services) = self.store.node_services(node)
        return next((s["Service"] for s in services if s["ID"] == service_id), None)

    def row(self, table: str, key: str) -> dict[str, Any] | None:
        try:
            return self.store.table_get(table, key)[1]
        except (KeyError, ValueError):
            return None


def _needs(*needs: Need) -> Check:
    def check(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
        enforce.require(authz, list(needs))
        return None
    return check


def OPEN(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:  # noqa: N802 — a table marker
    """Open to every caller (status, datacenters; http.serve and dns.query check with their own tokens)."""
    return None


def _apply(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    cmd = c.decode(args["cmd"])
    enforce.require(authz, enforce.command_needs(cmd, view))
    return None


def _session_node_write(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    node = view.session_node(str(args.get("id", "")))
    if node is not None:
        authz.require("session", node, "write")
    return None


def _session_create(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    authz.require("session", str((args.get("session") or {}).get("Node", "")), "write")
    return None


def _event_fire(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    authz.require("event", str((args.get("event") or {}).get("Name", "")), "write")
    return None


def _connect_sign(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    authz.require("service", str(args.get("service", "")), "write")
    return None


def _connect_upsert(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    ixn = args.get("intention") or {}
    needs = [Need("intention", str(ixn.get("DestinationName", "")))]
    old = view.row("intentions", str(args.get("replace_id") or ""))
    if old is not None:
        needs.append(Need("intention", old.get("DestinationName", "")))
    enforce.require(authz, needs)
    return None


def _connect_remove(authz: Authorizer, args: dict[str, Any], view: StoreView) -> Post:
    rows = [view.row("intentions", str(i)) for i in args.get("ids") or []]
    enforce.require(authz, [Need("intention", r.get("DestinationName", "")) for r in rows if r is not None])
    return None


# ---------------------------------------------------------------------- named reads (catalog.query)
def _single(f: enforce.RowFilter, authz: Authorizer, what: str) -> Callable[[Any], Any]:
    def post(result: Any) -> Any:
        kept, dropped = f(authz, result)
        if dropped:
            raise PermissionDenied(authz.accessor, what, "read")
        return kept, False
    return post


def _listing(f: enforce.RowFilter, authz: Authorizer) -> Callable[[Any], Any]:
    def post(result: Any) -> Any:
        return f(authz, result)
    return post


def _read(kind: str, arg: str) -> Callable[[Authorizer, dict[str, Any], StoreView], Any]:
    def check(authz: Authorizer, a: dict[str, Any], view: StoreView) -> Any:
        authz.require(kind, str(a.get(arg) or ""), "read")
        return None
    return check


def _token_bundle(authz: Authorizer, a: dict[str, Any], view: StoreView, token: str) -> Any:
    """Resolving a secret is open to whoever holds it (the client agent resolving its caller's token)."""
    if not (a.get("secret") and a.get("secret") == token):
        authz.require_singleton("acl", "read")
    return None


def _table(authz: Authorizer, a: dict[str, Any], view: StoreView, single: bool) -> Any:
    rule = enforce.table_read(str(a.get("table", "")), str(a.get("key", "")) if single else None)
    if isinstance(rule, Need):
        enforce.require(authz, [rule])
        return None
    if rule is None:
        return None
    return _single(rule, authz, "table") if single else _listing(rule, authz)


def _config_get(authz: Authorizer, a: dict[str, Any], view: StoreView) -> Any:
    enforce.require(authz, [Need("config", f"{a.get('kind', '')}/{a.get('name', '')}", "read")])
    return None


def _txn_read(authz: Authorizer, a: dict[str, Any], view: StoreView) -> Any:
    enforce.require(authz, enforce.command_needs(c.Txn(ops=list(a.get("ops") or [])), view))

    def post(result: Any) -> Any:
        rows = result.get("Results") or []
        kept = [r for r in rows if "KV" not in r or authz.allowed("key", r["KV"]["Key"], "read")]
        return dict(result, Results=kept), len(kept) != len(rows)
    return post


def _execute_definition(authz: Authorizer, a: dict[str, Any], view: StoreView) -> Any:
    authz.require("service", str(((a.get("definition") or {}).get("Service") or {}).get("Service", "")), "read")
    return None


QueryCheck = Callable[[Authorizer, dict[str, Any], StoreView], Any]
QUERY_CHECKS: dict[str, QueryCheck] = {
    "config.list": lambda authz, a, v: _listing(enforce.CONFIG_ENTRIES, authz),
    "config.get": _config_get,
    "connect.roots": lambda authz, a, v: None,
    "catalog.gateway_services": _read("service", "gateway"),
    "table.list": lambda authz, a, v: _table(authz, a, v, False),
    "table.get": lambda authz, a, v: _table(authz, a, v, True),
    "txn.read": _txn_read,
    "coordinate.node": _read("node", "node"),
    "query.get": lambda authz, a, v: _query_get(authz),
    "query.execute": _read("query", "query"),
    "query.explain": _read("query", "query"),
    "query.execute_definition": _execute_definition,
    "ui.node": _read("node", "node"),
    "ui.topology": _read("service", "name"),
}


def _query_get(authz: Authorizer) -> Callable[[Any], Any]:
    def post(rows: Any) -> Any:
        if rows and not authz.allowed("query", rows[0].get("Name") or "", "read"):
            raise PermissionDenied(authz.accessor, "query", "read", rows[0].get("Name") or "")
        return rows, False
    return post


for _name in QUERY_FILTERS:
    QUERY_CHECKS.setdefault(_name, lambda authz, a, v, _n=_name: (
        lambda result: filter_query(_n, authz, result)))


def _query(authz: Authorizer, args: dict[str, Any], view: StoreView, token: str) -> Post:
    """A named read: its own right first, then (for listings) its answer cut to what the token may read."""
    name = str(args.get("name", ""))
    qargs = args.get("args") or {}
    if name == "acl.token_bundle":
        return _token_bundle(authz, qargs, view, token)
    check = QUERY_CHECKS.get(name)
    if check is None:
        authz.require_singleton("acl", "write")
        return None
    post = check(authz, qargs, view)
    if post is None:
        return None

    def reply(answer: list[Any]) -> list[Any]:
        # [index, result, known leader, last contact, filtered by ACLs]
        result, dropped = post(answer[1])
        return [answer[0], result, answer[2], answer[3], bool(dropped or (len(answer) > 4 and answer[4]))]
    return reply


OP_READ, OP_WRITE = _needs(Need("operator", access="read")), _needs(Need("operator"))
MANAGEMENT = _needs(Need("acl"))

RPC_CHECKS: dict[str, Check] = {
    "catalog.apply": _apply,
    "session.create": _session_create,
    "session.destroy": _session_node_write,
    "session.renew": _session_node_write,
    "status.leader": OPEN,
    "status.peers": OPEN,
    "raft.state": OPEN,  # servers asking each other before bootstrapping
    "operator.raft_configuration": OP_READ,
    "operator.raft_remove_peer": OP_WRITE,
    "operator.raft_transfer_leader": OP_WRITE,
    "operator.autopilot_health": OP_READ,
    "operator.autopilot_state": OP_READ,
    "snapshot.save": MANAGEMENT,
    "dns.query": OPEN,  # answered with this server's DNS token, as its own DNS port would
    "federation.forward": OPEN,  # the inner call carries the caller's token; the far datacenter checks it
    "federation.datacenters": OPEN,
    "federation.status": OP_READ,
    "federation.coordinates": OPEN,
    "event.fire": _event_fire,
    "http.serve": OPEN,  # the forwarded request carries its token; this server's HTTP API checks it
    "connect.sign": _connect_sign,
    "connect.set_config": OP_WRITE,
    "connect.upsert": _connect_upsert,
    "connect.remove": _connect_remove,
    "connect.sign_intermediate": OP_WRITE,  # a secondary's leader, with its replication token
    "auto_encrypt.sign": lambda authz, args, view: authz.require("node", str(args.get("node", "")), "write"),
    # Consul's Coordinate.Update: node:write on the node whose coordinate it is (the agent token has it).
    "coordinate.update": lambda authz, args, view: authz.require("node", str(args.get("Node") or ""), "write"),
}


class RPCGuard:
    """The server port's ACL check: `await guard(method, args)` raises or returns what to do to the answer."""

    def __init__(self, resolver: Resolver, store: StateStore) -> None:
        self.resolver = resolver
        self.view = StoreView(store)

    async def __call__(self, method: str, args: dict[str, Any]) -> Post:
        token = str(args.get(TOKEN_ARG) or "")
        # A follower asking for a token its replica lacks: answered from this replica only (two servers that
        # each believe the other leads must not ask each other in a circle).
        authz = self.resolver.cached(token) or await self.resolver.resolve(
            token, not (method == "acl.resolve" and args.get("from_follower")))
        if method == "catalog.query":
            return _query(authz, args, self.view, token)
        if method == "acl.resolve":  # whoever holds a secret may resolve it
            return _token_bundle(authz, args, self.view, token)
        check = RPC_CHECKS.get(method, MANAGEMENT)
        return check(authz, args, self.view)

