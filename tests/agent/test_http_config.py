"""`http_config` (and `limits.http_max_conns_per_client`) on a real agent, as Consul applies them: `response_headers` on every answer
(full path, the lean front's cached answers, errors, the UI), `block_endpoints` → 403, and writes only
from `allow_write_http_from` (here 10.0.0.0/8, so this test's 127.0.0.1 may read and not write); a bad
value stops the agent with one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import consul
import pytest
from support import AgentProcess, Conn, lean_answers, wait_for

from proconsul.agent.config.model import ConfigError

pytestmark = pytest.mark.xdist_group("http-config")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("http-config")
    (tmp / "http.json").write_text(json.dumps({"http_config": {
        "response_headers": {"Access-Control-Allow-Origin": "*", "X-Frame-Options": "DENY"},
        "block_endpoints": ["/v1/operator", "/v1/kv/secret"],
        "allow_write_http_from": ["10.0.0.0/8"]}}))
    a = AgentProcess(tmp / "agent", dev=True, args=["--config-file", str(tmp / "http.json")])
    a.start()
    yield a
    a.stop()


def test_response_headers_on_every_answer_lean_ones_included(agent: AgentProcess) -> None:
    for path in ("/v1/catalog/nodes", "/v1/kv/missing", "/v1/agent/self", "/ui/"):
        status, _, headers = agent.request("GET", path)
        assert headers.get("Access-Control-Allow-Origin") == "*" and headers.get("X-Frame-Options") == "DENY", \
            (path, status, headers)
    conn = Conn(agent)
    try:
        conn.get("/v1/catalog/nodes")  # fills the cache
        before = lean_answers(agent)
        answer = conn.get("/v1/catalog/nodes")
        assert lean_answers(agent) == before + 1, "answered by the lean front"
        assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in answer and b"\r\nX-Frame-Options: DENY\r\n" in answer
    finally:
        conn.close()


def test_blocked_endpoints_and_writes_from_elsewhere_are_403(agent: AgentProcess) -> None:
    status, body, headers = agent.request("GET", "/v1/operator/raft/configuration")
    assert (status, body) == (403, "Endpoint is blocked by agent configuration")
    assert headers.get("Access-Control-Allow-Origin") == "*", "a refusal carries the headers too"
    assert agent.request("GET", "/v1/kv/secret/db")[:2] == (403, "Endpoint is blocked by agent configuration")
    assert agent.request("PUT", "/v1/kv/open", raw=b"x")[:2] == (403, "Access is restricted")
    assert agent.request("GET", "/v1/kv/open")[0] == 404, "reads are allowed from anywhere"
    client = consul.Consul(port=agent.http_port)
    with pytest.raises(consul.ConsulException, match="Access is restricted"):
        client.agent.service.register("web", port=80)
    assert "web" not in client.agent.services()
    assert "Access is restricted" in agent.log() and "refused PUT /v1/kv/open" in agent.log()


@pytest.mark.parametrize(("http_config", "says"), [
    ({"allow_write_http_from": ["nope"]}, "http_config.allow_write_http_from: 'nope' is not a CIDR"),
    ({"block_endpoints": ["v1/acl"]}, "http_config.block_endpoints lists path prefixes"),
    ({"response_headers": {"Bad Name": "x"}}, "http_config.response_headers: 'Bad Name' is not a valid header"),
    ({"cors": True}, "unknown key http_config.cors"),
])
def test_bad_http_config_names_the_key(http_config: dict, says: str) -> None:
    from proconsul.agent.config.keys import merge_file_data
    from proconsul.agent.config.model import AgentConfig

    with pytest.raises(ConfigError, match=re.escape(f"test.json: {says}")):
        merge_file_data(AgentConfig(dev=True), {"http_config": http_config}, "test.json")


def test_a_client_over_http_max_conns_per_client_gets_429_and_a_closed_connection(tmp_path: Path) -> None:
    import socket

    a = AgentProcess(tmp_path / "limited", dev=True, args=["-hcl", "limits { http_max_conns_per_client = 4 }"])
    a.start()  # its readiness checks close their connections: none is held when the test starts
    held = [Conn(a) for _ in range(4)]
    try:
        assert all(c.get("/v1/status/leader").startswith(b"HTTP/1.1 200") for c in held)
        with socket.create_connection(("127.0.0.1", a.http_port), timeout=5) as extra:
            answer = b""
            while chunk := extra.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests")
        assert answer.endswith(b"Your IP is issuing too many concurrent connections, please rate limit your calls\n")
        held.pop().close()
        wait_for(lambda: a.request("GET", "/v1/status/leader")[0] == 200, 5,
                 message="a connection again once one of the four closed")
    finally:
        for c in held:
            c.close()
        a.stop()
