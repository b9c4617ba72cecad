"""Which right a catalog write or read needs: the one table both the HTTP API and the servers' RPC use.

The HTTP layer checks a request before it becomes a command; a server checks the command (or named read)
an RPC carries, so a client agent, or anything else that speaks the server port, cannot do what its token
may not. Both ask these functions, so the two checks cannot drift apart. Pure: what the rules need to know
about the current state (a session's node, the intention being replaced) comes in through `StateView`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proconsul.agent.acl.authorizer import Authorizer
from proconsul.agent.acl.errors import PermissionDenied
from proconsul.agent.acl.rules import SINGLETONS
from proconsul.catalog import commands as c

READ, WRITE = "read", "write"
SERVICE_CONFIG_KINDS = ("service-defaults", "service-resolver", "service-splitter", "service-router",
                        "service-intentions")
ACL_TABLE_PREFIX = "acl_"
TXN_READ_VERBS = ("get", "get-tree", "check-index", "check-session", "check-not-exists")


@dataclass(frozen=True, slots=True)
class Need:
    """One right: `access` on `kind` `name`. Kinds beyond the rules' resources: "intention" (the
    destination's intentions level), "key-tree" (write on every key under a prefix), "config" (a config
    entry, `name` is "kind/name"), and the singletons (operator, acl, keyring, mesh, peering)."""

    kind: str
    name: str = ""
    access: str = WRITE


def allowed(authz: Authorizer, need: Need) -> bool:
    kind = need.kind
    if kind in SINGLETONS:
        return authz.singleton_allowed(kind, need.access)
    if kind == "intention":
        return authz.intention_allowed(need.name, need.access)
    if kind == "key-tree":
        return authz.key_write_prefix(need.name)
    if kind == "config":
        entry_kind, _, name = need.name.partition("/")
        return config_entry_right(authz, entry_kind, name, need.access)
    return authz.allowed(kind, need.name, need.access)


def denial(authz: Authorizer, need: Need) -> PermissionDenied:
    """Consul's words for a missing right."""
    kind, name = need.kind, need.name
    if kind in SINGLETONS:
        return PermissionDenied(authz.accessor, kind, need.access)
    if kind == "key-tree":
        kind = "key"
    elif kind == "config":
        entry_kind, _, entry = name.partition("/")
        if entry_kind in SERVICE_CONFIG_KINDS:
            kind, name = "service", entry
        else:
            return PermissionDenied(authz.accessor, "mesh", need.access)
    return PermissionDenied(authz.accessor, kind, need.access, name)


def require(authz: Authorizer, needs: list[Need]) -> None:
    """Raise PermissionDenied, naming the first right `authz` lacks."""
    for need in needs:
        if not allowed(authz, need):
            raise denial(authz, need)


def config_entry_right(authz: Authorizer, kind: str, name: str, access: str) -> bool:
    """Consul's rule per config entry kind: service kinds need the service right (intentions: the intention
    right on the destination); proxy-defaults is readable by anyone; the rest need mesh (or operator)."""
    if kind == "service-intentions":
        return authz.intention_allowed(name, access)
    if kind in SERVICE_CONFIG_KINDS:
        return authz.allowed("service", name, access)
    if kind == "proxy-defaults" and access == READ:
        return True
    return authz.singleton_allowed("mesh", access)


# ---------------------------------------------------------------------- writes
def register_needs(cmd: c.Register, service_name: Callable[[str, str], str | None] | None = None) -> list[Need]:
    """Consul: node:write unless the node is left unchanged (SkipNodeUpdate), service:write on the service;
    a check of the service registered with it rides on service:write; a check of a service already in the
    catalog needs service:write on it when `service_name` can look it up; other checks need the node."""
    node = cmd.node.get("Node", "")
    needs = [] if cmd.skip_node_update else [Need("node", node)]
    if cmd.service is not None:
        needs.append(Need("service", cmd.service.get("Service", "")))
    for chk in cmd.checks:
        sid = chk.get("ServiceID") or ""
        if sid and cmd.service is not None and sid == cmd.service.get("ID"):
            continue
        svc = service_name(node, sid) if sid and service_name is not None else None
        needs.append(Need("service", svc) if svc else Need("node", node))
    return needs


def deregister_needs(node: str, service_name: str | None, by_service: bool) -> list[Need]:
    """A service needs service:write on its name (nothing when it does not exist); a node check or a whole
    node needs node:write."""
    if by_service:
        return [Need("service", service_name)] if service_name is not None else []
    return [Need("node", node)]


def kv_need(verb: str, key: str) -> Need:
    return Need("key-tree", key) if verb == "delete-tree" else Need("key", key)


def txn_op_need(op: dict[str, Any], session_node: str | None) -> Need | None:
    """The right one transaction operation needs (None: the store refuses it anyway, or its results are
    filtered as Consul does for get-tree). `session_node` is the node of a Session operation's session."""
    if op.get("Refused"):
        return None
    kind, verb = op.get("Kind", "KV"), op.get("Verb", "")
    access = READ if verb in TXN_READ_VERBS else WRITE
    if kind == "KV":
        if verb == "get-tree":
            return None
        return kv_need(verb, op.get("Key", "")) if access == WRITE else Need("key", op.get("Key", ""), READ)
    if kind == "Node":
        return Need("node", (op.get("Node") or {}).get("Node", ""), access)
    if kind == "Service":
        svc = op.get("Service") or {}
        return Need("service", svc.get("Service") or svc.get("ID", ""), access)
    if kind == "Session":
        return Need("session", session_node, access) if session_node is not None else None
    chk = op.get("Check") or {}
    if chk.get("ServiceName"):
        return Need("service", chk["ServiceName"], access)
    return Need("node", op.get("Node") or chk.get("Node", ""), access)


