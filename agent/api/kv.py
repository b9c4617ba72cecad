"""/v1/kv/* and /v1/txn: the key/value store, and transactions (KV ops here, catalog ops in txn_catalog)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from proconsul.agent.acl.enforce import kv_need, require, txn_op_need
from proconsul.agent.acl.filters import filter_query
from proconsul.agent.api.authz import FILTERED_HEADER, authorizer
from proconsul.agent.api.body import fold_keys, json_body
from proconsul.agent.api.catalog import cached_read, mark_cacheable
from proconsul.agent.api.errors import BadRequest, TooLarge
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common, consistency_mode, flag, uint_param
from proconsul.agent.api.responses import consul_headers, json_response
from proconsul.agent.api.txn_catalog import catalog_txn_op, is_catalog_kind, refused
from proconsul.agent.cluster.caller import results_filtered
from proconsul.catalog import commands as c
from proconsul.catalog.store import is_read_op

routes = web.RouteTableDef()

MAX_VALUE = 512 * 1024
MAX_TXN_OPS = 128
TXN_KV_VERBS = {"set", "cas", "lock", "unlock", "get", "get-or-empty", "get-tree", "check-index", "check-session",
                "check-not-exists", "delete", "delete-tree", "delete-cas"}
TXN_KINDS = ("KV", "Node", "Service", "Check", "Session")


def kv_entry(row: dict[str, Any]) -> dict[str, Any]:
    """A stored KV row in Consul's JSON shape (base64 value, Session only when held)."""
    out = {"LockIndex": row["LockIndex"], "Key": row["Key"], "Flags": row["Flags"],
           # Consul stores an empty body as no value at all: it reads back as null, not "".
           "Value": base64.b64encode(row["Value"]).decode() if row["Value"] else None,
           "CreateIndex": row["CreateIndex"], "ModifyIndex": row["ModifyIndex"]}
    if row.get("Session"):
        out["Session"] = row["Session"]
    return out


def _key(request: web.Request) -> str:
    return request.match_info.get("key", "")


@routes.get("/v1/kv/{key:.*}")
@cached_read
async def get(request: web.Request) -> web.StreamResponse:
    check_common(request)
    agent = request.app[AGENT]
    key = _key(request)
    b = blocking_params(request)
    mode = consistency_mode(request)
    authz = await authorizer(request)
    mark_cacheable(request, "kv.get", b.index)  # kv.get, kv.list and kv.keys all read the kvs table
    if "keys" in request.query:
        if agent.config.acl.enable_key_list_policy:
            authz.require("key", key, "list")
        idx, keys = await agent.backend.query("kv.keys", {"key": key, "separator": request.query.get("separator", "")},
                                              b.index, b.wait, mode)
        keys, dropped = filter_query("kv.keys", authz, keys)
        dropped = dropped or results_filtered()
        if keys is None:
            return web.Response(status=404, headers=consul_headers(request, idx))
        return json_response(request, keys, index=idx, headers={FILTERED_HEADER: "true"} if dropped else None)
    dropped = False
    if flag(request, "recurse"):
        if agent.config.acl.enable_key_list_policy:
            authz.require("key", key, "list")
        idx, rows = await agent.backend.query("kv.list", {"key": key}, b.index, b.wait, mode)
        rows, dropped = filter_query("kv.list", authz, rows)
        dropped = dropped or results_filtered()
    else:
        if not key:
            raise BadRequest("Missing key name")
        authz.require("key", key, "read")
        idx, rows = await agent.backend.query("kv.get", {"key": key}, b.index, b.wait, mode)
    if not rows:
        return web.Response(status=404, headers=consul_headers(request, idx))
    if "raw" in request.query:
        value = rows[0]["Value"] or b""
        return web.Response(body=value, headers=consul_headers(request, idx),
                            content_type="text/plain", charset="utf-8")
    return json_response(request, [kv_entry(r) for r in rows], index=idx,
                         headers={FILTERED_HEADER: "true"} if dropped else None)


@routes.put("/v1/kv/{key:.*}")
async def put(request: web.Request) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    key = _key(request)
    if not key:
        raise BadRequest("Missing key name")
    q = request.query
    if "acquire" in q and "release" in q:
        raise BadRequest("Conflicting flags: ?acquire and ?release cannot be used together")
    if "cas" in q and ("acquire" in q or "release" in q):
        raise BadRequest("Conflicting flags: ?cas cannot be combined with ?acquire or ?release")
    if request.content_length is not None and request.content_length > MAX_VALUE:
        raise TooLarge(f"Request body({request.content_length} bytes) too large, max size: {MAX_VALUE} bytes")
    value = await request.read()
    if len(value) > MAX_VALUE:
        raise TooLarge(f"Request body({len(value)} bytes) too large, max size: {MAX_VALUE} bytes")
    flags = uint_param(request, "flags")
    if flags >= 1 << 64:
        raise BadRequest("Invalid flags: must fit in 64 bits")
    if "acquire" in q:
        cmd = c.KVOp(verb="lock", key=key, value=value, flags=flags, session=q["acquire"])
    elif "release" in q:
        cmd = c.KVOp(verb="unlock", key=key, value=value, flags=flags, session=q["release"])
    elif "cas" in q:
        cmd = c.KVOp(verb="cas", key=key, value=value, flags=flags, index=uint_param(request, "cas"))
    else:
        cmd = c.KVOp(verb="set", key=key, value=value, flags=flags)
    require(await authorizer(request), [kv_need(cmd.verb, key)])
    result = await agent.backend.apply(cmd)
    return json_response(request, bool(result))


