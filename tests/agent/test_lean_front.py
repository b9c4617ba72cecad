"""The lean front (agent/api/lean.py) on a real dev agent, over raw keep-alive sockets: it answers cached
hot reads with the same bytes aiohttp sends (Date aside), follows writes, and hands every request it
must not answer to aiohttp on the same connection; with ACLs on it resolves the token first."""

from __future__ import annotations

import datetime
import re
import uuid

import consul
import pytest
from support import AgentProcess, Conn, lean_answers, wait_for

pytestmark = pytest.mark.xdist_group("lean-front")

MGMT = "T-lean-management"


def undated(response: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", response)


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = AgentProcess(tmp_path_factory.mktemp("lean"), dev=True)
    a.start()
    for i in range(20):  # answers of more than a packet, which gzip would compress
        a.put("/v1/catalog/register", {"Node": f"lean-{i}", "Address": f"10.1.0.{i + 1}",
                                       "Service": {"Service": "lean", "ID": f"lean-{i}", "Port": 80},
                                       "Checks": [{"CheckID": f"lean-{i}", "ServiceID": f"lean-{i}",
                                                   "Status": "passing"}]})
    for key in ("lean/a", "lean/b"):
        assert a.request("PUT", f"/v1/kv/{key}", raw=key.encode())[0] == 200
    yield a
    a.stop()


def test_cached_reads_are_answered_lean_with_aiohttps_bytes(agent: AgentProcess) -> None:
    conn = Conn(agent)
    try:
        for target in ("/v1/health/service/lean?passing", "/v1/catalog/service/lean", "/v1/catalog/nodes",
                       "/v1/kv/lean/a", "/v1/kv/lean/a?raw", "/v1/kv/lean?recurse", "/v1/kv/lean?keys"):
            first = conn.get(target)  # fills the cache (the full path)
            before = lean_answers(agent)
            lean = [conn.get(target) for _ in range(3)]
            assert lean_answers(agent) - before == 3, target
            # Two requests in one write are pipelined: aiohttp answers both, from the same cache entry.
            full = conn.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode() * 2, answers=2)
            assert lean_answers(agent) - before == 3, "pipelined requests are aiohttp's"
            assert status(first) == 200 and b"X-Consul-Index: " in first and b"X-Consul-KnownLeader: true" in first
            assert {undated(r) for r in [first, *lean, *full]} == {undated(first)}, target
    finally:
        conn.close()


def test_writes_show_in_the_next_lean_answer(agent: AgentProcess) -> None:
    conn = Conn(agent)
    try:
        target = "/v1/health/service/lean?passing"
        conn.get(target)
        before = conn.get(target)
        agent.put("/v1/catalog/register", {"Node": "lean-new", "Address": "10.1.9.9",
                                           "Service": {"Service": "lean", "ID": "lean-new", "Port": 80}})
        after = conn.get(target)
        assert b'"lean-new"' not in before and b'"lean-new"' in after
        index = int(re.search(rb"X-Consul-Index: (\d+)", after).group(1))
        assert index > int(re.search(rb"X-Consul-Index: (\d+)", before).group(1))
        agent.put("/v1/catalog/deregister", {"Node": "lean-new"})
        assert b'"lean-new"' not in conn.get(target)
        # KV: a value written shows in the next read; a missing key is a 404, never cached.
        conn.get("/v1/kv/lean/c?raw")
        agent.request("PUT", "/v1/kv/lean/c", raw=b"one")
        assert conn.get("/v1/kv/lean/c?raw").endswith(b"\r\n\r\none")
        agent.request("PUT", "/v1/kv/lean/c", raw=b"two")
        assert conn.get("/v1/kv/lean/c?raw").endswith(b"\r\n\r\ntwo")
        agent.request("DELETE", "/v1/kv/lean/c")
        assert status(conn.get("/v1/kv/lean/c?raw")) == 404 and status(conn.get("/v1/kv/lean/c?raw")) == 404
    finally:
        conn.close()


@pytest.mark.parametrize("target,headers", [
    ("/v1/health/service/lean?passing&index=1&wait=1ms", ""),  # blocking
    ("/v1/health/service/lean?passing&pretty", ""),
    ("/v1/health/service/lean?passing&consistent", ""),
    ("/v1/health/service/lean?passing&near=_agent", ""),
    ("/v1/health/service/lean?passing&filter=Service.Port%20%3D%3D%2080", ""),  # percent-encoded
    ("/v1/health/service/lea%6e?passing", ""),
    ("/v1/health/./service/lean?passing", ""),
    ("/v1/health/service/lean?passing", "Accept-Encoding: gzip\r\n"),  # the answer is worth compressing
    ("/v1/health/service/lean?passing", "Content-Length: 0\r\n"),
    ("/v1/agent/self", ""),  # not a cached read
])
def test_requests_the_front_must_not_answer_go_to_aiohttp(agent: AgentProcess, target: str, headers: str) -> None:
    conn = Conn(agent)
    try:
        first = conn.get(target, headers)  # fills the cache where the full path caches it
        before = lean_answers(agent)
        answer = conn.get(target, headers)
        assert lean_answers(agent) == before, f"{target} {headers!r} was answered by the lean front"
        assert undated(answer) == undated(first) and status(answer) in (200, 404), answer[:200]
        if "gzip" in headers:
            assert b"Content-Encoding: gzip" in answer
        if "pretty" in target:
            assert b'[\n  {\n' in answer
        # The connection stays usable, and the front answers the next plain read on it.
        conn.get("/v1/health/service/lean?passing")
        mid = lean_answers(agent)
        assert status(conn.get("/v1/health/service/lean?passing")) == 200
        assert lean_answers(agent) == mid + 1
    finally:
        conn.close()


