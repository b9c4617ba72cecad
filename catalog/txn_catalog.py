"""Node, Service and Check operations of a /v1/txn transaction, checked before anything is applied.

A transaction applies whole or not at all. KV operations are tried for real and rolled back; catalog
operations are checked first against the state as the earlier operations of the same transaction leave
it (an `Overlay`), and applied only when every operation of the transaction passed. Verbs are Consul's:
set, cas, get, delete, delete-cas (cas and delete-cas compare the row's ModifyIndex).
"""

from __future__ import annotations

from typing import Any, Protocol

CATALOG_KINDS = ("Node", "Service", "Check")
VERBS = ("set", "cas", "get", "delete", "delete-cas")
STATUSES = ("passing", "warning", "critical", "maintenance")


class Rows(Protocol):
    """The reads the overlay needs from the state store."""

    def get_node(self, name: str) -> tuple[int, dict[str, Any] | None]: ...

    def node_services(self, node: str) -> tuple[int, tuple[dict[str, Any] | None, list[dict[str, Any]]]]: ...

    def node_checks(self, node: str) -> tuple[int, list[dict[str, Any]]]: ...


class Overlay:
    """The catalog as seen part-way through a transaction: store rows, with this transaction's writes on top.

    A row written earlier in the transaction shows ModifyIndex = the transaction's own index.
    """

    def __init__(self, rows: Rows, index: int) -> None:
        self.rows, self.index = rows, index
        self.nodes: dict[str, dict[str, Any] | None] = {}
        self.services: dict[str, dict[str, dict[str, Any]]] = {}
        self.checks: dict[str, dict[str, dict[str, Any]]] = {}

    def node(self, name: str) -> dict[str, Any] | None:
        key = name.lower()
        if key not in self.nodes:
            self.nodes[key] = self.rows.get_node(name)[1]
        return self.nodes[key]

    def node_services(self, name: str) -> dict[str, dict[str, Any]]:
        key = name.lower()
        if key not in self.services:
            self.services[key] = {s["ID"]: s for s in self.rows.node_services(name)[1][1]}
        return self.services[key]

    def node_checks(self, name: str) -> dict[str, dict[str, Any]]:
        key = name.lower()
        if key not in self.checks:
            self.checks[key] = {c["CheckID"]: c for c in self.rows.node_checks(name)[1]}
        return self.checks[key]

    def _stale(self, row: dict[str, Any] | None, op: dict[str, Any], what: str) -> str | None:
        want = int(op.get("Index") or 0)
        if op["Verb"] == "cas" and want == 0:
            return None if row is None else f"failed to set {what}, index is stale"  # cas 0: only when absent
        if row is None or row.get("ModifyIndex") != want:
            return f"failed to {'set' if op['Verb'] == 'cas' else 'delete'} {what}, index is stale"
        return None

    def check(self, op: dict[str, Any]) -> str | None:
        """Why `op` would fail here (None when it would succeed); on success the overlay takes its effect."""
        kind, verb = op["Kind"], op["Verb"]
        if kind == "Node":
            node = op["Node"]
            name = node.get("Node") or ""
            if not name:
                return "Must provide node"
            cur = self.node(name)
            if verb == "get":
                return None if cur is not None else f"node {name!r} doesn't exist"
            if verb in ("cas", "delete-cas") and (err := self._stale(cur, op, f"node {name!r}")):
                return err
            if verb in ("delete", "delete-cas"):
                self.nodes[name.lower()] = None
                self.services[name.lower()] = {}
                self.checks[name.lower()] = {}
                return None
            if not node.get("Address"):
                return "Must provide address"
            self.nodes[name.lower()] = {"Node": name, "ModifyIndex": self.index}
            return None
        node_name = op.get("Node") or ""
        if not node_name:
            return "Must provide node"
        if kind == "Service":
            sid = op["Service"].get("ID") or op["Service"].get("Service") or ""
            services = self.node_services(node_name)
            cur = services.get(sid)
            what = f"service {sid!r} on node {node_name!r}"
            if verb == "get":
                return None if cur is not None else f"{what} doesn't exist"
            if verb in ("cas", "delete-cas") and (err := self._stale(cur, op, what)):
                return err
            if verb in ("delete", "delete-cas"):
                services.pop(sid, None)
                checks = self.node_checks(node_name)
                for cid in [c for c, row in checks.items() if row.get("ServiceID") == sid]:
                    del checks[cid]
                return None
            if self.node(node_name) is None:
                return f"Missing node registration: no node {node_name!r}"
            if not op["Service"].get("Service"):
                return "Must provide service name (Service.Service)"
            services[sid] = {"ID": sid, "ModifyIndex": self.index}
            return None
        chk = op["Check"]
        cid = chk.get("CheckID") or chk.get("Name") or ""
        checks = self.node_checks(node_name)
        cur = checks.get(cid)
        what = f"check {cid!r} on node {node_name!r}"
        if verb == "get":
            return None if cur is not None else f"{what} doesn't exist"
        if verb in ("cas", "delete-cas") and (err := self._stale(cur, op, what)):
            return err
        if verb in ("delete", "delete-cas"):
            checks.pop(cid, None)
            return None
        if not cid:
            return "Must provide a check ID or Name"
        if self.node(node_name) is None:
            return f"Missing node registration: no node {node_name!r}"
        sid = chk.get("ServiceID") or ""
        if sid and sid not in self.node_services(node_name):
            return f"Missing service registration for check {cid!r}: no service {sid!r} on node {node_name!r}"
        if chk.get("Status") and chk["Status"] not in STATUSES:
            return f"Invalid check status {chk['Status']!r}"
        checks[cid] = {"CheckID": cid, "ServiceID": sid, "ModifyIndex": self.index}
        return None
