"""Promoting a secondary to primary when the primary is lost for good: restart its servers with
`primary_datacenter` naming it; it keeps the replicated intentions and config entries, takes a CA
root of its own (same trust domain), and leaves issued under the old primary keep verifying."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from support import AgentProcess, wait_for

pytestmark = pytest.mark.xdist_group("federation")


def pem_list(text: str) -> list[str]:
    return [p + "-----END CERTIFICATE-----\n" for p in text.split("-----END CERTIFICATE-----") if "BEGIN" in p]


def verify(tmp: Path, bundle: str, leaf_pem: str) -> bool:
    certs = pem_list(leaf_pem)
    (tmp / "bundle.pem").write_text(bundle)
    (tmp / "leaf.pem").write_text(certs[0])
    (tmp / "chain.pem").write_text("".join(certs[1:]) or certs[0])
    res = subprocess.run(["openssl", "verify", "-CAfile", str(tmp / "bundle.pem"), "-untrusted",
                          str(tmp / "chain.pem"), str(tmp / "leaf.pem")], capture_output=True, text=True)
    return res.returncode == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_promote_a_secondary_when_the_primary_is_gone(tmp_path: Path) -> None:
    conf = tmp_path / "wan.json"
    conf.write_text(json.dumps({"gossip_wan": {"probe_interval": "200ms", "probe_timeout": "100ms", "suspicion_mult": 5}}))
    a = AgentProcess(tmp_path / "a", args=["--node", "a", "--datacenter", "dc1", "--primary-datacenter", "dc1",
                                           "--config-file", str(conf)])
    common = ["--server", "--bootstrap-expect", "1", "--node", "b", "--datacenter", "dc2", "--data-dir",
              str(tmp_path / "b" / "data"), "--config-file", str(conf)]
    b = AgentProcess(tmp_path / "b", dev=False, args=[*common, "--primary-datacenter", "dc1",
                                                       "--retry-join-wan", f"127.0.0.1:{a.serf_wan_port}"])
    try:
        a.start()
        b.start()
        old_roots = a.get("/v1/connect/ca/roots")[1]
        wait_for(lambda: b.get("/v1/connect/ca/roots")[1]["ActiveRootID"] == old_roots["ActiveRootID"], 15,
                 message="dc2 to follow dc1's CA")
        assert a.request("POST", "/v1/connect/intentions",
                         {"SourceName": "web", "DestinationName": "db", "Action": "deny"})[0] == 200
        wait_for(lambda: b.get("/v1/connect/intentions")[1], 10, message="the intention to replicate")
        dc1_leaf = a.get("/v1/agent/connect/ca/leaf/web")[1]["CertPEM"]
        old_dc2_leaf = b.get("/v1/agent/connect/ca/leaf/api")[1]["CertPEM"]
        assert len(pem_list(old_dc2_leaf)) == 2  # signed by dc2's intermediate

        a.stop(signal.SIGKILL)  # the primary is lost for good
        status, body = b.request("POST", "/v1/connect/intentions",
                                 {"SourceName": "x", "DestinationName": "db", "Action": "deny"})[:2]
        assert (status, body) == (500, "Remote DC has no server currently reachable\n")

        b.stop()
        b.extra_args = [*common, "--primary-datacenter", "dc2"]
        b.start()

        def own_root() -> dict | None:
            roots = b.get("/v1/connect/ca/roots")[1]
            active = next(r for r in roots["Roots"] if r["ID"] == roots["ActiveRootID"])
            return roots if roots["ActiveRootID"] != old_roots["ActiveRootID"] and not active.get("SigningCert") \
                else None

        roots = wait_for(own_root, 15, message="the promoted primary to take a root of its own")
        assert roots["TrustDomain"] == old_roots["TrustDomain"]
        assert old_roots["ActiveRootID"] in {r["ID"] for r in roots["Roots"]}  # still trusted
        bundle = "".join(r["RootCert"] for r in roots["Roots"])
        new_leaf = wait_for(lambda: (lf := b.get("/v1/agent/connect/ca/leaf/api")[1]["CertPEM"]) != old_dc2_leaf
                            and lf, 10, message="leaves to be re-issued under the new root")
        assert len(pem_list(new_leaf)) == 1  # signed by the root itself now
        assert verify(tmp_path, bundle, new_leaf)
        assert verify(tmp_path, bundle, dc1_leaf)  # the lost primary's leaves still verify during the change
        assert verify(tmp_path, bundle, old_dc2_leaf)
        # What was replicated stays; writes are local now.
        assert [(i["SourceName"], i["Action"]) for i in b.get("/v1/connect/intentions")[1]] == [("web", "deny")]
        assert b.request("POST", "/v1/connect/intentions",
                         {"SourceName": "x", "DestinationName": "db", "Action": "allow"})[0] == 200
        assert b.get("/v1/connect/intentions/check?source=x&destination=db")[1] == {"Allowed": True}
        assert b.get("/v1/operator/federation")[1]["Replication"] == []
    finally:
        b.stop()
        a.stop()
