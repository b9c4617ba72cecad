"""/v1/txn as Consul documents it (api-docs/txn) and as its state store answers: every operation type, the 409
shape of a rolled-back transaction, and Consul's error texts — through py-consul's `txn.put`."""

from __future__ import annotations

import base64

import consul
import pytest
from support import AgentProcess


@pytest.fixture
def c(shared_dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=shared_dev_agent.http_port)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def rolled_back(agent: AgentProcess, ops: list[dict]) -> list[dict]:
    """The Errors of a transaction Consul rolls back: status 409, Results null."""
    status, out = agent.put("/v1/txn", ops)
    assert status == 409, (status, out)
    assert out["Results"] is None and set(out) == {"Results", "Errors"}
    return out["Errors"]


def test_kv_verbs_and_results(c: consul.Consul) -> None:
    out = c.txn.put([{"KV": {"Verb": "set", "Key": "txv/a", "Value": b64("1"), "Flags": 7}},
                     {"KV": {"Verb": "get", "Key": "txv/a"}},
                     {"KV": {"Verb": "get-or-empty", "Key": "txv/none"}},
                     {"KV": {"Verb": "check-not-exists", "Key": "txv/none"}}])
    assert out["Errors"] is None
    written, read, empty = out["Results"]  # check-not-exists adds no result
    assert written["KV"]["Value"] is None and written["KV"]["Flags"] == 7  # writes come back without values
    assert base64.b64decode(read["KV"]["Value"]) == b"1"
    assert empty["KV"]["Key"] == "txv/none" and empty["KV"]["Value"] is None
    index = read["KV"]["ModifyIndex"]
    out = c.txn.put([{"KV": {"Verb": "check-index", "Key": "txv/a", "Index": index}},
                     {"KV": {"Verb": "cas", "Key": "txv/a", "Index": index, "Value": b64("2")}},
                     {"KV": {"Verb": "get-tree", "Key": "txv/"}}])
    assert [r["KV"]["Key"] for r in out["Results"]] == ["txv/a", "txv/a", "txv/a"]
    assert c.kv.get("txv/a")[1]["Value"] == b"2"


def test_rolled_back_transactions_name_each_failing_op_as_consul_does(c: consul.Consul,
                                                                       shared_dev_agent: AgentProcess) -> None:
    c.kv.put("tx/held", "x")
    index = c.kv.get("tx/held")[1]["ModifyIndex"]
    errors = rolled_back(shared_dev_agent, [
        {"KV": {"Verb": "set", "Key": "tx/never", "Value": b64("no")}},
        {"KV": {"Verb": "get", "Key": "tx/missing"}},
        {"KV": {"Verb": "cas", "Key": "tx/held", "Index": index + 1000, "Value": b64("y")}},
        {"KV": {"Verb": "delete-cas", "Key": "tx/held", "Index": index + 1000}},
        {"KV": {"Verb": "check-index", "Key": "tx/held", "Index": 1}},
        {"KV": {"Verb": "check-session", "Key": "tx/held", "Session": "abc"}},
        {"KV": {"Verb": "check-not-exists", "Key": "tx/held"}},
        {"KV": {"Verb": "check-index", "Key": "tx/missing", "Index": 1}},
    ])
    assert errors == [
        {"OpIndex": 1, "What": 'key "tx/missing" doesn\'t exist'},
        {"OpIndex": 2, "What": 'failed to set key "tx/held", index is stale'},
        {"OpIndex": 3, "What": 'failed to delete key "tx/held", index is stale'},
        {"OpIndex": 4, "What": f'failed index check for key "tx/held", current modify index {index} != 1'},
        {"OpIndex": 5, "What": 'failed session check for key "tx/held", current session "" != "abc"'},
        {"OpIndex": 6, "What": 'key "tx/held" exists'},
        {"OpIndex": 7, "What": 'failed to check index, key "tx/missing" doesn\'t exist'},
    ]
    assert c.kv.get("tx/never")[1] is None  # the first op succeeded on its own but was rolled back
    # An unknown verb is Consul's state store refusing the op: a 409 naming it, not a 400.
    assert rolled_back(shared_dev_agent, [{"KV": {"Verb": "get", "Key": "tx/held"}}, {"KV": {"Verb": "frob", "Key": "k"}}]) == [
        {"OpIndex": 1, "What": 'unknown KV verb "frob"'}]
    assert rolled_back(shared_dev_agent, [{"Node": {"Verb": "upsert", "Node": {"Node": "n"}}}]) == [
        {"OpIndex": 0, "What": 'unknown Node verb "upsert"'}]
    # A body that is not a list of operations is a 400 naming what is wrong, as Consul's decode failure is.
    status, text = shared_dev_agent.put("/v1/txn", {"KV": {}})
    assert status == 400 and "JSON list" in text
    status, text = shared_dev_agent.put("/v1/txn", [{"KV": {"Verb": "set", "Key": "k", "Value": "%%"}}])
    assert status == 400 and "Txn[0].KV.Value" in text
    status, text = shared_dev_agent.put("/v1/txn", [{"KV": {"Verb": "set", "Key": "k"}}] * 129)
    assert status == 413 and "too many operations" in text


