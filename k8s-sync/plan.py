"""The catalog side of a sync, pure: diff what the Services call for against what the catalog holds on this
syncer's node, and batch the difference into /v1/txn transactions.

Only rows this syncer owns are touched: services on its node carrying its tag and `external-source =
kubernetes`, their readiness checks, and the node's liveness check. Nothing is deleted until both sides
have been listed once (`may_reap`): a restarted syncer that has not yet seen every Service must not remove
the instances of the ones it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .to_consul import CHECK_TYPE, SOURCE_META, Instance

Obj = dict[str, Any]
LIVENESS_CHECK_ID = "k8s-sync-alive"
MAX_TXN_OPS = 128  # the agent's limit per transaction (Consul's)


@dataclass
class CatalogView:
    """The catalog's rows on this syncer's node (as /v1/catalog/node-services and /v1/health/node give them)."""

    node: Obj | None = None
    services: dict[str, Obj] = field(default_factory=dict)
    checks: dict[str, Obj] = field(default_factory=dict)


@dataclass
class Plan:
    """Transactions to send, in order, and what they amount to (for metrics and logs)."""

    txns: list[list[Obj]]
    registers: int = 0
    deregisters: int = 0

    @property
    def empty(self) -> bool:
        return not self.txns


def node_body(node: str, tag: str) -> Obj:
    return {"Node": node, "Address": "127.0.0.1", "Meta": {**SOURCE_META, "k8s-sync-tag": tag}}


def liveness_body(node: str, session_id: str) -> Obj:
    return {"Node": node, "CheckID": LIVENESS_CHECK_ID, "Name": "k8s-sync liveness", "Type": "session",
            "Status": "passing", "Output": f"k8s-sync holds session {session_id}",
            "Definition": {"SessionID": session_id}}


def owned(row: Obj, tag: str) -> bool:
    """Whether a service row on our node is this syncer's (its tag and the Kubernetes source)."""
    return tag in (row.get("Tags") or []) and (row.get("Meta") or {}).get("external-source") == "kubernetes"


def _differs(actual: Obj | None, want: Obj, fields: tuple[str, ...]) -> bool:
    if actual is None:
        return True
    return any((actual.get(f) or None) != (want.get(f) or None) for f in fields)


SERVICE_FIELDS = ("Service", "Tags", "Address", "Port", "Meta")
CHECK_FIELDS = ("Name", "Type", "Status", "Output", "ServiceID", "Definition")


def _weights_differ(actual: Obj | None, want: Obj) -> bool:
    if actual is None:
        return True
    have = actual.get("Weights") or {"Passing": 1, "Warning": 1}
    return have != want.get("Weights", {"Passing": 1, "Warning": 1})


def plan_to_consul(desired: dict[str, Instance], view: CatalogView, node: str, tag: str, session_id: str,
                   *, may_reap: bool, candidates: set[str] | None = None, max_ops: int = MAX_TXN_OPS) -> Plan:
    """The transactions that make the catalog match `desired`; no transaction at all when nothing differs.

    `candidates`: the instance IDs that may have changed (None: compare them all); what to reap is always
    found by a full (cheap) pass over the view.
    """
    head: list[Obj] = []
    want_node = node_body(node, tag)
    if view.node is None or _differs(view.node, want_node, ("Address", "Meta")):
        head.append({"Node": {"Verb": "set", "Node": want_node}})
    alive = liveness_body(node, session_id)
    if _differs(view.checks.get(LIVENESS_CHECK_ID), alive, CHECK_FIELDS):
        head.append({"Check": {"Verb": "set", "Check": alive}})
    groups: list[list[Obj]] = []
    registers = deregisters = 0
    for sid in sorted(desired if candidates is None else candidates & desired.keys()):
        inst = desired[sid]
        ops: list[Obj] = []
        body = inst.service_body()
        if _differs(view.services.get(sid), body, SERVICE_FIELDS) or _weights_differ(view.services.get(sid), body):
            ops.append({"Service": {"Verb": "set", "Node": node, "Service": body}})
            registers += 1
        check = inst.check_body(node)
        if check is not None and (ops or _differs(view.checks.get(inst.check_id), check, CHECK_FIELDS)):
            ops.append({"Check": {"Verb": "set", "Check": check}})
        elif check is None and inst.check_id in view.checks:
            ops.append({"Check": {"Verb": "delete", "Check": {"Node": node, "CheckID": inst.check_id}}})
        if ops:
            groups.append(ops)
    if may_reap:
        for sid in sorted(view.services):
            if sid not in desired and owned(view.services[sid], tag):
                groups.append([{"Service": {"Verb": "delete", "Node": node, "Service": {"ID": sid}}}])
                deregisters += 1
        ours = {sid for sid, row in view.services.items() if owned(row, tag)}
        for cid, row in sorted(view.checks.items()):
            if row.get("Type") == CHECK_TYPE and row.get("ServiceID") in ours and row["ServiceID"] not in desired:
                continue  # goes with its service's deletion
            if row.get("Type") == CHECK_TYPE and row.get("ServiceID") and row["ServiceID"] not in view.services:
                groups.append([{"Check": {"Verb": "delete", "Check": {"Node": node, "CheckID": cid}}}])
    return Plan(batch(head, groups, max_ops), registers, deregisters)


def batch(head: list[Obj], groups: list[list[Obj]], max_ops: int = MAX_TXN_OPS) -> list[list[Obj]]:
    """Pack operation groups (an instance's service and check stay together) into transactions of ≤ max_ops."""
    if not head and not groups:
        return []
    txns: list[list[Obj]] = [list(head)]
    for g in groups:
        if len(txns[-1]) + len(g) > max_ops:
            txns.append([])
        txns[-1].extend(g)
    return [t for t in txns if t]


def purge_plan(view: CatalogView, node: str, tag: str, max_ops: int = MAX_TXN_OPS) -> list[list[Obj]]:
    """Everything this syncer wrote: its services, their checks, and the node when nothing else is on it."""
    mine = sorted(sid for sid, row in view.services.items() if owned(row, tag))
    groups = [[{"Service": {"Verb": "delete", "Node": node, "Service": {"ID": sid}}}] for sid in mine]
    if view.node is not None and len(mine) == len(view.services):
        groups.append([{"Node": {"Verb": "delete", "Node": {"Node": node}}}])
    return batch([], groups, max_ops)
