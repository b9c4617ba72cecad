"""The state store through its one entry point, apply(index, command): Consul's semantics."""

from __future__ import annotations

import pytest

from proconsul.catalog import commands as c
from proconsul.catalog.errors import InvalidRequest
from proconsul.catalog.store import StateStore


class Log:
    """Feeds commands to a store at increasing indexes, as Raft would."""

    def __init__(self) -> None:
        self.store = StateStore()
        self.index = 0
        self.changes: list = []
        self.store.subscribe(self.changes.append)

    def __call__(self, cmd: c.Command):
        self.index += 1
        return self.store.apply(self.index, cmd)


def node(name: str = "n1", addr: str = "10.0.0.1", **kw) -> dict:
    return {"Node": name, "Address": addr, **kw}


@pytest.fixture
def log() -> Log:
    return Log()


def test_register_node_service_check(log: Log) -> None:
    log(c.Register(node=node(), service={"Service": "web", "Port": 80, "Tags": ["v1"]},
                   checks=[{"CheckID": "web-ok", "ServiceID": "web", "Status": "passing"}]))
    s = log.store
    idx, pairs = s.service_instances("web")
    assert idx == 1 and [(n["Node"], v["ID"], v["Port"]) for n, v in pairs] == [("n1", "web", 80)]
    _, checks = s.service_checks("web")
    assert checks[0]["ServiceName"] == "web" and checks[0]["ServiceTags"] == ["v1"]
    assert log.changes[-1].tables == {"nodes", "services", "checks"}


def test_unchanged_reregister_keeps_modify_index(log: Log) -> None:
    cmd = c.Register(node=node(), service={"Service": "web", "Port": 80})
    log(cmd)
    log(cmd)
    _, pairs = log.store.service_instances("web")
    assert pairs[0][0]["ModifyIndex"] == 1 and pairs[0][1]["ModifyIndex"] == 1
    assert log.store.table_index("services") == 1


def test_deregister_service_takes_its_checks(log: Log) -> None:
    log(c.Register(node=node(), service={"Service": "web"},
                   checks=[{"CheckID": "a", "ServiceID": "web", "Status": "passing"},
                           {"CheckID": "node-check", "Status": "passing"}]))
    log(c.Deregister(node="n1", service_id="web"))
    _, checks = log.store.node_checks("n1")
    assert [x["CheckID"] for x in checks] == ["node-check"]
    assert log.store.service_instances("web")[1] == []


def test_deregister_node_removes_everything_and_sessions(log: Log) -> None:
    log(c.Register(node=node(), service={"Service": "web"}, checks=[{"CheckID": "serfHealth", "Status": "passing"}]))
    log(c.SessionCreate(session={"ID": "s1", "Node": "n1"}))
    log(c.KVOp(verb="lock", key="lock", value=b"x", session="s1"))
    log(c.Deregister(node="n1"))
    assert log.store.get_node("n1")[1] is None
    assert log.store.session_get("s1")[1] is None
    assert log.store.kv_get("lock")[1]["Session"] == ""


def test_check_for_missing_service_refused_without_change(log: Log) -> None:
    with pytest.raises(InvalidRequest, match="Missing service registration"):
        log(c.Register(node=node(), checks=[{"CheckID": "x", "ServiceID": "nope", "Status": "passing"}]))
    assert log.store.get_node("n1")[1] is None, "a refused command must leave the state as it was"


def test_node_id_conflict(log: Log) -> None:
    log(c.Register(node=node("a", ID="11111111-1111-1111-1111-111111111111")))
    with pytest.raises(InvalidRequest, match="already used"):
        log(c.Register(node=node("b", ID="11111111-1111-1111-1111-111111111111")))


def test_per_table_indexes_and_service_index(log: Log) -> None:
    log(c.Register(node=node(), service={"Service": "web"}))
    log(c.KVOp(verb="set", key="k", value=b"v"))
    log(c.Register(node=node("n2", "10.0.0.2"), service={"Service": "db"}))
    s = log.store
    assert s.table_index("kvs") == 2 and s.table_index("services") == 3
    assert s.service_index("web") == 1 and s.service_index("db") == 3
    log(c.Register(node=node(addr="10.0.0.9")))  # a node change touches its services' index
    assert s.service_index("web") == 4


