"""Connect's HTTP API against a real dev agent."""

from __future__ import annotations

import threading
import time

import pytest
from support import AgentProcess, wait_for

from proconsul.connect import ca


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    wait_for(lambda: shared_dev_agent.get("/v1/connect/ca/roots")[1]["Roots"], message="the CA to bootstrap")
    return shared_dev_agent


def trust_domain(agent: AgentProcess) -> str:
    return agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]


def test_roots_and_configuration(agent: AgentProcess) -> None:
    roots = agent.get("/v1/connect/ca/roots")[1]
    assert roots["TrustDomain"].endswith(".mesh") and len(roots["Roots"]) >= 1
    active = next(r for r in roots["Roots"] if r["Active"])
    assert active["ID"] == roots["ActiveRootID"] and "SigningKey" not in active
    assert "PRIVATE KEY" not in str(roots), "no private key in the roots answer"
    assert agent.get("/v1/agent/connect/ca/roots")[1]["ActiveRootID"] == roots["ActiveRootID"]
    cfg = agent.get("/v1/connect/ca/configuration")[1]
    assert cfg["Provider"] == "consul" and cfg["Config"]["LeafCertTTL"] == "72h"


def test_leaf_is_cached_and_verifies(agent: AgentProcess) -> None:
    status, leaf, headers = agent.request("GET", "/v1/agent/connect/ca/leaf/web")
    assert status == 200 and leaf["Service"] == "web" and "PRIVATE KEY" in leaf["PrivateKeyPEM"]
    assert leaf["ServiceURI"] == f"spiffe://{trust_domain(agent)}/ns/default/dc/dc1/svc/web"
    again = agent.get("/v1/agent/connect/ca/leaf/web")[1]
    assert again["SerialNumber"] == leaf["SerialNumber"], "the agent caches its leaves"
    root = next(r for r in agent.get("/v1/connect/ca/roots")[1]["Roots"] if r["Active"])
    assert ca.verify_signed_by(leaf["CertPEM"], root["RootCert"])


def test_roots_as_a_pem_bundle_that_openssl_verifies_a_leaf_with(agent: AgentProcess, tmp_path) -> None:  # noqa: ANN001
    """`?pem=true` (Consul's): every root and intermediate as `application/pem-certificate-chain`, the file an
    application trusts mesh certificates with; `openssl verify` accepts a leaf against it."""
    import shutil
    import subprocess

    status, bundle, headers = agent.request("GET", "/v1/connect/ca/roots?pem=true")
    assert status == 200 and headers["Content-Type"].startswith("application/pem-certificate-chain"), headers
    assert int(headers["X-Consul-Index"]) >= 1
    roots = agent.get("/v1/connect/ca/roots")[1]["Roots"]
    assert bundle.count("BEGIN CERTIFICATE") == sum(1 + len(r.get("IntermediateCerts") or []) for r in roots)
    assert all(r["RootCert"].strip() in bundle for r in roots) and "PRIVATE KEY" not in bundle
    assert agent.request("GET", "/v1/connect/ca/roots?pem=0")[2]["Content-Type"].startswith("application/json")
    status, body, _ = agent.request("GET", "/v1/connect/ca/roots?pem=maybe")
    assert status == 400 and "'pem'" in body, body
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian openssl)")
    (tmp_path / "ca.pem").write_text(bundle)
    (tmp_path / "leaf.pem").write_text(agent.get("/v1/agent/connect/ca/leaf/web")[1]["CertPEM"])
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and ": OK" in verified.stdout, verified.stdout + verified.stderr


