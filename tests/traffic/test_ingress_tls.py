"""TLS on ingress-gateway listeners end to end: the gateway (a real process) serves its Connect CA leaf, whose
DNS SANs the agent fills in as Consul's does (`*.ingress.<domain>`, `*.ingress.<dc>.<domain>`, the entry's
Hosts); curl verifies it against the CA root, openssl s_client checks the version and cipher bounds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, ProxyProcess, mesh_service, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-ingress-tls")


def curl_tls(port: int, host: str, ca: str, path: str = "/") -> tuple[int, Any]:
    out = subprocess.run(["curl", "-s", "-m", "5", "--cacert", ca, "--resolve", f"{host}:{port}:127.0.0.1",
                          "-w", "\n%{http_code}", f"https://{host}:{port}{path}"],
                         capture_output=True, text=True, timeout=10).stdout
    body, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code or 0), body


def s_client(port: int, ca: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca,
                           "-verify_return_error", *args], input="", capture_output=True, text=True, timeout=10)


def entry(http: int, strict: int, hosts: list[str]) -> dict[str, Any]:
    return {"Kind": "ingress-gateway", "Name": "igt", "TLS": {"Enabled": True, "TLSMinVersion": "TLSv1_3"}, "Listeners": [
        {"Port": http, "Protocol": "http", "Services": [{"Name": "web", "Hosts": hosts}, {"Name": "api"}]},
        {"Port": strict, "Protocol": "http", "Services": [{"Name": "web"}],
         "TLS": {"Enabled": True, "TLSMaxVersion": "TLSv1_2",
                 "CipherSuites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]}}]}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ingress-tls")
    agent, backends = AgentProcess(tmp / "agent"), Backends()
    procs: list[ProxyProcess] = []
    try:
        agent.start()
        for name in ("web", "api"):
            procs.append(mesh_service(agent, tmp, name, backends.http(name), "http"))
            wait_passing(agent, name)
        http, strict = free_port(), free_port()
        status, body = agent.put("/v1/config", entry(http, strict, ["web.example.com"]))
        assert status == 200, body
        gw = ProxyProcess(agent, tmp, proxy_id="igt")
        gw.args = ["-gateway", "ingress", "-service", "igt", "-register", "-address", f"127.0.0.1:{free_port()}"]
        procs.append(gw.start())
        roots = agent.get("/v1/connect/ca/roots")[1]
        ca = tmp / "ca.pem"
        ca.write_text("\n".join(r["RootCert"] for r in roots["Roots"]))
        wait_for(lambda: curl_tls(http, "web.example.com", str(ca))[0] == 200, 15, message="HTTPS through the gateway")
        yield {"agent": agent, "gw": gw, "http": http, "strict": strict, "ca": str(ca), "tmp": tmp}
    finally:
        for p in procs:
            p.stop()
        agent.stop()
        backends.close()


def test_https_by_host_verified_against_the_connect_ca(mesh: dict[str, Any]) -> None:
    status, body = curl_tls(mesh["http"], "web.example.com", mesh["ca"], "/hello")
    assert status == 200 and body["backend"] == "web" and body["path"] == "/hello"
    for host in ("api.ingress.mesh", "api.ingress.dc1.mesh"):  # the wildcard SANs and Consul's default hosts
        status, body = curl_tls(mesh["http"], host, mesh["ca"])
        assert status == 200 and body["backend"] == "api", host
    status, _ = curl_tls(mesh["http"], "other.example.net", mesh["ca"])
    assert status == 0, "a name the certificate does not carry fails verification"


def test_certificate_names_and_no_plain_text(mesh: dict[str, Any]) -> None:
    res = s_client(mesh["http"], mesh["ca"], "-servername", "web.example.com", "-showcerts")
    assert "Verify return code: 0 (ok)" in res.stdout, res.stdout + res.stderr
    pem = res.stdout[res.stdout.index("-----BEGIN CERTIFICATE-----"):res.stdout.index("-----END CERTIFICATE-----")
                     + len("-----END CERTIFICATE-----")]
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem, capture_output=True,
                          text=True, timeout=10).stdout
    for name in ("DNS:*.ingress.mesh", "DNS:*.ingress.dc1.mesh", "DNS:web.example.com", "/svc/igt"):
        assert name in sans, sans
    out = subprocess.run(["curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://127.0.0.1:{mesh['http']}/"], capture_output=True, text=True, timeout=10).stdout
    assert out != "200", "a TLS listener does not answer plain HTTP"


def test_versions_and_cipher_suites(mesh: dict[str, Any]) -> None:
    ca, http, strict = mesh["ca"], mesh["http"], mesh["strict"]
    assert s_client(http, ca, "-tls1_3").returncode == 0
    assert s_client(http, ca, "-tls1_2").returncode != 0, "the entry's TLSMinVersion TLSv1_3"
    assert s_client(strict, ca, "-tls1_3").returncode != 0, "the listener's own block: TLSMaxVersion TLSv1_2"
    ok = s_client(strict, ca, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert ok.returncode == 0 and "ECDHE-ECDSA-AES128-GCM-SHA256" in ok.stdout
    assert s_client(strict, ca, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384").returncode != 0
    failed = [x for x in mesh["gw"].admin("/metrics").splitlines()
              if x.startswith('proconsul_proxy_tls_handshake_failures_total{service="igt"')]
    assert sum(int(x.rsplit(" ", 1)[1]) for x in failed) >= 3, "the refused handshakes are counted by reason"


def test_new_hosts_get_a_new_certificate(mesh: dict[str, Any]) -> None:
    agent = mesh["agent"]
    assert agent.put("/v1/config", entry(mesh["http"], mesh["strict"], ["web.example.com", "shop.example.com"])
                     )[0] == 200
    wait_for(lambda: curl_tls(mesh["http"], "shop.example.com", mesh["ca"])[0] == 200, 10,
             message="a leaf carrying the new host")
    assert curl_tls(mesh["http"], "web.example.com", mesh["ca"])[0] == 200


@pytest.mark.parametrize(("tls", "where", "words"), [
    ({"Enabled": True, "SDS": {"ClusterName": "sds", "CertResource": "c"}}, "TLS.SDS", "SDS is not supported"),
    ({"Enabled": True, "TLSMinVersion": "TLSv1_3", "CipherSuites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]},
     "TLS.CipherSuites", "only applicable to connections negotiated with TLS 1.2 or earlier"),
    ({"Enabled": True, "TLSMinVersion": "TLSv9"}, "TLS.TLSMinVersion", "unsupported TLS version"),
    ({"Enabled": True, "TLSMinVersion": "TLSv1_3", "TLSMaxVersion": "TLSv1_2"}, "TLS.TLSMaxVersion",
     "less than the configured min version"),
    ({"Enabled": True, "CipherSuites": ["TLS_RSA_WITH_RC4_128_SHA"]}, "TLS.CipherSuites[0]", "unsupported cipher"),
])
def test_bad_tls_settings_are_refused(mesh: dict[str, Any], tls: dict[str, Any], where: str, words: str) -> None:
    status, body, _ = mesh["agent"].request("PUT", "/v1/config", {"Kind": "ingress-gateway", "Name": "bad", "TLS": tls,
                                                                  "Listeners": [{"Port": 1, "Protocol": "http",
                                                                                 "Services": [{"Name": "web"}]}]})
    assert status == 400 and f"ingress-gateway 'bad': {where}" in body and words in body, body


def test_wildcard_host_refused_with_tls(mesh: dict[str, Any]) -> None:
    status, body, _ = mesh["agent"].request("PUT", "/v1/config", {
        "Kind": "ingress-gateway", "Name": "bad", "TLS": {"Enabled": True},
        "Listeners": [{"Port": 1, "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["*"]}]}]})
    assert status == 400 and "Host '*' is not allowed when TLS is enabled" in body, body


def test_plain_leaves_carry_no_ingress_names(mesh: dict[str, Any]) -> None:
    leaf = mesh["agent"].get("/v1/agent/connect/ca/leaf/web")[1]
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=leaf["CertPEM"],
                          capture_output=True, text=True, timeout=10).stdout
    assert "ingress" not in sans and "DNSSANs" not in leaf
    assert Path(mesh["ca"]).exists()