def test_locks_and_session_delete(c: consul.Consul, shared_dev_agent: AgentProcess) -> None:
    sid = c.session.create(name="txn-holder", lock_delay=0)
    out = c.txn.put([{"KV": {"Verb": "lock", "Key": "tx/lock", "Value": b64("me"), "Session": sid}},
                     {"KV": {"Verb": "check-session", "Key": "tx/lock", "Session": sid}}])
    assert out["Results"][0]["KV"]["LockIndex"] == 1 and out["Results"][1]["KV"]["Session"] == sid
    other = c.session.create(name="txn-other", lock_delay=0)
    assert rolled_back(shared_dev_agent, [{"KV": {"Verb": "lock", "Key": "tx/lock", "Session": other}},
                                          {"KV": {"Verb": "unlock", "Key": "tx/lock", "Session": other}}]) == [
        {"OpIndex": 0, "What": 'failed to lock key "tx/lock", lock is already held'},
        {"OpIndex": 1, "What": 'failed to unlock key "tx/lock", lock isn\'t held, or is held by another session'}]
    # Session operations: Consul's verb is "delete"; it ends the session and releases what it holds.
    out = c.txn.put([{"Session": {"Verb": "delete", "Session": {"ID": sid}}},
                     {"KV": {"Verb": "get", "Key": "tx/lock"}}])
    assert out["Errors"] is None and len(out["Results"]) == 1  # a delete adds no result
    assert c.session.info(sid)[1] is None
    assert "Session" not in c.kv.get("tx/lock")[1]  # released
    assert rolled_back(shared_dev_agent, [{"Session": {"Verb": "delete", "Session": {"ID": other}}},
                                          {"Session": {"Verb": "delete", "Session": {"ID": other}}},
                                          {"Session": {"Verb": "renew", "Session": {"ID": other}}}]) == [
        {"OpIndex": 1, "What": f'failed to delete session: session "{other}" not found'},
        {"OpIndex": 2, "What": 'unknown Session verb "renew"'}]
    assert c.session.info(other)[1]["ID"] == other  # the first delete was rolled back with the rest
    status, text = shared_dev_agent.put("/v1/txn", [{"Session": {"Verb": "delete", "Session": {}}}])
    assert status == 400 and "Txn[0].Session.Session.ID" in text


def test_catalog_ops_errors_quote_as_consul(shared_dev_agent: AgentProcess) -> None:
    errors = rolled_back(shared_dev_agent, [
        {"Node": {"Verb": "get", "Node": {"Node": "tx-ghost"}}},
        {"Service": {"Verb": "get", "Node": "tx-ghost", "Service": {"ID": "s1"}}},
        {"Check": {"Verb": "get", "Check": {"Node": "tx-ghost", "CheckID": "c1"}}},
        {"Node": {"Verb": "cas", "Node": {"Node": "dev", "Address": "127.0.0.1", "ModifyIndex": 1}}}])
    assert errors == [{"OpIndex": 0, "What": 'node "tx-ghost" doesn\'t exist'},
                      {"OpIndex": 1, "What": 'service "s1" on node "tx-ghost" doesn\'t exist'},
                      {"OpIndex": 2, "What": 'check "c1" on node "tx-ghost" doesn\'t exist'},
                      {"OpIndex": 3, "What": 'failed to set node "dev", index is stale'}]


def test_read_only_transactions_are_reads_not_raft_writes(c: consul.Consul, shared_dev_agent: AgentProcess) -> None:
    c.kv.put("tx/ro", "r")

    def applied() -> int:
        return int(shared_dev_agent.get("/v1/agent/self")[1]["Stats"]["raft"]["applied_index"])

    before = applied()
    for query in ("", "?stale", "?consistent"):
        status, out, headers = shared_dev_agent.request("PUT", f"/v1/txn{query}", [
            {"KV": {"Verb": "get", "Key": "tx/ro"}}, {"KV": {"Verb": "check-not-exists", "Key": "tx/none"}},
            {"Node": {"Verb": "get", "Node": {"Node": "dev"}}}])
        assert status == 200 and base64.b64decode(out["Results"][0]["KV"]["Value"]) == b"r"
        assert out["Results"][1]["Node"]["Node"] == "dev"
        assert headers["X-Consul-KnownLeader"] == "true" and "X-Consul-LastContact" in headers
    assert rolled_back(shared_dev_agent, [{"KV": {"Verb": "get", "Key": "tx/none"}}]) == [
        {"OpIndex": 0, "What": 'key "tx/none" doesn\'t exist'}]
    assert applied() == before  # Consul's fast path: no log entry for reads
    c.txn.put([{"KV": {"Verb": "set", "Key": "tx/ro", "Value": b64("w")}}])
    assert applied() > before
