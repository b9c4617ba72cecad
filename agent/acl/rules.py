"""Consul's ACL rules language (HCL or JSON) parsed into `Rules`: pure, no I/O.

A policy grants an access level — "read", "write", "deny", and "list" for keys — on resources named
exactly (`key "a/b"`) or by prefix (`key_prefix "a/"`), plus a few singletons (`operator = "read"`).
Service rules also carry an `intentions` level (default: read when the service is readable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from proconsul.agent.acl.errors import RulesError

READ, WRITE, DENY, LIST = "read", "write", "deny", "list"
LEVELS = (READ, WRITE, DENY, LIST)
# Resources named by a segment: each has an exact form and a `_prefix` form.
SEGMENTED = ("key", "service", "node", "session", "agent", "event", "query")
# Resources that are one value for the whole cluster.
SINGLETONS = ("operator", "acl", "keyring", "mesh", "peering")


@dataclass(frozen=True, slots=True)
class Rule:
    access: str
    intentions: str = ""  # services only


@dataclass
class Rules:
    """The rules of one policy (or several merged): exact and prefix rules per resource, and singletons."""

    exact: dict[str, dict[str, Rule]] = field(default_factory=dict)
    prefix: dict[str, dict[str, Rule]] = field(default_factory=dict)
    singletons: dict[str, str] = field(default_factory=dict)


def _check_level(kind: str, name: str | None, level: Any, what: str = "policy") -> str:
    allowed = LEVELS if kind == "key" else (READ, WRITE, DENY)
    if not isinstance(level, str) or level not in allowed:
        where = f'{kind} "{name}"' if name is not None else kind
        raise RulesError(f"Invalid {where} {what} {level!r}: must be one of {', '.join(allowed)}")
    return level


def _blocks(value: Any, key: str) -> list[tuple[str, dict[str, Any]]]:
    """A resource key's value as (name, body) pairs: JSON gives a map, HCL a list of one-entry maps."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise RulesError(f"{key} must be a block: {key} \"<name>\" {{ policy = \"read\" }}")
        for name, body in item.items():
            if name == "__is_block__":
                continue
            if isinstance(body, list) and len(body) == 1:
                body = body[0]
            if not isinstance(body, dict):
                raise RulesError(f'{key} "{name}" must be a block with a policy')
            out.append((_unquote(name), {k: _unquote(v) for k, v in body.items() if k != "__is_block__"}))
    return out


def _unquote(v: Any) -> Any:
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def _parse_text(text: str) -> dict[str, Any]:
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise RulesError(f"Failed to parse ACL rules: invalid JSON at line {e.lineno}: {e.msg}") from None
    else:
        import hcl2

        try:
            data = hcl2.loads(text)
        except Exception as e:  # python-hcl2 raises lark errors of many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RulesError(f"Failed to parse ACL rules: {first}") from None
    if not isinstance(data, dict):
        raise RulesError("Failed to parse ACL rules: the top level must be an object")
    return data


def parse_rules(text: str) -> Rules:
    """Parse a policy's rules; raises RulesError naming the resource and the problem."""
    rules = Rules()
    for key, value in _parse_text(text).items():
        value = _unquote(value)
        if key in SINGLETONS:
            if isinstance(value, list) and len(value) == 1:
                value = _unquote(value[0])
            rules.singletons[key] = _check_level(key, None, value)
            continue
        kind, is_prefix = (key[:-7], True) if key.endswith("_prefix") else (key, False)
        if kind == "keys":  # an old alias
            kind = "key"
        if kind not in SEGMENTED:
            raise RulesError(f"Failed to parse ACL rules: unknown resource {key!r}")
        table = (rules.prefix if is_prefix else rules.exact).setdefault(kind, {})
        for name, body in _blocks(value, key):
            unknown = set(body) - {"policy", "intentions"}
            if unknown or (kind != "service" and "intentions" in body):
                raise RulesError(f'{key} "{name}": unknown field {sorted(unknown or {"intentions"})[0]!r}')
            level = _check_level(kind, name, body.get("policy"))
            intentions = ""
            if kind == "service":
                intentions = body.get("intentions") or ""
                if intentions:
                    _check_level(kind, name, intentions, "intentions")
                else:
                    intentions = READ if level in (READ, WRITE) else DENY
            table[name] = merge_rule(table.get(name), Rule(level, intentions))
    return rules


_RANK = {DENY: 4, WRITE: 3, LIST: 2, READ: 1, "": 0}


def stronger(a: str, b: str) -> str:
    """Consul's precedence when two policies set the same resource: deny, then write, list, read."""
    return a if _RANK[a] >= _RANK[b] else b


def merge_rule(a: Rule | None, b: Rule) -> Rule:
    if a is None:
        return b
    return Rule(stronger(a.access, b.access), stronger(a.intentions, b.intentions))


def merge(all_rules: list[Rules]) -> Rules:
    """Merge several policies' rules into one set, with Consul's precedence per resource."""
    out = Rules()
    for r in all_rules:
        for src, dst in ((r.exact, out.exact), (r.prefix, out.prefix)):
            for kind, table in src.items():
                target = dst.setdefault(kind, {})
                for name, rule in table.items():
                    target[name] = merge_rule(target.get(name), rule)
        for kind, level in r.singletons.items():
            out.singletons[kind] = stronger(out.singletons.get(kind, ""), level)
    return out