@routes.delete("/v1/kv/{key:.*}")
async def delete(request: web.Request) -> web.Response:
    check_common(request)
    agent = request.app[AGENT]
    key = _key(request)
    if flag(request, "recurse"):
        cmd = c.KVOp(verb="delete-tree", key=key)
    else:
        if not key:
            raise BadRequest("Missing key name")
        if "cas" in request.query:
            cmd = c.KVOp(verb="delete-cas", key=key, index=uint_param(request, "cas"))
        else:
            cmd = c.KVOp(verb="delete", key=key)
    require(await authorizer(request), [kv_need(cmd.verb, key)])
    result = await agent.backend.apply(cmd)
    return json_response(request, bool(result))


def _txn_op(i: int, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise BadRequest(f"Txn[{i}] must be an object with exactly one of {', '.join(TXN_KINDS)}")
    kind, op = next(iter(raw.items()))
    if isinstance(kind, str):
        kind = {k.lower(): k for k in TXN_KINDS}.get(kind.lower(), kind)
    if is_catalog_kind(kind):
        return catalog_txn_op(i, kind, op)
    if kind != "KV":
        raise BadRequest(f"Txn[{i}].{kind}: unknown operation type ({', '.join(TXN_KINDS)})")
    if not isinstance(op, dict):
        raise BadRequest(f"Txn[{i}].KV must be an object")
    op = fold_keys(op, ("Verb", "Key", "Value", "Flags", "Index", "Session"))
    verb = op.get("Verb")
    if not isinstance(verb, str):
        raise BadRequest(f"Txn[{i}].KV.Verb must be a string ({', '.join(sorted(TXN_KV_VERBS))})")
    if verb not in TXN_KV_VERBS:
        return refused("KV", verb)
    key = op.get("Key", "")
    if not isinstance(key, str) or (not key and verb not in ("get-tree", "delete-tree")):
        raise BadRequest(f"Txn[{i}].KV.Key must be a non-empty string")
    value = op.get("Value")
    if value is not None:
        if not isinstance(value, str):
            raise BadRequest(f"Txn[{i}].KV.Value must be a base64 string")
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"Txn[{i}].KV.Value is not valid base64") from None
        if len(value) > MAX_VALUE:
            raise TooLarge(f"Txn[{i}].KV.Value is {len(value)} bytes, max size: {MAX_VALUE} bytes")
    for name in ("Flags", "Index"):
        v = op.get(name, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BadRequest(f"Txn[{i}].KV.{name} must be a non-negative number")
    session = op.get("Session", "")
    if not isinstance(session, str):
        raise BadRequest(f"Txn[{i}].KV.Session must be a string")
    return {"Verb": verb, "Key": key, "Value": value, "Flags": op.get("Flags", 0), "Index": op.get("Index", 0),
            "Session": session}


async def _may_txn(request: web.Request, ops: list[dict[str, Any]]) -> None:
    """Every operation of a transaction needs its own right, checked before anything is applied (Consul).
    Operations the store will refuse (unknown verbs) need none: they fail the transaction anyway."""
    agent = request.app[AGENT]
    if agent.acl is None:
        return
    authz = await authorizer(request)
    for op in ops:
        node = None
        if op.get("Kind") == "Session" and not op.get("Refused"):
            _, rows = await agent.backend.query("session.info", {"id": (op.get("Session") or {}).get("ID", "")})
            node = rows[0]["Node"] if rows else None
        need = txn_op_need(op, node)
        if need is not None:
            require(authz, [need])


@routes.put("/v1/txn")
async def txn(request: web.Request) -> web.Response:
    check_common(request)
    body = await json_body(request)
    if not isinstance(body, list):
        raise BadRequest("Request decode failed: the transaction must be a JSON list of operations")
    if len(body) > MAX_TXN_OPS:
        raise TooLarge(f"Transaction contains too many operations ({len(body)} > {MAX_TXN_OPS})")
    ops = [_txn_op(i, raw) for i, raw in enumerate(body)]
    await _may_txn(request, ops)
    backend = request.app[AGENT].backend
    index = None
    if all(is_read_op(op) for op in ops):
        # Consul's fast path: a read-only transaction is a read (any consistency mode), not a Raft write.
        index, result = await backend.query("txn.read", {"ops": ops}, 0, 0.0, consistency_mode(request))
    else:
        result = await backend.apply(c.Txn(ops=ops))
    if result["Errors"]:
        return json_response(request, {"Results": None, "Errors": result["Errors"]}, status=409, index=index)
    authz = await authorizer(request)
    results = [{"KV": kv_entry(r["KV"])} if "KV" in r else r for r in result["Results"]
               if "KV" not in r or authz.allowed("key", r["KV"]["Key"], "read")]
    return json_response(request, {"Results": results, "Errors": None}, index=index)
