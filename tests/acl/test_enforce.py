"""The rights of catalog writes and keyed-table reads (agent/acl/enforce.py), the table both the HTTP layer and
the servers' RPC check use: pure, with a small in-memory view of the state."""

from __future__ import annotations

from typing import Any

import pytest

from proconsul.agent.acl import enforce
from proconsul.agent.acl.authorizer import Authorizer
from proconsul.agent.acl.errors import PermissionDenied
from proconsul.agent.acl.rules import parse_rules
from proconsul.catalog import commands as c

Need = enforce.Need


class View:
    def __init__(self) -> None:
        self.sessions = {"s1": "n1"}
        self.services = {("n1", "web-1"): "web"}
        self.rows: dict[tuple[str, str], dict[str, Any]] = {
            ("intentions", "i1"): {"ID": "i1", "DestinationName": "db"},
            ("prepared_queries", "q1"): {"ID": "q1", "Name": "old"}}

    def session_node(self, sid: str) -> str | None:
        return self.sessions.get(sid)

    def service_name(self, node: str, service_id: str) -> str | None:
        return self.services.get((node, service_id))

    def row(self, table: str, key: str) -> dict[str, Any] | None:
        return self.rows.get((table, key))


def authz(rules: str, default_allow: bool = False) -> Authorizer:
    return Authorizer(parse_rules(rules), default_allow=default_allow, accessor="acc")


@pytest.mark.parametrize("cmd, needs", [
    (c.Register(node={"Node": "n1"}, service={"ID": "web-1", "Service": "web"}),
     [Need("node", "n1"), Need("service", "web")]),
    # anti-entropy's service sync leaves the node alone; a check of a known service rides on the service
    (c.Register(node={"Node": "n1"}, checks=[{"CheckID": "c", "ServiceID": "web-1"}], skip_node_update=True),
     [Need("service", "web")]),
    (c.Register(node={"Node": "n1"}, checks=[{"CheckID": "c", "ServiceID": "nope"}], skip_node_update=True),
     [Need("node", "n1")]),
    (c.Deregister(node="n1", service_id="web-1"), [Need("service", "web")]),
    (c.Deregister(node="n1", service_id="gone"), []),
    (c.Deregister(node="n1", check_id="c"), [Need("node", "n1")]),
    (c.KVOp(verb="set", key="a/b"), [Need("key", "a/b")]),
    (c.KVOp(verb="delete-tree", key="a/"), [Need("key-tree", "a/")]),
    (c.SessionCreate(session={"Node": "n2"}), [Need("session", "n2")]),
    (c.SessionDestroy(id="s1"), [Need("session", "n1")]),
    (c.Txn(ops=[{"Kind": "KV", "Verb": "get", "Key": "r"}, {"Kind": "KV", "Verb": "get-tree", "Key": "t"},
                {"Kind": "Session", "Verb": "delete", "Session": {"ID": "s1"}},
                {"Kind": "Check", "Verb": "set", "Check": {"ServiceName": "web"}}]),
     [Need("key", "r", "read"), Need("session", "n1"), Need("service", "web")]),
    (c.TableSet(table="intentions", key="i1", row={"DestinationName": "api"}),
     [Need("intention", "api"), Need("intention", "db")]),
    (c.TableDelete(table="intentions", key="i1"), [Need("intention", "db")]),
    (c.TableSet(table="config_entries", key="service-defaults/web", row={"Kind": "service-defaults", "Name": "web"}),
     [Need("config", "service-defaults/web")]),
    (c.TableSet(table="prepared_queries", key="q1", row={"Name": "new"}), [Need("query", "new"), Need("query", "old")]),
    (c.TableSet(table="coordinates", key="n1", row={"Node": "n1"}), [Need("node", "n1")]),
    (c.TableSet(table="ca_config", key="config", row={}), [Need("operator")]),
    (c.TableSet(table="acl_tokens", key="a", row={}), [Need("acl")]),
    (c.TableSet(table="meta", key="acl-bootstrap", row={}), [Need("acl")]),
    (c.Restore(state=b""), [Need("acl")]),
    (c.TombstoneReap(index=1), [Need("acl")]),
    (c.Batch(commands=[c.KVOp(verb="set", key="x"), c.SessionDestroy(id="s1")]),
     [Need("key", "x"), Need("session", "n1")]),
])
def test_command_needs(cmd: c.Command, needs: list[Need]) -> None:
    assert enforce.command_needs(cmd, View()) == needs


def test_require_names_the_first_missing_right_in_consuls_words() -> None:
    a = authz('key_prefix "app/" { policy = "write" }\nservice "web" { policy = "read" }')
    enforce.require(a, [Need("key", "app/x"), Need("key-tree", "app/")])
    with pytest.raises(PermissionDenied, match="lacks permission 'key:write' on \"other\""):
        enforce.require(a, [Need("key", "app/x"), Need("key", "other")])
    with pytest.raises(PermissionDenied, match="lacks permission 'service:write' on \"web\""):
        enforce.require(a, [Need("config", "service-defaults/web")])
    with pytest.raises(PermissionDenied, match="lacks permission 'mesh:write'"):
        enforce.require(a, [Need("config", "mesh/mesh")])
    with pytest.raises(PermissionDenied, match="lacks permission 'operator:read'"):
        enforce.require(a, [Need("operator", access="read")])


def test_table_reads() -> None:
    assert enforce.table_read("acl_tokens", None) == Need("acl", access="read")
    assert enforce.table_read("ca_roots", None) is None  # public
    assert enforce.table_read("ca_config", "config") == Need("operator", access="read")
    assert enforce.table_read("meta", "autopilot") == Need("operator", access="read")
    assert enforce.table_read("no-such-table", None) == Need("acl", access="read")
    a = authz('service "db" { policy = "read" }')
    rows = [{"DestinationName": "db"}, {"DestinationName": "api"}]
    listing = enforce.table_read("intentions", None)
    assert callable(listing) and listing(a, rows) == ([rows[0]], True)
    one = enforce.table_read("intentions", "i1")
    assert callable(one) and one(a, rows[1]) == (None, True) and one(a, rows[0]) == (rows[0], False)