def test_rotation_wakes_leaf_watchers_and_cross_signs(agent: AgentProcess) -> None:
    leaf = agent.get("/v1/agent/connect/ca/leaf/rot")[1]
    old_active = agent.get("/v1/connect/ca/roots")[1]["ActiveRootID"]
    new_root = ca.generate_root(trust_domain(agent), __import__("datetime").datetime.now(
        __import__("datetime").UTC), 77)
    body = {"Provider": "consul", "Config": {"PrivateKey": new_root.key_pem, "RootCert": new_root.row["RootCert"]}}
    timer = threading.Timer(0.3, lambda: agent.put("/v1/connect/ca/configuration", body))
    timer.start()
    t0 = time.monotonic()
    status, fresh, _ = agent.request("GET", f"/v1/agent/connect/ca/leaf/rot?index={leaf['ModifyIndex']}&wait=30s")
    timer.join()
    assert status == 200 and time.monotonic() - t0 < 10 and fresh["SerialNumber"] != leaf["SerialNumber"]
    roots = agent.get("/v1/connect/ca/roots")[1]
    assert roots["ActiveRootID"] == new_root.row["ID"] != old_active
    assert {r["ID"] for r in roots["Roots"]} >= {old_active, new_root.row["ID"]}, "the old root stays in the bundle"
    assert fresh["CertPEM"].count("BEGIN CERTIFICATE") == 2, "new leaves carry the cross-signed root"
    status, text = agent.put("/v1/connect/ca/configuration", {"Config": {"PrivateKey": new_root.key_pem,
                                                                         "RootCert": leaf["CertPEM"]}})
    assert status == 400 and "does not match" in text
    assert agent.get("/v1/connect/ca/roots")[1]["ActiveRootID"] == new_root.row["ID"], "nothing half changed"


def test_intentions_crud_and_authorize_sees_changes_fast(agent: AgentProcess) -> None:
    td = trust_domain(agent)
    uri = f"spiffe://{td}/ns/default/dc/dc1/svc/frontend"

    def authorized() -> bool:
        return agent.request("POST", "/v1/agent/connect/authorize",
                             {"Target": "backend", "ClientCertURI": uri})[1]["Authorized"]

    assert authorized(), "dev mode: allow by default"
    status, out = agent.request("POST", "/v1/connect/intentions",
                                {"SourceName": "frontend", "DestinationName": "backend", "Action": "deny",
                                 "Meta": {"team": "a"}})[:2]
    assert status == 200
    ixn_id = out["ID"]
    t0 = time.monotonic()
    wait_for(lambda: not authorized(), 1.0, 0.01, "authorize to see the deny")
    assert time.monotonic() - t0 < 1.0
    got = agent.get(f"/v1/connect/intentions/{ixn_id}")[1]
    assert got["Action"] == "deny" and got["Meta"] == {"team": "a"} and got["Precedence"] == 9
    assert agent.get("/v1/connect/intentions/exact?source=frontend&destination=backend")[1]["ID"] == ixn_id
    assert agent.put("/v1/connect/intentions/exact?source=frontend&destination=backend", {"Action": "allow"})[0] == 200
    wait_for(authorized, 1.0, 0.01, "authorize to see the allow")
    assert agent.get("/v1/connect/intentions/check?source=frontend&destination=backend")[1] == {"Allowed": True}
    matched = agent.get("/v1/connect/intentions/match?by=destination&name=backend")[1]["backend"]
    assert [m["SourceName"] for m in matched] == ["frontend"]
    entry = agent.get("/v1/config/service-intentions/backend")[1]
    assert entry["Sources"][0]["Name"] == "frontend" and entry["Sources"][0]["Action"] == "allow"
    assert agent.request("DELETE", f"/v1/connect/intentions/{ixn_id}")[0] == 200
    assert agent.get(f"/v1/connect/intentions/{ixn_id}")[0] == 404


def test_config_entry_route_to_intentions(agent: AgentProcess) -> None:
    body = {"Kind": "service-intentions", "Name": "ledger",
            "Sources": [{"Name": "*", "Action": "deny"}, {"Name": "billing", "Action": "allow"}]}
    assert agent.put("/v1/config", body)[0] == 200
    ixns = [i for i in agent.get("/v1/connect/intentions")[1] if i["DestinationName"] == "ledger"]
    assert sorted((i["SourceName"], i["Action"]) for i in ixns) == [("*", "deny"), ("billing", "allow")]
    assert agent.get("/v1/connect/intentions/check?source=other&destination=ledger")[1] == {"Allowed": False}
    status, text = agent.put("/v1/config", {"Kind": "service-intentions", "Name": "x", "Sources": [{"Name": "a"}]})
    assert status == 400 and "Action is required" in text


