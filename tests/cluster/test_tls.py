"""TLS on the server port: certificates from `proconsul tls`, mutual authentication, checked with openssl."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest
from support import AgentProcess, ServerCluster, agent_certs, one_line_error, run, wait_for


def test_servers_talk_over_mutual_tls_and_refuse_plain_or_anonymous_peers(tmp_path: Path) -> None:
    d = agent_certs(tmp_path)
    tls = {"tls": {"defaults": {"ca_file": str(d / "proconsul-agent-ca.pem"),
                                "cert_file": str(d / "dc1-server-proconsul-0.pem"),
                                "key_file": str(d / "dc1-server-proconsul-0-key.pem"),
                                "verify_incoming": True, "verify_outgoing": True},
                   "internal_rpc": {"verify_server_hostname": True}}}
    cluster = ServerCluster(tmp_path / "c", 3, config=tls)
    cluster.start()
    try:
        lead = cluster.leader()
        follower = cluster.followers()[0]
        assert follower.put("/v1/kv/over-tls", "yes") == (200, True)  # forwarded to the leader over TLS RPC
        for a in cluster.servers:
            wait_for(lambda a=a: a.get("/v1/kv/over-tls?raw&stale")[1] == '"yes"', message="replicated over TLS")
        assert len(lead.get("/v1/operator/raft/configuration")[1]["Servers"]) == 3
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("openssl is not installed (make test installs it)")
        # The server presents the CA-signed certificate naming server.dc1.mesh ...
        probe = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{lead.server_port}", "-CAfile",
                                str(d / "proconsul-agent-ca.pem"), "-verify_return_error", "-brief",
                                "-cert", str(d / "dc1-server-proconsul-0.pem"), "-key",
                                str(d / "dc1-server-proconsul-0-key.pem")],
                               input=b"", capture_output=True, timeout=20)
        text = (probe.stdout + probe.stderr).decode(errors="replace")
        assert "Verification: OK" in text and "server.dc1.mesh" in text, text
        # ... and a peer without a client certificate is cut off with the "certificate required" alert.
        ctx = ssl.create_default_context(cafile=str(d / "proconsul-agent-ca.pem"))
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", lead.server_port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="server.dc1.mesh") as conn:
            conn.sendall(b"\x00" + struct.pack(">I", 1) + b"\x90")
            with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
                if not conn.recv(1):
                    raise ConnectionResetError("closed without an answer")
        assert "certificate" in str(refused.value).lower() or "closed" in str(refused.value)
        # A plain-TCP peer gets nothing either.
        with socket.create_connection(("127.0.0.1", lead.server_port), timeout=10) as plain:
            plain.sendall(b"\x00" + struct.pack(">I", 1) + b"\x90")
            try:
                data = plain.recv(64)
            except ConnectionResetError:
                data = b""
            assert data == b"" or data[0] == 0x15, data  # closed, or a TLS alert record: never an RPC answer
        assert lead.put("/v1/kv/still", "ok") == (200, True)
    finally:
        cluster.stop()


def test_tls_settings_that_cannot_work_fail_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "tls.json"
    bad.write_text('{"verify_incoming": true}')
    msg = one_line_error(run(None, "agent", "--server", "--bootstrap-expect", "1", "--data-dir", str(tmp_path / "d"),
                             "--config-file", str(bad), "--http-port", "0", "--dns-port", "-1"))
    assert "verify_incoming" in msg
    bad.write_text('{"cert_file": "/nope.pem", "key_file": "/nope-key.pem", "ca_file": "/nope-ca.pem"}')
    msg = one_line_error(run(None, "agent", "--server", "--bootstrap-expect", "1", "--data-dir", str(tmp_path / "d"),
                             "--config-file", str(bad), "--http-port", "0", "--dns-port", "-1"))
    assert "cannot load the certificates" in msg
    bad.write_text('{"ports": {"https": 0}, "tls": {"https": {"cert_file": "x"}}}')
    assert "ports.https = 0 cannot be honoured without a certificate" in one_line_error(
        run(None, "agent", "--dev", "--config-file", str(bad)))
    assert AgentProcess  # the fixture module's agent type is what the other tests start
