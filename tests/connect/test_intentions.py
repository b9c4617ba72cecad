"""Intentions: Consul's precedence, the most specific match decides (property test), L7, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proconsul.connect import intentions as ix
from proconsul.connect.errors import InvalidIntention

TD = "abc.mesh"


def I(src: str, dst: str, action: str = "allow", **kw) -> dict:  # noqa: E743, N802 - a short builder
    return ix.validate({"SourceName": src, "DestinationName": dst, "Action": action if "Permissions" not in kw else "",
                        **kw})


def test_precedence_table() -> None:
    assert [ix.precedence(s, d) for s, d in [("web", "db"), ("*", "db"), ("web", "*"), ("*", "*")]] == [9, 8, 6, 5]


def test_most_specific_decides_and_default_applies() -> None:
    rules = [I("*", "*", "deny"), I("*", "db", "allow"), I("web", "db", "deny")]
    assert ix.decide(rules, "web", "db", True)[0] is False
    assert ix.decide(rules, "api", "db", False)[0] is True
    assert ix.decide(rules, "api", "cache", True)[0] is False
    assert ix.decide([], "api", "cache", True) == (True, "Default behavior: no intention matched, allow by default")
    assert ix.decide([], "api", "cache", False)[0] is False


names = st.sampled_from(["web", "db", "api", "*"])
actions = st.sampled_from(["allow", "deny"])


@given(st.lists(st.tuples(names, names, actions), max_size=12, unique_by=lambda t: (t[0], t[1])),
       st.sampled_from(["web", "db", "api"]), st.sampled_from(["web", "db", "api"]), st.booleans())
def test_decision_is_the_most_specific_match(rules: list, src: str, dst: str, default: bool) -> None:
    built = [I(s, d, a) for s, d, a in rules]
    matching = [r for r in built if r["SourceName"] in (src, "*") and r["DestinationName"] in (dst, "*")]
    oracle = max(matching, key=lambda r: (r["DestinationName"] != "*", r["SourceName"] != "*"), default=None)
    expected = default if oracle is None else oracle["Action"] == "allow"
    assert ix.decide(built, src, dst, default)[0] == expected


def test_l7_permissions() -> None:
    perms = [{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
             {"Action": "allow", "HTTP": {"PathRegex": "/api/v[0-9]+/.*", "Methods": ["GET"],
                                          "Header": [{"Name": "x-env", "Exact": "prod"}]}},
             {"Action": "allow", "HTTP": {"PathExact": "/health", "Header": [{"Name": "x-debug", "Present": True,
                                                                                "Invert": True}]}}]
    rules = [I("web", "db", Permissions=perms)]
    req = ix.Request
    assert not ix.decide(rules, "web", "db", True, req("/admin/x", "GET", {}))[0]
    assert ix.decide(rules, "web", "db", False, req("/api/v2/items", "GET", {"X-Env": "prod"}))[0]
    assert not ix.decide(rules, "web", "db", True, req("/api/v2/items", "POST", {"X-Env": "prod"}))[0]
    assert not ix.decide(rules, "web", "db", True, req("/api/v2/items", "GET", {"X-Env": "dev"}))[0]
    assert ix.decide(rules, "web", "db", False, req("/health", "GET", {}))[0]
    assert not ix.decide(rules, "web", "db", True, req("/health", "GET", {"x-debug": "1"}))[0]
    assert not ix.decide(rules, "web", "db", True, req("/other", "GET", {}))[0], "no permission matched: deny"
    assert not ix.decide(rules, "web", "db", True)[0], "L7 intention at L4 cannot allow"


@pytest.mark.parametrize("bad,message", [
    ({"SourceName": "web", "DestinationName": "db"}, "Action is required"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "maybe"}, "allow"),
    ({"SourceName": "", "DestinationName": "db", "Action": "allow"}, "SourceName"),
    ({"SourceName": "we*", "DestinationName": "db", "Action": "allow"}, "wildcard"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow",
      "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/"}}]}, "not both"),
    ({"SourceName": "web", "DestinationName": "db", "Permissions": [{"Action": "allow", "HTTP": {"PathRegex": "("}}]},
     "regular expression"),
    ({"SourceName": "web", "DestinationName": "db", "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["FETCH"]}}]},
     "Methods"),
    ({"SourceName": "web", "DestinationName": "db",
      "Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Name": "a", "Exact": "x", "Prefix": "y"}]}}]},
     "exactly one"),
])
def test_validation_names_the_field(bad: dict, message: str) -> None:
    with pytest.raises(InvalidIntention, match=message):
        ix.validate(bad)


def test_authorize_checks_the_trust_domain() -> None:
    rules = [I("web", "db", "allow")]
    assert ix.authorize(rules, "db", f"spiffe://{TD}/ns/default/dc/dc1/svc/web", TD, False)[0]
    ok, reason = ix.authorize(rules, "db", "spiffe://evil.mesh/ns/default/dc/dc1/svc/web", TD, True)
    assert not ok and "external trust domain" in reason
    ok, reason = ix.authorize(rules, "db", "not-a-uri", TD, True)
    assert not ok and "not a service identity" in reason


def test_config_entry_round_trip_and_match() -> None:
    rules = [I("web", "db", "allow", ID="1", Description="d"), I("*", "db", "deny", ID="2")]
    entry = ix.to_config_entry("db", rules)
    assert [s["Name"] for s in entry["Sources"]] == ["web", "*"]
    back = ix.from_config_entry(dict(entry, CreateIndex=1, ModifyIndex=1))
    assert [(r["SourceName"], r["Action"], r["ID"]) for r in back] == [("web", "allow", "1"), ("*", "deny", "2")]
    matched = ix.match(back + [I("api", "*", "allow"), I("x", "cache", "allow")], "destination", "db")
    assert [r["SourceName"] for r in matched] == ["web", "*", "api"], "wildcard destinations apply too, by precedence"
    with pytest.raises(InvalidIntention):
        ix.validate_config_entry({"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "a"}, {"Name": "a"}]})