def test_bad_input(agent: AgentProcess) -> None:
    cases = [
        ("POST", "/v1/connect/intentions", {"SourceName": "a", "DestinationName": "b", "Action": "maybe"}, "allow"),
        ("POST", "/v1/connect/intentions", {"SourceName": "a"}, "DestinationName"),
        ("POST", "/v1/agent/connect/authorize", {"Target": "b"}, "ClientCertURI"),
        ("PUT", "/v1/connect/ca/configuration", {"Provider": "vault"}, "not supported"),
        ("PUT", "/v1/connect/ca/configuration", {"Config": {"PrivateKey": "x"}}, "together"),
        ("PUT", "/v1/connect/ca/configuration", {"Config": {"PrivateKey": "x", "RootCert": "y"}}, "does not parse"),
        ("PUT", "/v1/connect/ca/configuration", {"Config": {"LeafCertTTL": "1s"}}, "LeafCertTTL"),
        ("GET", "/v1/connect/intentions/match?by=sideways&name=x", None, "by must be"),
        ("GET", "/v1/connect/intentions/check?source=a", None, "destination"),
    ]
    for method, path, body, message in cases:
        status, text, _ = agent.request(method, path, body)
        assert status == 400 and message in str(text), (path, body, status, text)
    ok, reason = agent.request("POST", "/v1/agent/connect/authorize",
                               {"Target": "b", "ClientCertURI": "spiffe://evil.mesh/ns/default/dc/dc1/svc/a"})[1].values()
    assert ok is False and "external trust domain" in reason
    assert "Traceback" not in agent.log()


def test_rotation_to_a_root_made_by_openssl(dev_agent, tmp_path) -> None:  # noqa: ANN001
    """An operator's own root, made with `openssl req -x509` (which adds an Authority Key Identifier):
    the rotation is accepted, cross-signed by the old root, and new leaves verify against it."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        import pytest

        pytest.skip("openssl is not installed (Debian openssl)")
    key, cert = tmp_path / "root-key.pem", tmp_path / "root.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=Operator Root",
                           "-addext", "basicConstraints=critical,CA:true",
                           "-addext", "keyUsage=critical,keyCertSign,cRLSign"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    old = dev_agent.get("/v1/connect/ca/roots")[1]
    status, body = dev_agent.put("/v1/connect/ca/configuration", {
        "Provider": "consul", "Config": {"PrivateKey": key.read_text(), "RootCert": cert.read_text()}})
    assert status == 200, body
    roots = dev_agent.get("/v1/connect/ca/roots")[1]
    assert roots["ActiveRootID"] != old["ActiveRootID"] and len(roots["Roots"]) == 2
    active = next(r for r in roots["Roots"] if r["Active"])
    assert len(active["IntermediateCerts"]) == 1  # cross-signed by the old root
    leaf = dev_agent.get("/v1/agent/connect/ca/leaf/after-byo")[1]
    (tmp_path / "leaf.pem").write_text(leaf["CertPEM"].split("-----END CERTIFICATE-----")[0] +
                                       "-----END CERTIFICATE-----\n")
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(cert), str(tmp_path / "leaf.pem")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bridge = tmp_path / "bridge.pem"
    bridge.write_text(active["IntermediateCerts"][0])
    (tmp_path / "old.pem").write_text(old["Roots"][0]["RootCert"])
    via_old = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "old.pem"), "-untrusted", str(bridge),
                              str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    assert via_old.returncode == 0, via_old.stdout + via_old.stderr  # peers trusting only the old root
