"""Consul's filter expressions: parser and evaluator (pure), plus a property test of and/or/not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proconsul.catalog.filter import FilterError, apply_filter, compile_filter

ROWS = [
    {"Service": {"Service": "web", "Tags": ["v1", "prod"], "Meta": {"env": "prod"}, "Port": 80,
                 "EnableTagOverride": False},
     "Checks": [{"Status": "passing"}, {"Status": "critical"}]},
    {"Service": {"Service": "db", "Tags": [], "Meta": {}, "Port": 5432, "EnableTagOverride": True},
     "Checks": [{"Status": "passing"}]},
]


def names(expr: str) -> list[str]:
    return [r["Service"]["Service"] for r in apply_filter(expr, ROWS)]


@pytest.mark.parametrize("expr,expected", [
    ("Service.Service == web", ["web"]),
    ('Service.Service == "db"', ["db"]),
    ("Service.Service != web", ["db"]),
    ('"prod" in Service.Tags', ["web"]),
    ('"prod" not in Service.Tags', ["db"]),
    ("Service.Tags contains v1", ["web"]),
    ("Service.Tags not contains v1", ["db"]),
    ("Service.Tags is empty", ["db"]),
    ("Service.Tags is not empty", ["web"]),
    ("Service.Meta.env == prod", ["web"]),
    ('Service.Meta["env"] != prod', ["db"]),
    ("env in Service.Meta", ["web"]),
    ("Checks.Status == critical", ["web"]),
    ("not Checks.Status == critical", ["db"]),
    ("Service.Port == 5432", ["db"]),
    ("Service.EnableTagOverride == true", ["db"]),
    ('Service.Service matches "^w"', ["web"]),
    ('Service.Service not matches "^w"', ["db"]),
    ("Service.Port == 80 or Service.Port == 5432", ["web", "db"]),
    ("(Service.Port == 80) and v1 not in Service.Tags", []),
    ("Service.Missing is empty", ["web", "db"]),
    ("service.service == web", ["web"]),
])
def test_expressions(expr: str, expected: list[str]) -> None:
    assert names(expr) == expected


@pytest.mark.parametrize("bad", ["", "Service.Service ==", "== web", "Service.Service ~ web", "(a == b",
                                 'a matches "["', "a is full", "a == b c", "and == b"])
def test_bad_expressions_name_the_problem(bad: str) -> None:
    with pytest.raises(FilterError, match="filter"):
        compile_filter(bad)


def test_map_of_rows_is_filtered_by_value() -> None:
    services = {"a": {"Service": "web", "Tags": ["x"]}, "b": {"Service": "db", "Tags": []}}
    assert list(apply_filter("x in Tags", services)) == ["a"]


ATOMS = ["Service.Service == web", "Service.Port == 5432", '"prod" in Service.Tags', "Checks.Status == critical"]


@st.composite
def boolean_exprs(draw: st.DrawFn, depth: int = 3) -> tuple[str, object]:
    """An expression and an equivalent Python function built from the same atoms."""
    if depth == 0 or draw(st.booleans()):
        i = draw(st.integers(0, len(ATOMS) - 1))
        pred = compile_filter(ATOMS[i])
        return ATOMS[i], pred
    op = draw(st.sampled_from(["and", "or", "not"]))
    left, lf = draw(boolean_exprs(depth - 1))
    if op == "not":
        return f"not ({left})", (lambda row, lf=lf: not lf(row))
    right, rf = draw(boolean_exprs(depth - 1))
    if op == "and":
        return f"({left}) and ({right})", (lambda row, lf=lf, rf=rf: lf(row) and rf(row))
    return f"({left}) or ({right})", (lambda row, lf=lf, rf=rf: lf(row) or rf(row))


@given(boolean_exprs())
def test_combinators_agree_with_python(case: tuple[str, object]) -> None:
    expr, oracle = case
    pred = compile_filter(expr)
    for row in ROWS:
        assert pred(row) == oracle(row), expr