def test_connection_close_and_http10_are_aiohttps(agent: AgentProcess) -> None:
    conn = Conn(agent)
    try:
        conn.get("/v1/catalog/nodes")
        before = lean_answers(agent)
        answer = conn.get("/v1/catalog/nodes", "Connection: close\r\n")
        assert status(answer) == 200 and b"Connection: close" in answer
        assert conn.sock.recv(1) == b"", "aiohttp closes the connection as asked"
        assert lean_answers(agent) == before
    finally:
        conn.close()


def test_a_request_split_across_reads_is_aiohttps(agent: AgentProcess) -> None:
    conn = Conn(agent)
    try:
        conn.get("/v1/catalog/nodes")
        before = lean_answers(agent)
        conn.sock.sendall(b"GET /v1/catalog/nodes HTTP/1.1\r\nHo")
        assert lean_answers(agent) == before  # a round trip on another connection: the agent has read the half
        answer = conn.send(b"st: t\r\n\r\n")[0]
        assert status(answer) == 200 and lean_answers(agent) == before
        assert status(conn.get("/v1/catalog/nodes")) == 200 and lean_answers(agent) == before + 1
    finally:
        conn.close()


# ------------------------------------------------------------------ ACLs on


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory: pytest.TempPathFactory):
    a = AgentProcess(tmp_path_factory.mktemp("lean-acl"), args=[
        "-hcl", f'acl {{ enabled = true default_policy = "deny" tokens {{ initial_management = "{MGMT}" }} }}'])
    a.start()
    mgmt = consul.Consul(port=a.http_port, token=MGMT)
    wait_for(lambda: any(t["SecretID"] == MGMT for t in mgmt.acl.token.list()), message="initial token")
    for i in range(3):
        assert a.put(f"/v1/catalog/register?token={MGMT}", {
            "Node": f"acl-{i}", "Address": f"10.2.0.{i + 1}", "Service": {"Service": "lean", "ID": f"lean-{i}"}})[0] == 200
    yield a
    a.stop()


def token(agent: AgentProcess, rules: str, **extra: str) -> str:
    """A new token with one new policy of `rules`."""
    code, policy = agent.put(f"/v1/acl/policy?token={MGMT}", {"Name": f"p-{uuid.uuid4().hex[:12]}",
                                                              "Rules": rules})
    assert code == 200, policy
    code, body = agent.put(f"/v1/acl/token?token={MGMT}", {"Policies": [{"ID": policy["ID"]}], **extra})
    assert code == 200, body
    return body["SecretID"]


READ_ALL = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'


def test_acls_on_the_front_answers_per_token_and_filters(acl_agent: AgentProcess) -> None:
    everything = token(acl_agent, READ_ALL)
    one_node = token(acl_agent, 'service_prefix "" { policy = "read" }\nnode "acl-1" { policy = "read" }')
    conn = Conn(acl_agent)
    try:
        target = "/v1/health/service/lean"
        for secret in (everything, one_node):
            conn.get(target, f"X-Consul-Token: {secret}\r\n")
        before = lean_answers(acl_agent, MGMT)
        full = conn.get(target, f"X-Consul-Token: {everything}\r\n")
        cut = conn.get(target, f"Authorization: Bearer {one_node}\r\n")
        assert lean_answers(acl_agent, MGMT) == before + 2
        assert full.count(b'"Node":"acl-') == 3 and b"Filtered-By-ACLs" not in full
        assert cut.count(b'"Node":"acl-') == 1 and b"X-Consul-Results-Filtered-By-ACLs: true" in cut
        # No token: the anonymous token (deny) sees nothing; an unknown one is refused, never served a hit.
        assert b"[]" in conn.get(target)
        refused = conn.get(target, "X-Consul-Token: no-such-secret\r\n")
        assert status(refused) == 403 and refused.endswith(b"ACL not found\n")
        # KV: a token that may read the key is answered from the cache; one that may not is refused.
        keys = token(acl_agent, 'key_prefix "lean/" { policy = "read" }')
        assert acl_agent.put(f"/v1/kv/lean/k?token={MGMT}", "v")[0] == 200
        for _ in range(2):
            assert status(conn.get("/v1/kv/lean/k", f"X-Consul-Token: {keys}\r\n")) == 200
        mid = lean_answers(acl_agent, MGMT)
        assert status(conn.get("/v1/kv/lean/k", f"X-Consul-Token: {keys}\r\n")) == 200
        denied = conn.get("/v1/kv/lean/k", f"X-Consul-Token: {everything}\r\n")
        assert status(denied) == 403 and b"key:read" in denied
        assert lean_answers(acl_agent, MGMT) == mid + 1
    finally:
        conn.close()


def test_acls_on_an_expired_token_is_refused_though_its_answer_is_cached(acl_agent: AgentProcess) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    brief = token(acl_agent, READ_ALL, ExpirationTime=soon.isoformat(timespec="seconds").replace("+00:00", "Z"))
    conn = Conn(acl_agent)
    try:
        header = f"X-Consul-Token: {brief}\r\n"
        assert status(conn.get("/v1/catalog/service/lean", header)) == 200
        assert status(conn.get("/v1/catalog/service/lean", header)) == 200
        wait_for(lambda: status(conn.get("/v1/catalog/service/lean", header)) == 403, timeout=15,
                 message="the expired token refused")
    finally:
        conn.close()

