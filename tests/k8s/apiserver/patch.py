"""The patch types the API server accepts: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic
merge patch (with the merge keys of the served kinds), and a simplified server-side apply.

Server-side apply here tracks, per field manager, the set of fields it last applied (lists count as one
field) so that a field dropped from the applied configuration is removed; it does not detect conflicts
between managers (`--force-conflicts` is accepted and changes nothing).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .store import ApiError

# Strategic-merge metadata: dotted path (list elements add nothing to the path) -> merge key, or "" for a
# list of scalars merged as a set. Lists not named here are atomic (replaced), as for the real types.
MERGE_KEYS: dict[str, dict[str, str]] = {
    "*": {"metadata.finalizers": "", "metadata.ownerReferences": "uid"},
    "services": {"spec.ports": "port", "status.conditions": "type"},
    "nodes": {"status.addresses": "type", "status.conditions": "type", "spec.taints": "key",
              "spec.podCIDRs": ""},
    "namespaces": {"status.conditions": "type"},
}


def bad(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                           f"path /{'/'.join(parts)} does not exist")
    return cur


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 operations: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise bad("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad(f"invalid json patch operation {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        if kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
            continue
        if kind in ("move", "copy"):
            value = copy.deepcopy(_walk(doc, _pointer(op.get("from", ""))))
            if kind == "move":
                doc = _remove(doc, _pointer(op["from"]))
            doc = _add(doc, parts, value)
        elif kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts)
        elif kind == "replace":
            _walk(doc, parts)
            doc = _add(_remove(doc, parts), parts, copy.deepcopy(op.get("value")))
        else:
            raise bad(f"unknown json patch operation {kind!r}")
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f"index {last} out of range")
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"cannot add at /{'/'.join(parts)}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return None
    parent = _walk(doc, parts[:-1])
    _walk(doc, parts)
    if isinstance(parent, list):
        parent.pop(int(parts[-1]))
    else:
        parent.pop(parts[-1])
    return doc


def strategic_merge(resource: str, target: Any, patch: Any, path: str = "") -> Any:
    """Apply a strategic merge patch (kubectl's default for built-in kinds)."""
    keys = {**MERGE_KEYS["*"], **MERGE_KEYS.get(resource, {})}
    return _sm(keys, target, patch, path)


def _sm(keys: dict[str, str], target: Any, patch: Any, path: str) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    out = dict(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys"):
            continue
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(out.get(name), list):
                out[name] = [x for x in out[name] if x not in (v or [])]
            continue
        sub = f"{path}.{k}" if path else k
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and sub in keys:
            out[k] = _merge_list(keys, keys[sub], out.get(k) if isinstance(out.get(k), list) else [], v, sub)
        elif isinstance(v, dict):
            merged = _sm(keys, out.get(k), v, sub)
            if merged is None:
                out.pop(k, None)
            else:
                out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    for name, order in orders.items():
        sub = f"{path}.{name}" if path else name
        if isinstance(out.get(name), list):
            out[name] = _reorder(out[name], order, keys.get(sub, ""))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(keys: dict[str, str], key: str, cur: list[Any], patch: list[Any], path: str) -> list[Any]:
    out = [copy.deepcopy(x) for x in cur]
    if not key:  # a set of scalars
        for x in patch:
            if x not in out:
                out.append(copy.deepcopy(x))
        return out
    for item in patch:
        if not isinstance(item, dict):
            raise bad(f"{path}: list items must be objects with the merge key {key!r}")
        kv = item.get(key)
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == kv), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_sm(keys, {}, item, path))
        else:
            out[idx] = _sm(keys, out[idx], item, path)
    return out


def _reorder(items: list[Any], order: list[Any], key: str) -> list[Any]:
    ident = (lambda x: x.get(key) if isinstance(x, dict) else x) if key else (lambda x: x)
    order_ids = [o.get(key) if key and isinstance(o, dict) else o for o in order]
    ranked = sorted(range(len(items)), key=lambda i: (order_ids.index(ident(items[i])) if ident(items[i]) in
                                                         order_ids else len(order_ids), i))
    return [items[i] for i in ranked]


# ---------------------------------------------------------------------- server-side apply (simplified)
def field_set(obj: Any, prefix: str = "") -> set[str]:
    """The leaf field paths of an applied configuration (a list is one leaf)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v:
                out |= field_set(v, sub)
            else:
                out.add(sub)
    return out


def fields_v1(paths: set[str]) -> dict[str, Any]:
    """Paths as a managedFields FieldsV1 tree (`{"f:spec": {"f:ports": {}}}`)."""
    root: dict[str, Any] = {}
    for p in sorted(paths):
        cur = root
        for part in p.split("."):
            cur = cur.setdefault(f"f:{part}", {})
    return root


def paths_of(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in tree.items():
        sub = f"{prefix}.{k[2:]}" if prefix else k[2:]
        if v:
            out |= paths_of(v, sub)
        else:
            out.add(sub)
    return out


def remove_path(obj: dict[str, Any], path: str) -> None:
    """Delete a leaf and any map it leaves empty (no `labels: {}` left behind)."""
    parts = path.split(".")
    chain: list[dict[str, Any]] = [obj]
    for p in parts[:-1]:
        nxt = chain[-1].get(p)
        if not isinstance(nxt, dict):
            return
        chain.append(nxt)
    chain[-1].pop(parts[-1], None)
    for parent, key, child in zip(reversed(chain[:-1]), reversed(parts[:-1]), reversed(chain[1:]), strict=True):
        if child:
            break
        parent.pop(key, None)


def parse_body(raw: bytes, content_type: str) -> Any:
    """JSON, or YAML for apply patches."""
    if content_type.startswith("application/apply-patch+yaml"):
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise bad(f"error decoding YAML: {e}") from None
    try:
        return json.loads(raw or b"null")
    except ValueError as e:
        raise bad(f"couldn't get version/kind; json parse error: {e}") from None