class StateView(Protocol):
    """What deciding on a command needs to know of the current state (a server's own replica)."""

    def session_node(self, sid: str) -> str | None: ...

    def service_name(self, node: str, service_id: str) -> str | None: ...

    def row(self, table: str, key: str) -> dict[str, Any] | None: ...


def command_needs(cmd: c.Command, state: StateView) -> list[Need]:
    """Every right applying `cmd` needs (a Batch: all of its commands')."""
    match cmd:
        case c.Register():
            return register_needs(cmd, state.service_name)
        case c.Deregister():
            name = state.service_name(cmd.node, cmd.service_id) if cmd.service_id else None
            return deregister_needs(cmd.node, name, bool(cmd.service_id))
        case c.KVOp():
            return [kv_need(cmd.verb, cmd.key)]
        case c.Txn():
            needs = []
            for op in cmd.ops:
                sid = (op.get("Session") or {}).get("ID", "") if op.get("Kind") == "Session" else ""
                need = txn_op_need(op, state.session_node(sid) if sid else None)
                if need is not None:
                    needs.append(need)
            return needs
        case c.SessionCreate():
            return [Need("session", str(cmd.session.get("Node", "")))]
        case c.SessionDestroy():
            node = state.session_node(cmd.id)
            return [Need("session", node)] if node is not None else []
        case c.TableSet():
            return table_write_needs(cmd.table, cmd.key, cmd.row, state.row(cmd.table, cmd.key))
        case c.TableDelete():
            return table_write_needs(cmd.table, cmd.key, None, state.row(cmd.table, cmd.key))
        case c.Batch():
            return [n for sub in cmd.commands for n in command_needs(sub, state)]
        case _:  # Restore, TombstoneReap, anything new: management only
            return [Need("acl")]


def table_write_needs(table: str, key: str, row: dict[str, Any] | None, old: dict[str, Any] | None) -> list[Need]:
    """Writing (row) or deleting (None) a row of one of the keyed tables; `old` is the row it replaces."""
    rows = [r for r in (row, old) if r is not None]
    if table == "intentions":
        return [Need("intention", r.get("DestinationName", "")) for r in rows]
    if table == "config_entries":
        return [Need("config", f"{r.get('Kind', '')}/{r.get('Name', '')}") for r in rows] or [Need("config", key)]
    if table == "prepared_queries":
        return [Need("query", r.get("Name") or "") for r in rows] or [Need("query", "")]
    if table == "coordinates":
        return [Need("node", (row or old or {}).get("Node", key))]
    if table in ("ca_roots", "ca_config") or (table == "meta" and key == "autopilot"):
        return [Need("operator")]
    return [Need("acl")]  # ACL objects, the bootstrap marker, anything else: management


# ---------------------------------------------------------------------- reads
Rows = Any
RowFilter = Callable[[Authorizer, Rows], tuple[Rows, bool]]


def _rows(ok: Callable[[Authorizer, dict[str, Any]], bool]) -> RowFilter:
    def apply(a: Authorizer, rows: Rows) -> tuple[Rows, bool]:
        if not rows:
            return rows, False
        kept = [r for r in rows if ok(a, r)]
        return kept, len(kept) != len(rows)
    return apply


def _row(ok: Callable[[Authorizer, dict[str, Any]], bool]) -> RowFilter:
    def apply(a: Authorizer, row: Rows) -> tuple[Rows, bool]:
        if row is None or ok(a, row):
            return row, False
        return None, True
    return apply


def _config_ok(a: Authorizer, e: dict[str, Any]) -> bool:
    return config_entry_right(a, e.get("Kind", ""), e.get("Name", ""), READ)


def _intention_ok(a: Authorizer, i: dict[str, Any]) -> bool:
    return a.intention_allowed(i.get("DestinationName", ""), READ)


def _query_ok(a: Authorizer, q: dict[str, Any]) -> bool:
    return a.allowed("query", q.get("Name") or "", READ)


def _coordinate_ok(a: Authorizer, r: dict[str, Any]) -> bool:
    return a.allowed("node", r.get("Node", ""), READ)


CONFIG_ENTRIES: RowFilter = _rows(_config_ok)  # config.list, and table.list of config_entries

# Keyed tables read through table.list / table.get: a filter of rows, or one right for the whole table.
TABLE_READS: dict[str, RowFilter | Need | None] = {
    "intentions": _rows(_intention_ok),
    "config_entries": CONFIG_ENTRIES,
    "prepared_queries": _rows(_query_ok),
    "coordinates": _rows(_coordinate_ok),
    "ca_roots": None,  # public (the signing keys never leave a server)
    "ca_config": Need("operator", access=READ),
}
TABLE_ROW_READS: dict[str, RowFilter] = {
    "intentions": _row(_intention_ok), "config_entries": _row(_config_ok), "prepared_queries": _row(_query_ok),
    "coordinates": _row(_coordinate_ok)}


def table_read(table: str, key: str | None) -> RowFilter | Need | None:
    """What reading a keyed table (all rows: key None) needs: a row filter, one right, or nothing."""
    if table == "meta":
        return Need("operator", access=READ) if key == "autopilot" else Need("acl", access=READ)
    if table.startswith(ACL_TABLE_PREFIX):
        return Need("acl", access=READ)
    if key is not None and table in TABLE_ROW_READS:
        return TABLE_ROW_READS[table]
    return TABLE_READS.get(table, Need("acl", access=READ))
