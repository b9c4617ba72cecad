"""Node, Service and Check operations of a /v1/txn transaction, checked before anything is applied.

A transaction applies whole or not at all. KV operations are tried for real and rolled back; catalog
operations are checked first against the state as the earlier operations of the same transaction leave
it (an `Overlay`), and applied only when every operation of the transaction passed. Verbs are Consul's:
set, cas, get, delete, delete-cas for nodes, services and checks (cas and delete-cas compare the row's
ModifyIndex); delete for sessions. Error texts are Consul's, quoted as Go's %q quotes.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

CATALOG_KINDS = ("Node", "Service", "Check", "Session")
VERBS = ("set", "cas", "get", "delete", "delete-cas")
SESSION_VERBS = ("delete",)
STATUSES = ("passing", "warning", "critical", "maintenance")


def q(text: Any) -> str:
    """`text` quoted as Go's %q quotes it (Consul's error messages quote names this way)."""
    return json.dumps(str(text), ensure_ascii=False)


class Rows(Protocol):
    """The point reads the overlay needs from the state store."""

    def get_node(self, name: str) -> tuple[int, dict[str, Any] | None]: ...

    def service_row(self, node: str, service_id: str) -> dict[str, Any] | None: ...

    def check_row(self, node: str, check_id: str) -> dict[str, Any] | None: ...

    def session_get(self, sid: str) -> tuple[int, dict[str, Any] | None]: ...


_GONE: dict[str, Any] = {}  # marks a row this transaction deleted


class Overlay:
    """The catalog as seen part-way through a transaction: store rows, with this transaction's writes on top.

    Reads are point lookups (a node may hold thousands of services). A row written earlier in the transaction
    shows ModifyIndex = the transaction's own index.
    """

    def __init__(self, rows: Rows, index: int) -> None:
        self.rows, self.index = rows, index
        self.nodes: dict[str, dict[str, Any] | None] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}
        self.dropped_nodes: set[str] = set()  # nodes deleted in this transaction: their old rows are gone
        self.dropped_services: set[tuple[str, str]] = set()  # services deleted here: their old checks are gone
        self.dropped_sessions: set[str] = set()

    def node(self, name: str) -> dict[str, Any] | None:
        key = name.lower()
        if key not in self.nodes:
            self.nodes[key] = self.rows.get_node(name)[1]
        return self.nodes[key]

    def service(self, node: str, sid: str) -> dict[str, Any] | None:
        key = (node.lower(), sid)
        row = self.services.get(key)
        if row is None:
            row = None if key[0] in self.dropped_nodes else self.rows.service_row(node, sid)
        return None if row is _GONE else row

    def check(self, node: str, cid: str) -> dict[str, Any] | None:
        key = (node.lower(), cid)
        row = self.checks.get(key)
        if row is None:
            row = None if key[0] in self.dropped_nodes else self.rows.check_row(node, cid)
            if row is not None and (key[0], row.get("ServiceID") or "") in self.dropped_services:
                row = None
        return None if row is _GONE else row

    def _stale(self, row: dict[str, Any] | None, op: dict[str, Any], what: str) -> str | None:
        want = int(op.get("Index") or 0)
        if op["Verb"] == "cas" and want == 0:
            return None if row is None else f"failed to set {what}, index is stale"  # cas 0: only when absent
        if row is None or row.get("ModifyIndex") != want:
            return f"failed to {'set' if op['Verb'] == 'cas' else 'delete'} {what}, index is stale"
        return None

    def apply(self, op: dict[str, Any]) -> str | None:
        """Why `op` would fail here (None when it would succeed); on success the overlay takes its effect."""
        kind, verb = op["Kind"], op["Verb"]
        if kind == "Node":
            return self._node(op, verb)
        if kind == "Session":
            return self._session(op, verb)
        node_name = op.get("Node") or ""
        if not node_name:
            return "Must provide node"
        nkey = node_name.lower()
        if kind == "Service":
            sid = op["Service"].get("ID") or op["Service"].get("Service") or ""
            cur = self.service(node_name, sid)
            what = f"service {q(sid)} on node {q(node_name)}"
            if verb == "get":
                return None if cur is not None else f"{what} doesn't exist"
            if verb in ("cas", "delete-cas") and (err := self._stale(cur, op, what)):
                return err
            if verb in ("delete", "delete-cas"):
                self.services[(nkey, sid)] = _GONE
                self.dropped_services.add((nkey, sid))
                return None
            if self.node(node_name) is None:
                return f"Missing node registration: no node {q(node_name)}"
            if not op["Service"].get("Service"):
                return "Must provide service name (Service.Service)"
            self.services[(nkey, sid)] = {"ID": sid, "ModifyIndex": self.index}
            return None
        chk = op["Check"]
        cid = chk.get("CheckID") or chk.get("Name") or ""
        cur = self.check(node_name, cid)
        what = f"check {q(cid)} on node {q(node_name)}"
        if verb == "get":
            return None if cur is not None else f"{what} doesn't exist"
        if verb in ("cas", "delete-cas") and (err := self._stale(cur, op, what)):
            return err
        if verb in ("delete", "delete-cas"):
            self.checks[(nkey, cid)] = _GONE
            return None
        if not cid:
            return "Must provide a check ID or Name"
        if self.node(node_name) is None:
            return f"Missing node registration: no node {q(node_name)}"
        sid = chk.get("ServiceID") or ""
        if sid and self.service(node_name, sid) is None:
            return f"Missing service registration for check {q(cid)}: no service {q(sid)} on node {q(node_name)}"
        if chk.get("Status") and chk["Status"] not in STATUSES:
            return f"Invalid check status {q(chk['Status'])}"
        self.checks[(nkey, cid)] = {"CheckID": cid, "ServiceID": sid, "ModifyIndex": self.index}
        return None

    def _node(self, op: dict[str, Any], verb: str) -> str | None:
        node = op["Node"]
        name = node.get("Node") or ""
        if not name:
            return "Must provide node"
        cur = self.node(name)
        if verb == "get":
            return None if cur is not None else f"node {q(name)} doesn't exist"
        if verb in ("cas", "delete-cas") and (err := self._stale(cur, op, f"node {q(name)}")):
            return err
        key = name.lower()
        if verb in ("delete", "delete-cas"):
            self.nodes[key] = None
            self.dropped_nodes.add(key)
            self.services = {k: v for k, v in self.services.items() if k[0] != key}
            self.checks = {k: v for k, v in self.checks.items() if k[0] != key}
            return None
        if not node.get("Address"):
            return "Must provide address"
        self.nodes[key] = {"Node": name, "ModifyIndex": self.index}
        return None

    def _session(self, op: dict[str, Any], verb: str) -> str | None:
        if verb not in SESSION_VERBS:
            return f"unknown Session verb {q(verb)}"
        sid = op["Session"].get("ID") or ""
        if not sid or sid in self.dropped_sessions or self.rows.session_get(sid)[1] is None:
            return f"failed to delete session: session {q(sid)} not found"
        self.dropped_sessions.add(sid)
        return None
