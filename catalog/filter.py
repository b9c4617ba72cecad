"""Consul's `?filter=` expressions (go-bexpr), parsed once and evaluated against JSON-shaped rows.

Grammar (Consul's):
    expr    := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | "(" expr ")" | match
    match   := selector ("==" | "!=") value
             | selector "is" ["not"] "empty"
             | value ["not"] "in" selector
             | selector ["not"] "contains" value
             | selector ["not"] "matches" value
    selector:= name ("." name | "[" string "]")*
    value   := "double-quoted" | `backquoted` | number | true | false | bare-word

Selectors use the response's field names (`Service.Tags`, `Node.Meta.env`, `Checks.Status`).
A selector through a list applies to every element ("any"), as Consul's does for `Checks.Status`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[Any], bool]


class FilterError(ValueError):
    """A filter expression that does not parse; the message says where and what was expected."""


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<op>==|!=|\(|\)|\[|\]|\.)
    | (?P<word>[A-Za-z0-9_\-/:@*+]+)
    )""", re.VERBOSE)

KEYWORDS = {"and", "or", "not", "in", "contains", "matches", "is", "empty"}


@dataclass(slots=True)
class _Tok:
    kind: str  # str, op, word
    text: str
    pos: int


def _tokenize(src: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"filter: unexpected character {src[pos:].lstrip()[:1]!r} at position {pos}")
        if m.group("str") is not None:
            text = m.group("str")[1:-1].encode().decode("unicode_escape")
            out.append(_Tok("str", text, m.start("str")))
        elif m.group("raw") is not None:
            out.append(_Tok("str", m.group("raw")[1:-1], m.start("raw")))
        elif m.group("op") is not None:
            out.append(_Tok("op", m.group("op"), m.start("op")))
        else:
            out.append(_Tok("word", m.group("word"), m.start("word")))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def kw(self, word: str, offset: int = 0) -> bool:
        t = self.peek(offset)
        return t is not None and t.kind == "word" and t.text.lower() == word

    def take(self) -> _Tok:
        t = self.peek()
        if t is None:
            raise FilterError(f"filter: unexpected end of expression {self.src!r}")
        self.i += 1
        return t

    def expect_op(self, op: str) -> None:
        t = self.take()
        if t.kind != "op" or t.text != op:
            raise FilterError(f"filter: expected {op!r} at position {t.pos}, found {t.text!r}")

    def parse(self) -> Predicate:
        if not self.toks:
            raise FilterError("filter: empty expression")
        pred = self.expr()
        t = self.peek()
        if t is not None:
            raise FilterError(f"filter: unexpected {t.text!r} at position {t.pos}")
        return pred

    def expr(self) -> Predicate:
        parts = [self.and_()]
        while self.kw("or"):
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda row: any(p(row) for p in parts))

    def and_(self) -> Predicate:
        parts = [self.unary()]
        while self.kw("and"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda row: all(p(row) for p in parts))

    def unary(self) -> Predicate:
        if self.kw("not"):
            self.take()
            inner = self.unary()
            return lambda row: not inner(row)
        t = self.peek()
        if t is not None and t.kind == "op" and t.text == "(":
            self.take()
            inner = self.expr()
            self.expect_op(")")
            return inner
        return self.match()

    def selector(self) -> list[str]:
        t = self.take()
        if t.kind != "word" or t.text.lower() in KEYWORDS:
            raise FilterError(f"filter: expected a field name at position {t.pos}, found {t.text!r}")
        path = [t.text]
        while True:
            nxt = self.peek()
            if nxt is not None and nxt.kind == "op" and nxt.text == ".":
                self.take()
                name = self.take()
                if name.kind not in ("word", "str"):
                    raise FilterError(f"filter: expected a field name after '.' at position {name.pos}")
                path.append(name.text)
            elif nxt is not None and nxt.kind == "op" and nxt.text == "[":
                self.take()
                key = self.take()
                if key.kind != "str":
                    raise FilterError(f"filter: expected a quoted key inside [] at position {key.pos}")
                path.append(key.text)
                self.expect_op("]")
            else:
                return path

    def value(self) -> str:
        t = self.take()
        if t.kind == "str" or (t.kind == "word" and t.text.lower() not in KEYWORDS):
            return t.text
        raise FilterError(f"filter: expected a value at position {t.pos}, found {t.text!r}")

    def match(self) -> Predicate:
        # value [not] in selector
        first = self.peek()
        if first is not None and (first.kind == "str" or first.kind == "word") and (
                self.kw("in", 1) or (self.kw("not", 1) and self.kw("in", 2))):
            value = self.take().text
            negate = self.kw("not")
            if negate:
                self.take()
            self.take()  # in
            path = self.selector()
            return _negate(lambda row: _contains(_resolve(row, path), value), negate)
        path = self.selector()
        t = self.take()
        if t.kind == "op" and t.text in ("==", "!="):
            value = self.value()
            return _negate(lambda row: any(_equal(v, value) for v in _leaves(_resolve(row, path))),
                           t.text == "!=")
        negate = False
        word = t.text.lower() if t.kind == "word" else ""
        if word == "is":
            if self.kw("not"):
                self.take()
                negate = True
            if not self.kw("empty"):
                raise FilterError(f"filter: expected 'empty' after 'is' at position {t.pos}")
            self.take()
            return _negate(lambda row: _empty(_resolve(row, path)), negate)
        if word == "not":
            negate = True
            t = self.take()
            word = t.text.lower() if t.kind == "word" else ""
        if word == "contains":
            value = self.value()
            return _negate(lambda row: _contains(_resolve(row, path), value), negate)
        if word == "matches":
            pattern = self.value()
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise FilterError(f"filter: invalid regular expression {pattern!r}: {e}") from None
            return _negate(lambda row: any(isinstance(v, str) and rx.search(v) is not None
                                           for v in _leaves(_resolve(row, path))), negate)
        raise FilterError(f"filter: expected ==, !=, is, contains, matches or in at position {t.pos}, "
                          f"found {t.text!r}")


