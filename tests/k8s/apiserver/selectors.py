"""Label and field selectors, as the API server parses them (`a=b,c!=d,e in (f,g),!h`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Matcher = Callable[[dict[str, str]], bool]


class SelectorError(ValueError):
    """A selector that does not parse; answered with 400 BadRequest."""


_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|=|!=)\s*([^,]*?))?\s*$")


def _split(expr: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_labels(expr: str) -> Matcher:
    """A function telling whether a label map matches the selector `expr` (empty matches everything)."""
    tests: list[Matcher] = []
    for part in _split(expr or ""):
        m = _SET_RE.match(part)
        if not m:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        neg, key, setop, values, op, value = m.groups()
        if neg and (setop or op):
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        if neg:
            tests.append(lambda labels, k=key: k not in labels)
        elif setop:
            vals = {v.strip() for v in values.split(",") if v.strip()}
            if setop == "in":
                tests.append(lambda labels, k=key, vs=vals: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=vals: labels.get(k) not in vs)
        elif op in ("=", "=="):
            tests.append(lambda labels, k=key, v=value.strip(): labels.get(k) == v)
        elif op == "!=":
            tests.append(lambda labels, k=key, v=value.strip(): labels.get(k) != v)
        else:
            tests.append(lambda labels, k=key: k in labels)
    return lambda labels: all(t(labels) for t in tests)


def _dig(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(p)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_fields(expr: str, allowed: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    """A function telling whether an object matches the field selector; only `allowed` fields may be used."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for part in _split(expr or ""):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid selector: {part.strip()!r}; can't understand {part.strip()!r}")
        field, op, value = m.groups()
        if field not in allowed:
            raise SelectorError(f'"{field}" is not a known field selector: only "{", ".join(sorted(allowed))}"')
        if op == "!=":
            tests.append(lambda o, f=field, v=value: _dig(o, f) != v)
        else:
            tests.append(lambda o, f=field, v=value: _dig(o, f) == v)
    return lambda obj: all(t(obj) for t in tests)
