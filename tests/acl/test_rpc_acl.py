"""Servers check the token of every RPC: a client agent, or anything else that speaks the server port, gets
no further than its token allows. Real processes: a server and client agents with ACLs default-deny, and a
hand-written client of the server port's wire format (mux byte 0x00, length-prefixed msgpack frames)."""

from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import consul
import msgpack
import pytest

from tests.support import ServerCluster, wait_for

pytestmark = pytest.mark.xdist_group("acl-rpc")
MGMT = "rpc-management"
ACL = {"enabled": True, "default_policy": "deny", "token_ttl": "1s"}


def raw_rpc(port: int, method: str, args: dict[str, Any]) -> tuple[Any, Any]:
    """One call on the server port: (error, result), error being [kind, message] or None."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        payload = msgpack.packb([1, method, args], use_bin_type=True)
        s.sendall(b"\x00" + struct.pack(">I", len(payload)) + payload)
        head = _read(s, 4)
        seq, err, result = msgpack.unpackb(_read(s, struct.unpack(">I", head)[0]), raw=False, strict_map_key=False)
        assert seq == 1
        return err, result


def _read(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "the server closed the connection"
        buf += chunk
    return buf


def kv_set(key: str, value: bytes) -> bytes:
    from proconsul.catalog import commands as c

    return c.encode(c.KVOp(verb="set", key=key, value=value))


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rpc-acl")
    cluster = ServerCluster(tmp, n=1, config={"acl": dict(ACL, tokens={"initial_management": MGMT})})
    cluster.start()
    try:
        server = cluster.leader()
        mgmt = consul.Consul(port=server.http_port, token=MGMT)
        wait_for(lambda: mgmt.acl.token.read_self(), message="initial management token")
        yield cluster, server, mgmt
    finally:
        cluster.stop()


def test_raw_rpc_without_a_sufficient_token_is_refused(acl_cluster):
    cluster, server, mgmt = acl_cluster
    port = server.server_port
    for token in ("", None):
        args = {"cmd": kv_set("secret/x", b"v")}
        if token is not None:
            args["token"] = token
        err, _ = raw_rpc(port, "catalog.apply", args)
        assert err is not None and err[0] == "PermissionDenied", err
        assert err[1].startswith("Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' "
                                 "lacks permission 'key:write' on \"secret/x\""), err
    # The hole this closes: every token's secret, read straight off the server port.
    err, _ = raw_rpc(port, "catalog.query", {"name": "table.list", "args": {"table": "acl_tokens"}})
    assert err is not None and err[0] == "PermissionDenied" and "acl:read" in err[1], err
    # A token with read on the key only: reading works, writing does not; an unknown secret is "ACL not found".
    policy = mgmt.acl.policy.create(name="app-read", rules='key_prefix "app/" { policy = "read" }')
    reader = mgmt.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
    err, _ = raw_rpc(port, "catalog.apply", {"cmd": kv_set("app/a", b"1"), "token": reader})
    assert err is not None and err[0] == "PermissionDenied" and "key:write" in err[1], err
    err, _ = raw_rpc(port, "catalog.apply", {"cmd": kv_set("app/a", b"1"), "token": "no-such-secret"})
    assert err == ["ACLNotFound", "ACL not found"], err
    err, ok = raw_rpc(port, "catalog.apply", {"cmd": kv_set("app/a", b"1"), "token": MGMT})
    assert err is None and ok is True
    mgmt.kv.put("other/b", "2")
    # A listing is cut to what the token reads, and the answer says so.
    err, answer = raw_rpc(port, "catalog.query", {"name": "kv.list", "args": {"key": ""}, "token": reader})
    assert err is None and [r["Key"] for r in answer[1]] == ["app/a"] and answer[4] is True, answer
    # Operator and snapshot calls need their rights; status stays open, as in Consul.
    for method in ("operator.raft_configuration", "snapshot.save"):
        err, _ = raw_rpc(port, method, {"token": reader})
        assert err is not None and err[0] == "PermissionDenied", (method, err)
    assert raw_rpc(port, "status.leader", {})[0] is None
    err, _ = raw_rpc(port, "no.such.method", {"token": reader})
    assert err is not None and err[0] == "UnknownMethod"


def _client(cluster: ServerCluster, tmp: Path, name: str, tokens: dict[str, str]):
    conf = tmp / f"{name}-acl.json"
    conf.write_text(json.dumps({"acl": dict(ACL, tokens=tokens)}))
    client = cluster.client(name)
    client.extra_args += ["-config-file", str(conf)]
    return client


def test_client_agent_forwards_the_callers_token(acl_cluster, tmp_path: Path):
    cluster, server, mgmt = acl_cluster
    node_policy = mgmt.acl.policy.create(name="ca-node", rules='node "ca" { policy = "write" }\n'
                                                               'service_prefix "" { policy = "read" }')
    agent_token = mgmt.acl.token.create(policies_id=[node_policy["ID"]])["SecretID"]
    client = _client(cluster, tmp_path, "ca", {"agent": agent_token})
    client.start()
    try:
        # Anti-entropy with the agent token: the node reaches the catalog.
        wait_for(lambda: "ca" in [n["Node"] for n in mgmt.catalog.nodes()[1]], 30, message="ca in the catalog")
        on_client = consul.Consul(port=client.http_port)
        with pytest.raises(consul.ACLPermissionDenied, match="key:write"):
            on_client.kv.put("x", "y")
        writer = mgmt.acl.policy.create(name="x-write", rules='key "x" { policy = "write" }')
        tok = mgmt.acl.token.create(policies_id=[writer["ID"]])["SecretID"]
        assert consul.Consul(port=client.http_port, token=tok).kv.put("x", "y")
        # A listing through the client agent keeps Consul's header although the server did the cutting.
        assert mgmt.kv.put("not-x", "hidden")  # something the token cannot see, whatever ran before
        status, headers = _get(client.http_port, "/v1/kv/?recurse", tok)
        assert status == 200 and headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        # ACL endpoints on a client agent are served by the leader (login, bootstrap and writes run there).
        assert consul.Consul(port=client.http_port, token=MGMT).acl.policy.create(name="via-client", rules="")
        assert consul.Consul(port=client.http_port, token=tok).acl.token.read_self()["SecretID"] == tok
        # Connect through the client agent: the leaf is signed by a server for the token that asks for it.
        web = mgmt.acl.token.create(service_identities=[{"ServiceName": "web"}])["SecretID"]
        leaf = wait_for(lambda: _get_json(client.http_port, "/v1/agent/connect/ca/leaf/web", web), 20,
                        message="web's leaf through the client agent")
        assert leaf["Service"] == "web" and "BEGIN CERTIFICATE" in leaf["CertPEM"]
        with pytest.raises(urllib.error.HTTPError) as denied:
            _get_json(client.http_port, "/v1/agent/connect/ca/leaf/db", web)
        assert denied.value.code == 403
    finally:
        client.stop()


def _get_json(port: int, path: str, token: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Consul-Token": token})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _get(port: int, path: str, token: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Consul-Token": token})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers)


def test_anti_entropy_without_an_agent_token_fails_loudly(acl_cluster, tmp_path: Path):
    cluster, server, mgmt = acl_cluster
    bare = _client(cluster, tmp_path, "cb", {})
    wrong = _client(cluster, tmp_path, "cw", {"agent": "not-a-token"})
    bare.start()
    wrong.start()
    try:
        wait_for(lambda: "Node info update blocked by ACLs" in bare.log() and "set acl.tokens.agent" in bare.log(),
                 30, message="the bare client's warning")
        wait_for(lambda: "the agent token (acl.tokens.agent, else acl.tokens.default) matches no ACL token" in wrong.log(), 30,
                 message="the wrong token's warning")
    finally:
        bare.stop()
        wrong.stop()


def test_followers_pass_the_callers_token_to_the_leader(tmp_path: Path):
    """A follower forwards writes (and ACL requests) to the leader with the caller's token; the leader checks
    it again, so calling a follower's server port directly gains nothing either."""
    cluster = ServerCluster(tmp_path, n=3, config={"acl": dict(ACL, tokens={"initial_management": MGMT})})
    cluster.start()
    try:
        cluster.leader()
        follower = cluster.followers()[0]
        on_follower = consul.Consul(port=follower.http_port, token=MGMT)
        wait_for(lambda: on_follower.acl.token.read_self(), 20, message="the management token via a follower")
        assert on_follower.kv.put("f/k", "v")  # forwarded to the leader, which checks MGMT
        policy = on_follower.acl.policy.create(name="f-read", rules='key_prefix "f/" { policy = "read" }')
        reader = on_follower.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
        with pytest.raises(consul.ACLPermissionDenied):
            consul.Consul(port=follower.http_port, token=reader).kv.put("f/k", "w")
        assert consul.Consul(port=follower.http_port, token=reader).kv.get("f/k")[1]["Value"] == b"v"
        err, _ = raw_rpc(follower.server_port, "catalog.apply", {"cmd": kv_set("f/k", b"x"), "token": reader})
        assert err is not None and err[0] == "PermissionDenied", err
        err, ok = raw_rpc(follower.server_port, "catalog.apply", {"cmd": kv_set("f/k", b"y"), "token": MGMT})
        assert err is None and ok is True
        assert on_follower.kv.get("f/k", consistency="consistent")[1]["Value"] == b"y"
    finally:
        cluster.stop()


