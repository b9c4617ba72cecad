"""`proconsul intention`, `connect ca` and `tls` against a real dev agent and the real openssl."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import CLI, AgentProcess, ok, one_line_error, run, wait_for


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    wait_for(lambda: shared_dev_agent.get("/v1/connect/ca/roots")[1]["Roots"], message="CA bootstrap")
    return shared_dev_agent


def test_intention_lifecycle(agent: AgentProcess, tmp_path: Path) -> None:
    assert "Created: cli-web => cli-db (deny)" in ok(agent, "intention", "create", "--deny", "cli-web", "cli-db")
    assert "already exists" in one_line_error(run(agent, "intention", "create", "cli-web", "cli-db"))
    res = run(agent, "intention", "check", "cli-web", "cli-db")
    assert res.returncode == 2 and res.stdout.strip() == "Denied"
    ok(agent, "intention", "create", "--replace", "--meta", "owner=team-a", "cli-web", "cli-db")
    assert ok(agent, "intention", "check", "cli-web", "cli-db").strip() == "Allowed"
    got = json.loads(ok(agent, "intention", "get", "cli-web", "cli-db", "--format", "json"))
    assert got["Action"] == "allow" and got["Meta"] == {"owner": "team-a"}
    assert any(i["ID"] == got["ID"] for i in json.loads(ok(agent, "intention", "list", "--format", "json")))
    assert "cli-web => cli-db (allow)" in ok(agent, "intention", "match", "cli-db")
    (tmp_path / "ixns.json").write_text(json.dumps([{"SourceName": "cli-a", "DestinationName": "cli-db",
                                                     "Action": "deny"}]))
    ok(agent, "intention", "create", "--file", str(tmp_path / "ixns.json"))
    assert run(agent, "intention", "check", "cli-a", "cli-db").returncode == 2
    assert "Intention deleted." in ok(agent, "intention", "delete", got["ID"])
    assert "no intention" in one_line_error(run(agent, "intention", "get", "cli-web", "cli-db"))
    assert "--allow and --deny" in one_line_error(run(agent, "intention", "create", "--allow", "--deny", "a", "b"))


def test_ca_get_and_set_config(agent: AgentProcess, tmp_path: Path) -> None:
    cfg = json.loads(ok(agent, "connect", "ca", "get-config"))
    assert cfg["Provider"] == "consul"
    (tmp_path / "ca.json").write_text(json.dumps({"Provider": "consul", "Config": {"LeafCertTTL": "24h"}}))
    assert "Configuration updated!" in ok(agent, "connect", "ca", "set-config", "--config-file", str(tmp_path / "ca.json"))
    assert json.loads(ok(agent, "connect", "ca", "get-config"))["Config"]["LeafCertTTL"] == "24h"
    (tmp_path / "bad.json").write_text(json.dumps({"Provider": "vault"}))
    assert "not supported" in one_line_error(run(agent, "connect", "ca", "set-config", "--config-file",
                                                 str(tmp_path / "bad.json")))


def test_tls_ca_and_certs_verify_with_openssl(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    env_run = lambda *a: subprocess.run([*CLI, *a], cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    assert env_run("tls", "ca", "create").returncode == 0
    for kind in ("--server", "--client", "--cli"):
        assert env_run("tls", "cert", "create", kind, "--additional-dnsname", "extra.example").returncode == 0
    for name in ("dc1-server-proconsul-0.pem", "dc1-client-proconsul-0.pem", "dc1-cli-proconsul-0.pem"):
        out = subprocess.run(["openssl", "verify", "-CAfile", "proconsul-agent-ca.pem", name], cwd=tmp_path,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", "dc1-server-proconsul-0.pem"], cwd=tmp_path,
                          capture_output=True, text=True).stdout
    assert "DNS:server.dc1.mesh" in text and "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    again = env_run("tls", "ca", "create")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert env_run("tls", "cert", "create").returncode == 1


def test_connect_gateway_flags_and_registration(agent: AgentProcess, tmp_path: Path) -> None:
    """`connect gateway -KIND`: exactly one kind, bad flags one line (every flag check: test_gateway_config.py);
    -register as Consul's `connect envoy -register` (a real gateway process, its registration read back)."""
    import os
    import signal

    from support import free_port

    for args, words in ((["-service", "x"], "exactly one of -ingress, -terminating or -mesh"),
                        (["-ingress", "-mesh", "-service", "x"], "(not -ingress and -mesh)"),
                        (["-mesh", "-admin-bind", "nowhere"], "-admin-bind 'nowhere' must be HOST:PORT")):
        assert words in one_line_error(run(agent, "connect", "gateway", *args)), args
    assert "are for gateways" in one_line_error(run(agent, "connect", "proxy", "-service", "x", "-register"))
    usage = ok(None, "connect", "gateway", "--help", env={"COLUMNS": "200"})
    assert all(f in usage for f in ("-ingress", "-terminating", "-mesh", "-register", "-wan-address",
                                    "-deregister-after-critical"))

    port, wan = free_port(), free_port()
    env = dict(os.environ, PROCONSUL_HTTP_ADDR=agent.addr)
    with open(tmp_path / "gw.log", "wb") as log:
        proc = subprocess.Popen([*CLI, "connect", "gateway", "-mesh", "-service", "cli-mgw", "-register", "-address",
                                 f"127.0.0.1:{port}", "-wan-address", f"127.0.0.1:{wan}",
                                 "-deregister-after-critical", "90m"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_for(lambda: agent.get("/v1/agent/service/cli-mgw")[0] == 200, 20, message="the gateway registered")
        svc = agent.get("/v1/agent/service/cli-mgw")[1]
        assert svc["Kind"] == "mesh-gateway" and svc["Port"] == port
        assert svc["TaggedAddresses"]["wan"] == {"Address": "127.0.0.1", "Port": wan}
        checks = [c for c in agent.get("/v1/agent/checks")[1].values() if c["ServiceID"] == "cli-mgw"]
        assert [c["Name"] for c in checks] == ["mesh-gateway listening"]
        wait_for(lambda: agent.get("/v1/agent/checks")[1][checks[0]["CheckID"]]["Status"] == "passing", 20,
                 message="the gateway's TCP check to pass (it listens on -address)")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        agent.request("PUT", "/v1/agent/service/deregister/cli-mgw")