def test_kv_cas_flags_and_deletes(log: Log) -> None:
    assert log(c.KVOp(verb="cas", key="a", value=b"1", index=0)) is True
    assert log(c.KVOp(verb="cas", key="a", value=b"2", index=0)) is False  # cas=0: create only
    row = log.store.kv_get("a")[1]
    assert log(c.KVOp(verb="cas", key="a", value=b"3", flags=42, index=row["ModifyIndex"])) is True
    row = log.store.kv_get("a")[1]
    assert row["Value"] == b"3" and row["Flags"] == 42 and row["CreateIndex"] == 1
    assert log(c.KVOp(verb="delete-cas", key="a", index=1)) is False
    assert log(c.KVOp(verb="delete-cas", key="a", index=row["ModifyIndex"])) is True
    assert log.store.kv_get("a")[1] is None


def test_tombstones_raise_prefix_index(log: Log) -> None:
    log(c.KVOp(verb="set", key="p/a", value=b"1"))
    log(c.KVOp(verb="set", key="p/b", value=b"1"))
    log(c.KVOp(verb="set", key="other", value=b"1"))
    before, _ = log.store.kv_list("p/")
    log(c.KVOp(verb="delete", key="p/b"))
    after, rows = log.store.kv_list("p/")
    assert after > before and [r["Key"] for r in rows] == ["p/a"]
    log(c.KVOp(verb="delete-tree", key="p/"))
    assert log.store.kv_list("p/")[1] == [] and log.store.kv_get("other")[1] is not None
    assert log(c.TombstoneReap(index=log.index)) == 2


def test_keys_with_separator(log: Log) -> None:
    for k in ("a/b/c", "a/b/d", "a/e", "f"):
        log(c.KVOp(verb="set", key=k, value=b""))
    assert log.store.kv_keys("a/", "/")[1] == ["a/b/", "a/e"]
    assert log.store.kv_keys("", "/")[1] == ["a/", "f"]
    assert log.store.kv_keys("a/")[1] == ["a/b/c", "a/b/d", "a/e"]


def test_locks_lock_index_and_lock_delay(log: Log) -> None:
    log(c.Register(node=node(), checks=[{"CheckID": "serfHealth", "Status": "passing"}]))
    log(c.SessionCreate(session={"ID": "s1", "Node": "n1", "LockDelay": 5_000_000_000}))
    log(c.SessionCreate(session={"ID": "s2", "Node": "n1"}))
    assert log(c.KVOp(verb="lock", key="l", value=b"a", session="s1", now=100.0)) is True
    assert log(c.KVOp(verb="lock", key="l", value=b"b", session="s2", now=100.0)) is False
    assert log(c.KVOp(verb="lock", key="l", value=b"c", session="s1", now=100.0)) is True  # re-acquire
    assert log.store.kv_get("l")[1]["LockIndex"] == 1
    assert log(c.KVOp(verb="unlock", key="l", value=b"d", session="s2")) is False
    log(c.SessionDestroy(id="s1", now=101.0))  # invalidation starts the lock delay
    assert log.store.kv_get("l")[1]["Session"] == ""
    assert log(c.KVOp(verb="lock", key="l", value=b"e", session="s2", now=103.0)) is False
    assert log(c.KVOp(verb="lock", key="l", value=b"f", session="s2", now=106.5)) is True
    assert log.store.kv_get("l")[1]["LockIndex"] == 2
    with pytest.raises(InvalidRequest, match="invalid session"):
        log(c.KVOp(verb="lock", key="m", value=b"", session="nope"))


def test_session_behaviour_delete_and_check_invalidation(log: Log) -> None:
    log(c.Register(node=node(), checks=[{"CheckID": "serfHealth", "Status": "passing"},
                                        {"CheckID": "extra", "Status": "passing"}]))
    log(c.SessionCreate(session={"ID": "d", "Node": "n1", "Behavior": "delete", "Checks": ["serfHealth", "extra"]}))
    log(c.KVOp(verb="lock", key="gone", value=b"x", session="d"))
    log(c.Register(node=node(), skip_node_update=True, checks=[{"CheckID": "extra", "Status": "critical"}]))
    assert log.store.session_get("d")[1] is None, "a critical check invalidates its sessions"
    assert log.store.kv_get("gone")[1] is None, "Behavior=delete deletes held keys"
    with pytest.raises(InvalidRequest, match="critical"):
        log(c.SessionCreate(session={"ID": "e", "Node": "n1", "Checks": ["extra"]}))
    with pytest.raises(InvalidRequest, match="Missing node"):
        log(c.SessionCreate(session={"ID": "f", "Node": "nope"}))


def test_txn_is_all_or_nothing(log: Log) -> None:
    log(c.KVOp(verb="set", key="x", value=b"1"))
    result = log(c.Txn(ops=[{"Verb": "set", "Key": "y", "Value": b"2"},
                            {"Verb": "cas", "Key": "x", "Value": b"3", "Index": 999}]))
    assert result["Results"] is None and result["Errors"][0]["OpIndex"] == 1
    assert log.store.kv_get("y")[1] is None and log.store.kv_get("x")[1]["Value"] == b"1"
    ok = log(c.Txn(ops=[{"Verb": "set", "Key": "y", "Value": b"2"}, {"Verb": "get", "Key": "x"}]))
    assert ok["Errors"] is None and [r["KV"]["Key"] for r in ok["Results"]] == ["y", "x"]


