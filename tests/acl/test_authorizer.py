"""The pure ACL core: Consul's rules language and its decisions (exact beats prefix, longest prefix wins,
deny wins when policies are merged, the default policy covers the rest)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proconsul.agent.acl.authorizer import Authorizer
from proconsul.agent.acl.builtin import GLOBAL_MANAGEMENT_RULES, service_identity_rules
from proconsul.agent.acl.errors import PermissionDenied, RulesError
from proconsul.agent.acl.rules import merge, parse_rules


def authz(*texts: str, default_allow: bool = False) -> Authorizer:
    return Authorizer(merge([parse_rules(t) for t in texts]), default_allow=default_allow, accessor="acc")


def test_hcl_and_json_forms_parse_to_the_same_rules():
    hcl = '''
key_prefix "foo/" { policy = "read" }
key "foo/secret" { policy = "deny" }
service "web" { policy = "write" intentions = "read" }
node_prefix "" { policy = "read" }
operator = "read"
'''
    js = '''{"key_prefix": {"foo/": {"policy": "read"}}, "key": {"foo/secret": {"policy": "deny"}},
    "service": {"web": {"policy": "write", "intentions": "read"}}, "node_prefix": {"": {"policy": "read"}},
    "operator": "read"}'''
    assert parse_rules(hcl) == parse_rules(js)


def test_exact_beats_prefix_and_longest_prefix_wins():
    a = authz('key_prefix "" { policy = "write" }', 'key_prefix "app/" { policy = "read" }',
              'key_prefix "app/open/" { policy = "write" }', 'key "app/open/locked" { policy = "deny" }')
    assert a.allowed("key", "other", "write")
    assert a.allowed("key", "app/x", "read") and not a.allowed("key", "app/x", "write")
    assert a.allowed("key", "app/open/x", "write")
    assert not a.allowed("key", "app/open/locked", "read")
    assert a.allowed("key", "app/open/locked2", "write")  # an exact rule covers only its own name


def test_deny_wins_when_two_policies_set_the_same_name():
    a = authz('service "web" { policy = "write" }', 'service "web" { policy = "deny" }')
    assert not a.allowed("service", "web", "read")
    b = authz('service "web" { policy = "read" }', 'service "web" { policy = "write" }')
    assert b.allowed("service", "web", "write")


def test_default_policy_covers_what_no_rule_does_but_an_explicit_read_denies_write():
    a = authz('service "web" { policy = "read" }', default_allow=True)
    assert a.allowed("service", "db", "write")
    assert not a.allowed("service", "web", "write")
    assert not a.singleton_allowed("acl", "read")  # the default never grants ACL management
    d = authz('service "web" { policy = "read" }')
    assert not d.allowed("service", "db", "read")


def test_list_grants_read_and_list_but_not_write():
    a = authz('key_prefix "l/" { policy = "list" }')
    assert a.allowed("key", "l/a", "list") and a.allowed("key", "l/a", "read")
    assert not a.allowed("key", "l/a", "write")


def test_intentions_default_to_read_with_a_readable_service():
    a = authz('service_prefix "" { policy = "read" }', 'service "api" { policy = "write" intentions = "write" }')
    assert a.intention_allowed("web", "read") and not a.intention_allowed("web", "write")
    assert a.intention_allowed("api", "write")
    assert not authz('service "x" { policy = "deny" }').intention_allowed("x", "read")


def test_mesh_falls_back_to_operator():
    assert authz('operator = "write"').singleton_allowed("mesh", "write")
    assert not authz('operator = "write"', 'mesh = "read"').singleton_allowed("mesh", "write")


def test_key_write_prefix_needs_write_on_everything_under_it():
    a = authz('key_prefix "a/" { policy = "write" }', 'key "a/b/keep" { policy = "read" }')
    assert a.key_write_prefix("a/c/")
    assert not a.key_write_prefix("a/")
    assert not a.key_write_prefix("a/b/")


def test_global_management_grants_everything():
    a = authz(GLOBAL_MANAGEMENT_RULES)
    for kind in ("key", "service", "node", "session", "agent", "event", "query"):
        assert a.allowed(kind, "anything", "write")
    for kind in ("operator", "acl", "keyring", "mesh", "peering"):
        assert a.singleton_allowed(kind, "write")
    assert a.intention_allowed("x", "write")


def test_service_identity():
    a = Authorizer(service_identity_rules("web"), default_allow=False)
    assert a.allowed("service", "web", "write") and a.allowed("service", "web-sidecar-proxy", "write")
    assert a.allowed("service", "db", "read") and not a.allowed("service", "db", "write")
    assert a.allowed("node", "n1", "read") and not a.allowed("key", "k", "read")


def test_denial_message_is_consuls():
    with pytest.raises(PermissionDenied) as e:
        authz('key_prefix "" { policy = "read" }').require("key", "foo", "write")
    assert str(e.value) == "Permission denied: token with AccessorID 'acc' lacks permission 'key:write' on \"foo\""


@pytest.mark.parametrize("text", ['key_prefix "" { policy = "admin" }', 'bogus "x" { policy = "read" }',
                                  'operator = "list"', 'node "n" { policy = "read" intentions = "read" }',
                                  '{"key": ', 'key_prefix "" {'])
def test_bad_rules_are_refused_with_a_message(text):
    with pytest.raises(RulesError):
        parse_rules(text)


names = st.text(alphabet="ab/", max_size=6)
levels = st.sampled_from(["read", "write", "deny", "list"])


@given(st.lists(st.tuples(st.booleans(), names, levels), max_size=6), names, st.booleans())
def test_decision_matches_a_reference_model(rules, name, default_allow):
    """exact rule → its level; else the longest prefix rule; merged levels: deny > write > list > read."""
    rank = {"deny": 4, "write": 3, "list": 2, "read": 1}
    text = "\n".join(f'{"key_prefix" if p else "key"} "{n}" {{ policy = "{lv}" }}' for p, n, lv in rules)
    a = Authorizer(parse_rules(text), default_allow=default_allow)

    def level_of(entries):
        return max((lv for lv in entries), key=lambda lv: rank[lv]) if entries else None

    exact = level_of([lv for p, n, lv in rules if not p and n == name])
    covering = [n for p, n, _ in rules if p and name.startswith(n)]
    level = exact
    if level is None and covering:
        longest = max(covering, key=len)
        level = level_of([lv for p, n, lv in rules if p and n == longest])
    for access in ("read", "list", "write"):
        want = default_allow if level is None else access in {
            "write": ("read", "list", "write"), "list": ("read", "list"), "read": ("read",), "deny": ()}[level]
        assert a.allowed("key", name, access) == want
