"""The CA, checked with the real `openssl verify`: leaves, SANs, refusals, rotation by cross-signing."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from proconsul.connect import ca
from proconsul.connect.errors import InvalidCAConfig, InvalidCSR, InvalidSpiffeID
from proconsul.connect.spiffe import AgentID, ServiceID, parse

TD = "11111111-2222-3333-4444-555555555555.mesh"
NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def openssl_verify(tmp: Path, leaf_pem: str, trusted: list[str], untrusted: list[str] | None = None) -> bool:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian openssl; make test installs it)")
    (tmp / "ca.pem").write_text("".join(trusted))
    leaf_only = leaf_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    (tmp / "leaf.pem").write_text(leaf_only)
    cmd = ["openssl", "verify", "-attime", str(int(NOW.timestamp()) + 60), "-CAfile", str(tmp / "ca.pem")]
    if untrusted:
        (tmp / "chain.pem").write_text("".join(untrusted))
        cmd += ["-untrusted", str(tmp / "chain.pem")]
    out = subprocess.run([*cmd, str(tmp / "leaf.pem")], capture_output=True, text=True)
    return out.returncode == 0 and "OK" in out.stdout


def leaf_for(root: ca.Root, service: str = "web", trust_domain: str = TD, expect: str | None = "web") -> dict:
    key = ca.generate_key()
    csr = ca.make_csr(ServiceID(trust_domain, "default", "dc1", service).uri, key, service)
    return ca.sign_leaf(csr, root, TD, NOW, 1001, expect_service=expect)


def test_leaf_verifies_and_has_exact_sans(tmp_path: Path) -> None:
    root = ca.generate_root(TD, NOW, 1)
    leaf = leaf_for(root)
    assert openssl_verify(tmp_path, leaf["CertPEM"], [root.row["RootCert"]])
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/ns/default/dc/dc1/svc/web"]
    assert san.get_values_for_type(x509.DNSName) == ["web.svc.default.11111111.mesh"]
    assert cert.not_valid_after_utc - NOW == dt.timedelta(hours=72)
    assert leaf["ServiceURI"] == f"spiffe://{TD}/ns/default/dc/dc1/svc/web" and leaf["Service"] == "web"
    assert root.row["PrivateKeyType"] == "ec" and root.row["PrivateKeyBits"] == 256
    assert x509.load_pem_x509_certificate(root.row["RootCert"].encode()).not_valid_after_utc - NOW > dt.timedelta(
        days=3649)


def test_agent_identity_leaf(tmp_path: Path) -> None:
    root = ca.generate_root(TD, NOW, 1)
    uri = AgentID(TD, "dc1", "node-1").uri
    leaf = ca.sign_leaf(ca.make_csr(uri, ca.generate_key(), "node-1"), root, TD, NOW, 5)
    assert leaf["AgentURI"] == uri and openssl_verify(tmp_path, leaf["CertPEM"], [root.row["RootCert"]])


def test_csr_refusals() -> None:
    root = ca.generate_root(TD, NOW, 1)
    with pytest.raises(InvalidCSR, match="not for service 'web'"):
        leaf_for(root, service="db", expect="web")
    with pytest.raises(InvalidCSR, match="trust domain"):
        leaf_for(root, trust_domain="other.mesh")
    with pytest.raises(InvalidCSR, match="does not parse"):
        ca.sign_leaf("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", root, TD, NOW, 2)


def test_operator_config_refusals() -> None:
    a, b = ca.generate_root(TD, NOW, 1), ca.generate_root(TD, NOW, 2)
    with pytest.raises(InvalidCAConfig, match="does not match"):
        ca.root_from_config(a.key_pem, b.row["RootCert"])
    with pytest.raises(InvalidCAConfig, match="PrivateKey does not parse"):
        ca.root_from_config("garbage", a.row["RootCert"])
    with pytest.raises(InvalidCAConfig, match="RootCert does not parse"):
        ca.root_from_config(a.key_pem, "garbage")
    leaf = leaf_for(a)
    with pytest.raises(InvalidCAConfig):
        ca.root_from_config(a.key_pem, leaf["CertPEM"])  # a leaf is not a CA (and the key does not match)
    assert ca.root_from_config(a.key_pem, a.row["RootCert"]).row["ID"] == a.row["ID"]


def test_rotation_keeps_both_generations_verifying(tmp_path: Path) -> None:
    old = ca.generate_root(TD, NOW, 1)
    old_leaf = leaf_for(old)
    new = ca.generate_root(TD, NOW, 2)
    cross = ca.cross_sign(new, old, NOW, 3)
    new = ca.Root(dict(new.row, IntermediateCerts=[cross]), new.key_pem)
    new_leaf = leaf_for(new)
    bundle = [old.row["RootCert"], new.row["RootCert"]]
    assert openssl_verify(tmp_path, old_leaf["CertPEM"], bundle), "old leaves verify against the bundle"
    assert openssl_verify(tmp_path, new_leaf["CertPEM"], bundle), "new leaves verify against the bundle"
    # A peer that still trusts only the old root verifies a new leaf through the cross-signed cert.
    assert new_leaf["CertPEM"].count("BEGIN CERTIFICATE") == 2, "leaves carry the cross-signed intermediate"
    assert openssl_verify(tmp_path, new_leaf["CertPEM"], [old.row["RootCert"]], [cross])
    assert not openssl_verify(tmp_path, new_leaf["CertPEM"], [old.row["RootCert"]]), "not without the bridge"
    assert ca.verify_signed_by(cross, old.row["RootCert"])


def test_renewal_point() -> None:
    leaf = leaf_for(ca.generate_root(TD, NOW, 1))["CertPEM"]
    assert not ca.leaf_needs_renewal(leaf, NOW + dt.timedelta(hours=40))
    assert ca.leaf_needs_renewal(leaf, NOW + dt.timedelta(hours=44), jitter=0.0)
    assert not ca.leaf_needs_renewal(leaf, NOW + dt.timedelta(hours=60), jitter=0.99)
    assert ca.leaf_needs_renewal(leaf, NOW + dt.timedelta(hours=66), jitter=0.99)


@pytest.mark.parametrize("bad", ["", "http://td.mesh/ns/default/dc/dc1/svc/web", "spiffe://td.mesh/ns/default/svc/web",
                                 "spiffe:///ns/default/dc/dc1/svc/web", "spiffe://td.mesh:8/ns/default/dc/dc1/svc/web",
                                 "spiffe://td.mesh/ns/default/dc/dc1/svc/", "spiffe://td.mesh/ns/default/dc/dc1/svc/a b"])
def test_bad_spiffe_ids(bad: str) -> None:
    with pytest.raises(InvalidSpiffeID):
        parse(bad)
