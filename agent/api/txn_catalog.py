"""Node, Service, Check and Session operations of /v1/txn (Consul's catalog transaction operations).

Parsed into the store's transaction op shape: {"Kind", "Verb", "Index", "Node", "Service" | "Check" | "Session"},
where "Node" is the node row for Node operations and the node's name for Service and Check operations. An
operation with a verb Consul does not know is not a 400: like Consul, the transaction answers 409 with the
operation's index and `unknown <Kind> verb "<verb>"` (`refused`).
"""

from __future__ import annotations

from typing import Any

from proconsul.agent.api.body import fold_keys
from proconsul.agent.api.errors import BadRequest
from proconsul.catalog.txn_catalog import CATALOG_KINDS, SESSION_VERBS, VERBS, q

NODE_FIELDS = ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta", "ModifyIndex")
SERVICE_FIELDS = ("ID", "Service", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "Weights",
                  "EnableTagOverride", "Kind", "Proxy", "Connect", "SocketPath", "ModifyIndex")
CHECK_FIELDS = ("Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "Type", "Definition",
                "Interval", "Timeout", "ModifyIndex")


def _object(value: Any, where: str, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    return fold_keys(value, names)


def _typed(obj: dict[str, Any], where: str, strings: tuple[str, ...], maps: tuple[str, ...] = (),
           ints: tuple[str, ...] = ()) -> None:
    for name in strings:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise BadRequest(f"{where}.{name} must be a string")
    for name in maps:
        if obj.get(name) is not None and not isinstance(obj[name], dict):
            raise BadRequest(f"{where}.{name} must be an object")
    for name in ints:
        v = obj.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise BadRequest(f"{where}.{name} must be a non-negative number")


def catalog_txn_op(i: int, kind: str, raw: Any) -> dict[str, Any]:
    """One Node/Service/Check operation of a transaction, checked for shape (the store checks the rest)."""
    where = f"Txn[{i}].{kind}"
    op = _object(raw, where, ("Verb", "Node", "Service", "Check", "Session"))
    verb = op.get("Verb")
    if not isinstance(verb, str):
        raise BadRequest(f"{where}.Verb must be a string ({', '.join(SESSION_VERBS if kind == 'Session' else VERBS)})")
    if verb not in (SESSION_VERBS if kind == "Session" else VERBS):
        return refused(kind, verb)
    out: dict[str, Any] = {"Kind": kind, "Verb": verb}
    if kind == "Session":
        sess = _object(op.get("Session"), f"{where}.Session", ("ID",))
        if not isinstance(sess.get("ID"), str) or not sess["ID"]:
            raise BadRequest(f"{where}.Session.ID must name the session")
        out["Session"] = {"ID": sess["ID"]}
        return out
    if kind == "Node":
        node = _object(op.get("Node"), f"{where}.Node", NODE_FIELDS)
        _typed(node, f"{where}.Node", ("ID", "Node", "Address", "Datacenter"), ("TaggedAddresses", "Meta"),
               ("ModifyIndex",))
        out["Node"], out["Index"] = node, node.pop("ModifyIndex", 0) or 0
        return out
    if kind == "Service":
        if not isinstance(op.get("Node"), str) or not op["Node"]:
            raise BadRequest(f"{where}.Node must name the node of the service")
        svc = _object(op.get("Service"), f"{where}.Service", SERVICE_FIELDS)
        _typed(svc, f"{where}.Service", ("ID", "Service", "Address", "Kind", "SocketPath"),
               ("TaggedAddresses", "Meta", "Weights", "Proxy", "Connect"), ("Port", "ModifyIndex"))
        if svc.get("Tags") is not None and (not isinstance(svc["Tags"], list)
                                            or not all(isinstance(t, str) for t in svc["Tags"])):
            raise BadRequest(f"{where}.Service.Tags must be a list of strings")
        out["Node"], out["Service"], out["Index"] = op["Node"], svc, svc.pop("ModifyIndex", 0) or 0
        return out
    chk = _object(op.get("Check"), f"{where}.Check", CHECK_FIELDS)
    _typed(chk, f"{where}.Check", ("Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "Type",
                                   "Interval", "Timeout"), ("Definition",), ("ModifyIndex",))
    if not chk.get("Node"):
        raise BadRequest(f"{where}.Check.Node must name the node of the check")
    out["Node"], out["Check"], out["Index"] = chk["Node"], chk, chk.pop("ModifyIndex", 0) or 0
    return out


def refused(kind: str, verb: str) -> dict[str, Any]:
    """An operation Consul's state store refuses (an unknown verb): it fails the transaction with a 409."""
    return {"Kind": kind, "Verb": verb, "Refused": f"unknown {kind} verb {q(verb)}"}


def is_catalog_kind(kind: Any) -> bool:
    return kind in CATALOG_KINDS