def test_index_must_rise() -> None:
    s = StateStore()
    s.apply(5, c.KVOp(verb="set", key="a", value=b""))
    with pytest.raises(InvalidRequest):
        s.apply(5, c.KVOp(verb="set", key="b", value=b""))


def test_bad_bytes_are_errors_not_crashes() -> None:
    s = StateStore()
    for junk in (b"", b"\x00", b"\x92\xa3foo\x80", b"\xc1", c.encode(c.KVOp(verb="set", key="k"))[:-3]):
        assert isinstance(s.apply_bytes(s.last_index + 1, junk), Exception)


def test_txn_catalog_ops_apply_whole_and_see_earlier_ops(log: Log) -> None:
    ops = [{"Kind": "Node", "Verb": "set", "Node": node("sync", "127.0.0.1", Meta={"external-source": "kubernetes"})},
           {"Kind": "Service", "Verb": "set", "Node": "sync", "Service": {"ID": "web-1", "Service": "web", "Port": 80}},
           {"Kind": "Check", "Verb": "set", "Node": "sync", "Check": {"Node": "sync", "CheckID": "web-1/ready",
                                                                        "ServiceID": "web-1", "Status": "passing"}},
           {"Kind": "Service", "Verb": "get", "Node": "sync", "Service": {"ID": "web-1"}}]
    before = log.index
    out = log(c.Txn(ops=ops))
    assert out["Errors"] is None and log.index == before + 1  # one Raft entry for all of it
    assert [next(iter(r)) for r in out["Results"]] == ["Node", "Service", "Check", "Service"]
    assert out["Results"][1]["Service"]["ModifyIndex"] == log.index
    _, checks = log.store.node_checks("sync")
    assert [(ch["CheckID"], ch["ServiceName"], ch["Status"]) for ch in checks] == [("web-1/ready", "web", "passing")]
    # A failing op anywhere leaves everything as it was, KV included.
    bad = [{"Verb": "set", "Key": "k", "Value": b"v"},
           {"Kind": "Service", "Verb": "delete", "Node": "sync", "Service": {"ID": "web-1"}},
           {"Kind": "Check", "Verb": "set", "Node": "sync", "Check": {"Node": "sync", "CheckID": "c2",
                                                                        "ServiceID": "web-1"}}]
    out = log(c.Txn(ops=bad))
    assert out["Results"] is None and [e["OpIndex"] for e in out["Errors"]] == [2]
    assert 'no service "web-1"' in out["Errors"][0]["What"]
    assert log.store.kv_get("k")[1] is None and len(log.store.service_instances("web")[1]) == 1
    stale = log(c.Txn(ops=[{"Kind": "Service", "Verb": "cas", "Node": "sync", "Index": 999,
                             "Service": {"ID": "web-1", "Service": "web", "Port": 81}}]))
    assert "index is stale" in stale["Errors"][0]["What"]
    gone = log(c.Txn(ops=[{"Kind": "Service", "Verb": "delete-cas", "Node": "sync", "Service": {"ID": "web-1"},
                           "Index": log.store.service_instances("web")[1][0][1]["ModifyIndex"]}]))
    assert gone == {"Results": [], "Errors": None}
    assert log.store.service_instances("web")[1] == [] and log.store.node_checks("sync")[1] == []


def test_session_checks_turn_critical_when_their_session_ends(log: Log) -> None:
    log(c.Register(node=node("sync", "127.0.0.1")))
    log(c.SessionCreate(session={"ID": "s1", "Node": "sync", "Checks": [], "TTL": "15s"}))
    log(c.Register(node=node("sync", "127.0.0.1"), skip_node_update=True, service={"ID": "w", "Service": "w"},
                   checks=[{"CheckID": "alive", "Status": "passing", "Type": "session",
                            "Definition": {"SessionID": "s1"}},
                           {"CheckID": "other", "Status": "passing", "Type": "session",
                            "Definition": {"SessionID": "s2"}}]))
    log.changes.clear()
    log(c.SessionDestroy(id="s1"))
    status = {ch["CheckID"]: ch["Status"] for ch in log.store.node_checks("sync")[1]}
    assert status == {"alive": "critical", "other": "passing"}
    assert "checks" in log.changes[-1].tables and "w" in log.changes[-1].services
