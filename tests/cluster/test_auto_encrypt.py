"""auto_encrypt with real processes: servers with verify_incoming and `auto_encrypt { allow_tls = true }`; a
client agent with only the CA file and `auto_encrypt { tls = true }` gets its agent certificate from the
servers' Connect CA and works; one without it is refused, and says why."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import consul
import msgpack
import pytest
import requests
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
    """Issue 14's production shape: servers with ACLs default-deny, HTTPS only, mutual TLS on the server port,
    auto_encrypt and gossip encryption; a client agent with the CA file, the gossip key and its agent token.
    The agent token opens auto_encrypt (node:write); a service token registers its service and reads the
    catalog but writes no KV; anonymous sees nothing, in HTTP and DNS; openssl confirms the HTTPS
    certificate; an agent with another gossip key cannot join (and the server logs the drop); the gossip key
    is rotated while writes go through the client, and every acknowledged write is there afterwards; a
    client without an agent token gets no certificate, and says why."""
    d = agent_certs(tmp_path)
    ca_file, cert, key = (str(d / n) for n in ("proconsul-agent-ca.pem", "dc1-server-proconsul-0.pem",
                                               "dc1-server-proconsul-0-key.pem"))
    mgmt_secret, agent_secret = "6a1c1d5e-3c1e-4d8e-9a55-0c1b2e3f4a5b", "7b2d2e6f-4d2f-4e9f-8b66-1d2c3f4a5b6c"
    k1, k2, stranger = (base64.b64encode(os.urandom(32)).decode() for _ in range(3))
    cluster = ServerCluster(tmp_path / "c", 1, config={
        "encrypt": k1,
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
                   "acl": {"enabled": True, "default_policy": "deny"}, "encrypt": k1}
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

        # DNS obeys: anonymous (no default token) finds nothing; with a default token that may read, it finds api.
        def dig_api() -> str:
            return subprocess.run(["dig", "@127.0.0.1", "-p", str(good.dns_port), "+time=3", "+tries=1",
                                   "api.service.mesh", "SRV"], capture_output=True, text=True, timeout=20).stdout
        assert "ANSWER: 0" in dig_api() or "NXDOMAIN" in dig_api()
        reader = api.acl.policy.create(name="dns-read", rules='service_prefix "" { policy = "read" }\n'
                                                              'node_prefix "" { policy = "read" }')
        dns_token = api.acl.token.create(policies_id=[reader["ID"]])["SecretID"]
        api.agent.token.set_default(dns_token)  # the server's: a client's DNS is answered by a server (docs/acl.md)
        wait_for(lambda: "api.service.mesh." in dig_api() and "ANSWER: 1" in dig_api(), 15,
                 message="DNS answers once the default token may read")

        # openssl confirms the HTTPS listener's certificate chain (with the client certificate it demands).
        s_client = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{https_port}", "-CAfile", ca_file,
                                   "-cert", cert, "-key", key], input=b"", capture_output=True, timeout=20)
        assert b"Verify return code: 0 (ok)" in s_client.stdout, s_client.stdout[-2000:]

        # Another gossip key cannot join; the server counts and logs what it dropped.
        wrong = _client(cluster, tmp_path, "wk", {**only_ca, "encrypt": stranger})
        clients.append(wrong)
        wrong.start_background()
        wait_for(lambda: "no installed gossip key opens it" in wrong.log(), 30, message="the stranger's reason")
        wait_for(lambda: "no installed gossip key opens it" in server.log(), 15, message="the server's log line")
        assert "wk" not in {m["Name"] for m in api.agent.members()}
        wrong.stop()

        # Rotate the gossip key while writes go through the client agent: none is lost, nobody fails.
        writer = consul.Consul(port=good.http_port, token=mgmt_secret)
        acked: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set():
                try:
                    if writer.kv.put(f"rot/{i}", str(i)):
                        acked.append(f"rot/{i}")
                except Exception as e:  # counted: the test fails on any
                    errors.append(e)
                i += 1

        keyring = f"https://127.0.0.1:{https_port}/v1/operator/keyring"
        kw = {"verify": ca_file, "cert": (cert, key), "headers": {"X-Consul-Token": mgmt_secret}, "timeout": 30}
        t = threading.Thread(target=write, daemon=True)
        t.start()
        try:
            for method, key_ in (("POST", k2), ("PUT", k2), ("DELETE", k1)):  # install, use, remove the old one
                n = len(acked)
                r = requests.request(method, keyring, json={"Key": key_}, **kw)
                assert r.status_code == 200, (method, r.status_code, r.text)
                wait_for(lambda n=n: len(acked) > n + 5, 15, message=f"writes to continue after {method}")
        finally:
            stop.set()
            t.join(30)
        assert errors == [], errors[:3]
        lan = next(row for row in requests.get(keyring, **kw).json() if not row["WAN"])
        assert lan["Keys"] == {k2: lan["NumNodes"]} and lan["PrimaryKeys"] == {k2: lan["NumNodes"]}, lan
        stored = {e["Key"] for e in api.kv.get("rot/", recurse=True)[1] or []}
        assert set(acked) <= stored and len(acked) > 15
        serf = {c["Node"]: c["Status"] for c in api.health.state("any")[1] if c["CheckID"] == "serfHealth"}
        assert serf.get("hc") == "passing" and serf.get("s0") == "passing", serf

        wait_for(lambda: "cannot get this agent's TLS certificate" in tokenless.log()
                 and "lacks permission 'node:write'" in tokenless.log(), 30, message="the tokenless client's reason")
    finally:
        for c in clients:
            c.stop()
        cluster.stop()
