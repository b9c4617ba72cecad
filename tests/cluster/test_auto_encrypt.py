"""auto_encrypt with real processes: servers with verify_incoming and `auto_encrypt { allow_tls = true }`; a
client agent with only the CA file and `auto_encrypt { tls = true }` gets its agent certificate from the
servers' Connect CA and works; one without it is refused, and says why."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import consul
import msgpack
import pytest
from support import AgentProcess, ServerCluster, agent_certs, free_port, wait_for

pytestmark = pytest.mark.xdist_group("auto-encrypt")


def _client(cluster: ServerCluster, tmp: Path, name: str, conf: dict):
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(conf))
    client = cluster.client(name)
    client.extra_args += ["-config-file", str(path)]
    return client


def test_a_client_with_only_the_ca_file_gets_its_certificate_from_the_servers(tmp_path: Path) -> None:
    d = agent_certs(tmp_path)
    ca_file = str(d / "proconsul-agent-ca.pem")
    cluster = ServerCluster(tmp_path / "c", 1, config={
        "tls": {"defaults": {"ca_file": ca_file, "cert_file": str(d / "dc1-server-proconsul-0.pem"),
                             "key_file": str(d / "dc1-server-proconsul-0-key.pem"),
                             "verify_incoming": True, "verify_outgoing": True}},
        "auto_encrypt": {"allow_tls": True}})
    cluster.start()
    clients = []
    try:
        server = cluster.leader()
        wait_for(lambda: server.get("/v1/connect/ca/roots")[1]["Roots"], 20, message="the Connect CA")
        only_ca = {"tls": {"defaults": {"ca_file": ca_file, "verify_outgoing": True}}}
        good = _client(cluster, tmp_path, "ae", dict(only_ca, auto_encrypt={"tls": True}))
        bare = _client(cluster, tmp_path, "bare", only_ca)
        clients += [good, bare]
        good.start()
        bare.start()

        # The auto_encrypt client works: its writes and its anti-entropy reach the servers.
        assert consul.Consul(port=good.http_port).kv.put("via-auto-encrypt", "yes")
        assert server.get("/v1/kv/via-auto-encrypt?raw")[1] == '"yes"' or \
            consul.Consul(port=server.http_port).kv.get("via-auto-encrypt")[1]["Value"] == b"yes"
        consul.Consul(port=good.http_port).agent.service.register("web", port=80)
        wait_for(lambda: "web" in consul.Consul(port=server.http_port).catalog.services()[1], 20,
                 message="the client's service synced over mutual TLS")
        assert "auto_encrypt: this agent's TLS certificate is spiffe://" in good.log()
        # Its certificate is the Connect CA's (openssl checks it against the roots the client serves unchanged).
        roots = consul.Consul(port=good.http_port).connect.ca.roots()["Roots"]
        (tmp_path / "roots.pem").write_text("".join(r["RootCert"] for r in roots))
        cert = tmp_path / "c" / "ae" / "data" / "auto-encrypt" / "agent.pem"
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("openssl is not installed (make test installs it)")
        out = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / "roots.pem"), str(cert)],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr
        text = subprocess.run([openssl, "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True,
                              timeout=20).stdout
        assert "/agent/client/dc/dc1/id/" in text and "TLS Web Client Authentication" in text

        # Without auto_encrypt (only the CA file), the servers refuse it, and its log says what to do.
        with pytest.raises(consul.ConsulException):
            consul.Consul(port=bare.http_port).kv.put("via-bare", "no")
        wait_for(lambda: "needs a client certificate: this server verifies incoming connections (verify_incoming)" in bare.log(), 30,
                 message="the refused client's reason")
        assert consul.Consul(port=server.http_port).kv.get("via-bare")[1] is None

        # Anything without a certificate gets the certificate call only: no other RPC, no Raft.
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="server.dc1.mesh") as conn:
            payload = msgpack.packb([1, "status.peers", {}], use_bin_type=True)
            conn.sendall(b"\x00" + struct.pack(">I", len(payload)) + payload)
            head = conn.recv(4)
            body = b""
            while len(body) < struct.unpack(">I", head)[0]:
                body += conn.recv(65536)
            _, err, _ = msgpack.unpackb(body, raw=False)
            assert err[0] == "ClientCertRequired" and "auto_encrypt" in err[1], err
    finally:
        for c in clients:
            c.stop()
        cluster.stop()


def test_auto_encrypt_settings_that_cannot_work_fail_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "ae.json"
    bad.write_text(json.dumps({"auto_encrypt": {"tls": True}}))
    a = AgentProcess(tmp_path / "x", dev=False, args=["--node", "x", "--data-dir", str(tmp_path / "x" / "data"),
                                                      "-config-file", str(bad)])
    proc = subprocess.run(a.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "auto_encrypt.tls needs tls ca_file" in proc.stderr + proc.stdout


def test_acls_https_only_verify_incoming_and_auto_encrypt_together(tmp_path: Path) -> None:
    """Issue 14's production shape, minus gossip encryption: servers with ACLs default-deny, HTTPS only, mutual
    TLS on the server port and auto_encrypt; a client agent with the CA file and its agent token. The agent
    token opens auto_encrypt (node:write); a service token registers its service and reads the catalog but
    writes no KV; anonymous sees nothing; a client without an agent token gets no certificate, and says why."""
    d = agent_certs(tmp_path)
    ca_file, cert, key = (str(d / n) for n in ("proconsul-agent-ca.pem", "dc1-server-proconsul-0.pem",
                                               "dc1-server-proconsul-0-key.pem"))
    mgmt_secret, agent_secret = "6a1c1d5e-3c1e-4d8e-9a55-0c1b2e3f4a5b", "7b2d2e6f-4d2f-4e9f-8b66-1d2c3f4a5b6c"
    cluster = ServerCluster(tmp_path / "c", 1, config={
        "tls": {"defaults": {"ca_file": ca_file, "cert_file": cert, "key_file": key, "verify_incoming": True,
                             "verify_outgoing": True}},
        "auto_encrypt": {"allow_tls": True},
        "acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": mgmt_secret}}})
    server = cluster.servers[0]
    https_port = free_port()
    ports = tmp_path / "ports.json"
    ports.write_text(json.dumps({"ports": {"https": https_port}}))
    server.extra_args += ["-config-file", str(ports), "-http-port=-1"]
    server.start_background()
    clients = []
    try:
        api = consul.Consul(port=https_port, scheme="https", verify=ca_file, cert=(cert, key), token=mgmt_secret)
        wait_for(lambda: api.acl.token.read_self(), 30, message="the HTTPS-only server's management token")
        wait_for(lambda: api.connect.ca.roots()["Roots"], 20, message="the Connect CA")
        node = api.acl.policy.create(name="hc-agent", rules='node "hc" { policy = "write" }\n'
                                                            'service_prefix "" { policy = "read" }')
        api.acl.token.create(secret_id=agent_secret, policies_id=[node["ID"]])
        only_ca = {"tls": {"defaults": {"ca_file": ca_file, "verify_outgoing": True}}, "auto_encrypt": {"tls": True},
                   "acl": {"enabled": True, "default_policy": "deny"}}
        good = _client(cluster, tmp_path, "hc", {**only_ca, "acl": {**only_ca["acl"], "tokens": {"agent": agent_secret}}})
        tokenless = _client(cluster, tmp_path, "nt", only_ca)
        clients += [good, tokenless]
        good.start()
        tokenless.start_background()

        svc = api.acl.token.create(service_identities=[{"ServiceName": "api"}])["SecretID"]
        as_svc = consul.Consul(port=good.http_port, token=svc)
        as_svc.agent.service.register("api", port=80)
        wait_for(lambda: "api" in api.catalog.services()[1], 20, message="api synced over mutual TLS with its token")
        assert "api" in as_svc.catalog.services()[1]
        with pytest.raises(consul.ACLPermissionDenied):
            as_svc.kv.put("k", "v")
        assert consul.Consul(port=good.http_port).catalog.services()[1] == {}  # anonymous: filtered to nothing
        assert consul.Consul(port=good.http_port, token=mgmt_secret).kv.put("k", "v")

        wait_for(lambda: "cannot get this agent's TLS certificate" in tokenless.log()
                 and "lacks permission 'node:write'" in tokenless.log(), 30, message="the tokenless client's reason")
    finally:
        for c in clients:
            c.stop()
        cluster.stop()