def test_acl_endpoints_on_a_client_agent_reach_an_https_only_leader(tmp_path: Path):
    """The leader answers forwarded ACL requests through its own API: over HTTPS, with its certificate, when
    its plain HTTP port is off and its HTTPS port verifies clients (the production shape)."""
    import ssl

    from tests.support import AgentProcess, agent_certs, free_port

    d = agent_certs(tmp_path)
    https_port = free_port()
    conf = tmp_path / "server.json"
    conf.write_text(json.dumps({
        "ports": {"https": https_port, "http": -1},
        "tls": {"https": {"ca_file": str(d / "proconsul-agent-ca.pem"),
                          "cert_file": str(d / "dc1-server-proconsul-0.pem"),
                          "key_file": str(d / "dc1-server-proconsul-0-key.pem"), "verify_incoming": True}},
        "acl": dict(ACL, tokens={"initial_management": MGMT})}))
    server = AgentProcess(tmp_path / "s", dev=False, args=[
        "--server", "--bootstrap-expect", "1", "--node", "hs", "--data-dir", str(tmp_path / "s" / "data"),
        "-config-file", str(conf), "-http-port=-1"])
    server.https_port = https_port
    server.start_background()
    client = None
    try:
        ctx = ssl.create_default_context(cafile=str(d / "proconsul-agent-ca.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(d / "dc1-server-proconsul-0.pem"), str(d / "dc1-server-proconsul-0-key.pem"))

        def leader() -> bool:
            assert server.proc.poll() is None, server.log()
            req = urllib.request.Request(f"https://127.0.0.1:{https_port}/v1/acl/token/self",
                                         headers={"X-Consul-Token": MGMT})
            with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                return r.status == 200
        wait_for(leader, 30, message="the HTTPS-only server's management token")
        client = AgentProcess(tmp_path / "c", dev=False, args=[
            "--node", "hc", "--data-dir", str(tmp_path / "c" / "data"),
            "--retry-join", f"127.0.0.1:{server.serf_lan_port}", "-hcl",
            'acl { enabled = true default_policy = "deny" }'])
        client.start()
        via_client = consul.Consul(port=client.http_port, token=MGMT)
        made = wait_for(lambda: via_client.acl.policy.create(name="over-https", rules=""), 20,
                        message="a policy made through the client agent")
        assert made["Name"] == "over-https"
        assert "over-https" in {p["Name"] for p in via_client.acl.policy.list()}
    finally:
        if client is not None:
            client.stop()
        server.stop()