_MISSING = object()


def _resolve(obj: Any, path: list[str]) -> Any:
    """Walk a selector; through lists, collect every element's value."""
    cur: Any = obj
    for i, part in enumerate(path):
        if isinstance(cur, list):
            return [_resolve(item, path[i:]) for item in cur]
        if isinstance(cur, dict):
            if part in cur:
                cur = cur[part]
            else:
                match = next((k for k in cur if isinstance(k, str) and k.lower() == part.lower()), None)
                if match is None:
                    return _MISSING
                cur = cur[match]
        else:
            return _MISSING
    return cur


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        out: list[Any] = []
        for v in value:
            out.extend(_leaves(v))
        return out
    return [] if value is _MISSING else [value]


def _equal(actual: Any, text: str) -> bool:
    if isinstance(actual, bool):
        return text.lower() == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(text) == float(actual)
        except ValueError:
            return False
    return isinstance(actual, str) and actual == text


def _contains(container: Any, value: str) -> bool:
    if isinstance(container, dict):
        return value in container
    if isinstance(container, list):
        return any(_equal(v, value) or (isinstance(v, list) and _contains(v, value)) for v in container)
    if isinstance(container, str):
        return value in container
    return False


def _empty(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, list | dict | str) and len(value) == 0)


def _negate(pred: Predicate, negate: bool) -> Predicate:
    return (lambda row: not pred(row)) if negate else pred


def compile_filter(expression: str) -> Predicate:
    """Parse a filter expression into a predicate over one response row."""
    return _Parser(expression).parse()


def apply_filter(expression: str, data: Any) -> Any:
    """Filter a list of rows, or the values of a map of rows (as /v1/agent/services is)."""
    pred = compile_filter(expression)
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if pred(v)}
    if isinstance(data, list):
        return [row for row in data if pred(row)]
    return data
