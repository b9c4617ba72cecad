"""HTTPS on the agent's API with certificates made by openssl: curl, openssl s_client, py-consul and the
CLI reach it; verify_incoming refuses clients without a certificate; HTTP can be turned off; unusable
certificate files stop the agent with one line."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

import consul
import pytest

from tests.support import AgentProcess, free_port, ok, one_line_error, run, wait_for

pytestmark = [pytest.mark.xdist_group("https"),
              pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0
                                 or subprocess.run(["which", "curl"], capture_output=True).returncode != 0,
                                 reason="needs openssl and curl (apt-get install openssl curl)")]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=Test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=other", "-keyout", "other.key", "-out", "other.pem", cwd=d)
    return d


def _config(workdir: Path, pki: Path, https_port: int, **extra: object) -> Path:
    conf = workdir / "tls.json"
    workdir.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps({"ports": {"https": https_port, "http": -1},
                                "tls": {"defaults": {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "server.pem"),
                                                     "key_file": str(pki / "server.key")},
                                        "https": {"verify_incoming": True}}, **extra}))
    return conf


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, pki: Path):
    workdir = tmp_path_factory.mktemp("https-agent")
    port = free_port()
    # The harness passes -http-port; a later -http-port=-1 wins, as ports.http = -1 would without the flag.
    a = AgentProcess(workdir, args=["-config-file", str(_config(workdir, pki, port)), "-http-port=-1"])
    a.https_port = port
    a.start_background()
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))

    def up() -> bool:
        assert a.proc.poll() is None, a.log()
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/status/leader", context=ctx, timeout=2) as r:
            return r.read() not in (b'""', b"")

    wait_for(up, 20, message="the HTTPS API")
    yield a
    a.stop()


def test_curl_with_a_client_certificate(agent, pki):
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
                          "--key", str(pki / "client.key"), f"https://127.0.0.1:{agent.https_port}/v1/agent/self"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["DebugConfig"]["HTTPPort"] == -1
    # verify_incoming: a client without a certificate is refused in the handshake.
    bare = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"),
                           f"https://127.0.0.1:{agent.https_port}/v1/agent/self"], capture_output=True, timeout=20)
    assert bare.returncode != 0
    # and plain HTTP is off (ports.http = -1): nothing answers on the HTTP port.
    plain = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{agent.http_port}/v1/agent/self"],
                           capture_output=True, timeout=20)
    assert plain.returncode != 0


def test_openssl_s_client_sees_the_agents_certificate(agent, pki):
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{agent.https_port}", "-CAfile",
                          str(pki / "ca.pem"), "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"),
                          "-verify_return_error", "-brief"], input="", capture_output=True, text=True, timeout=20)
    text = out.stdout + out.stderr
    assert "Verification: OK" in text or "Verify return code: 0 (ok)" in text, text
    assert "CN = server" in text or "CN=server" in text


def test_py_consul_and_the_cli_over_https(agent, pki):
    c = consul.Consul(port=agent.https_port, scheme="https", verify=str(pki / "ca.pem"),
                      cert=(str(pki / "client.pem"), str(pki / "client.key")))
    c.kv.put("tls/x", "1")
    assert c.kv.get("tls/x")[1]["Value"] == b"1"
    env = {"CONSUL_HTTP_ADDR": f"https://127.0.0.1:{agent.https_port}"}
    out = ok(None, "kv", "get", "tls/x", "-ca-file", str(pki / "ca.pem"), "-client-cert", str(pki / "client.pem"),
             "-client-key", str(pki / "client.key"), env=env)
    assert out.strip() == "1"
    line = one_line_error(run(None, "kv", "get", "tls/x", "-ca-file", str(pki / "other.pem"), env=env))
    assert "TLS with the agent" in line


def test_unusable_certificate_stops_the_agent_with_one_line(tmp_path, pki):
    conf = _config(tmp_path, pki, free_port())
    data = json.loads(conf.read_text())
    data["tls"]["https"]["key_file"] = str(pki / "other.key")  # does not match server.pem
    conf.write_text(json.dumps(data))
    res = run(None, "agent", "-dev", "-config-file", str(conf), "-http-port", str(free_port()),
              "-dns-port", "-1", "-server-port", str(free_port()), "-serf-lan-port", str(free_port()))
    line = one_line_error(res)
    assert "tls.https" in line and "key does not match" in line


def _handshake(port: int, pki: Path, *args: str) -> bool:
    """Whether `openssl s_client` completes a handshake with these options (and the client certificate)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki / "ca.pem"),
                          "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"), "-verify_return_error",
                          *args], input="", capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and "Cipher is (NONE)" not in out.stdout


@pytest.mark.parametrize(("tls", "allowed", "refused"), [
    ({"tls_min_version": "TLSv1_3"}, ["-tls1_3"], ["-tls1_2"]),
    ({"tls_cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"},
     ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"], ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]),
])
def test_tls_min_version_and_cipher_suites_as_openssl_sees_them(tmp_path, pki, tls, allowed, refused):
    """`tls.defaults.tls_min_version` / `tls_cipher_suites` (Consul's names) reach the HTTPS listener."""
    port = free_port()
    conf = _config(tmp_path, pki, port)
    data = json.loads(conf.read_text())
    data["tls"]["defaults"].update(tls)
    conf.write_text(json.dumps(data))
    a = AgentProcess(tmp_path / "agent", args=["-config-file", str(conf), "-http-port=-1"])
    a.start_background()
    try:
        wait_for(lambda: _handshake(port, pki, *allowed), 20, message=f"a handshake with {allowed}")
        assert not _handshake(port, pki, *refused), f"{refused} must be refused under {tls}"
    finally:
        a.stop()


@pytest.mark.parametrize(("tls", "says"), [
    ({"tls_min_version": "TLSv1_0"}, "tls.defaults.tls_min_version 'TLSv1_0' cannot be honoured"),
    ({"tls_min_version": "tls14"}, "must be TLSv1_2 or TLSv1_3"),
    ({"tls_cipher_suites": "TLS_RSA_WITH_RC4_128_SHA"}, "TLS_RSA_WITH_RC4_128_SHA is not a supported cipher suite"),
    ({"tls_min_version": "TLSv1_3", "tls_cipher_suites": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"},
     "tls_cipher_suites cannot be set with tls_min_version TLSv1_3"),
])
def test_tls_versions_and_suites_that_cannot_be_honoured_stop_the_agent(tmp_path, pki, tls, says):
    conf = _config(tmp_path, pki, free_port())
    data = json.loads(conf.read_text())
    data["tls"]["defaults"].update(tls)
    conf.write_text(json.dumps(data))
    assert says in one_line_error(run(None, "agent", "-dev", "-config-file", str(conf), "-http-port=-1"))


def test_enable_agent_tls_for_checks_presents_the_agents_certificate(tmp_path, pki):
    """A health endpoint that demands mutual TLS (openssl-made CA): with `enable_agent_tls_for_checks` the
    agent's HTTP check presents its certificate from tls.defaults and passes; without it, it is refused."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 — http.server's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.load_verify_locations(str(pki / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/health"
    agents = []
    try:
        for on in (True, False):
            conf = tmp_path / f"checks-{on}.json"
            conf.write_text(json.dumps({"enable_agent_tls_for_checks": on, "tls": {"defaults": {
                "ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
                "key_file": str(pki / "client.key")}}}))
            a = AgentProcess(tmp_path / f"agent-{on}", args=["-config-file", str(conf)])
            a.start()
            agents.append(a)
            assert a.put("/v1/agent/check/register", {"Name": "mtls", "HTTP": url, "Interval": "1s"})[0] == 200

        def status(a: AgentProcess) -> tuple[str, str]:
            check = a.get("/v1/agent/checks")[1].get("mtls") or {}
            return check.get("Status", ""), check.get("Output", "")

        wait_for(lambda: status(agents[0])[0] == "passing", 15, message="the check with the agent's certificate")
        wait_for(lambda: status(agents[1])[0] == "critical" and status(agents[1])[1], 15,
                 message="the check without it to be refused")
        assert "200" in status(agents[0])[1]
    finally:
        for a in agents:
            a.stop()
        httpd.shutdown()
