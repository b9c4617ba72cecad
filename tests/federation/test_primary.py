"""primary_datacenter: the primary owns intentions, config entries and the CA root; secondaries
replicate them, forward their writes to it, and sign leaves with an intermediate the primary signed."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess, wait_for
from support_federation import Federation, start_federation, stop_federation

pytestmark = pytest.mark.xdist_group("federation")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = start_federation(tmp_path_factory.mktemp("primary"), primary=True)
    try:
        yield f
    finally:
        stop_federation(f)


def intentions(agent: AgentProcess) -> set[tuple[str, str, str]]:
    return {(i["SourceName"], i["DestinationName"], i["Action"])
            for i in agent.get("/v1/connect/intentions?stale")[1]}


def secondaries(fed: Federation) -> list[AgentProcess]:
    return [*fed.dc2.servers, fed.d]


def test_intention_created_in_the_primary_reaches_every_secondary_within_a_second(fed: Federation) -> None:
    assert fed.a.request("POST", "/v1/connect/intentions",
                         {"SourceName": "web", "DestinationName": "db", "Action": "allow"})[0] == 200
    started = time.monotonic()
    for agent in secondaries(fed):
        wait_for(lambda a=agent: ("web", "db", "allow") in intentions(a), 5, message=f"{agent.addr} to replicate")
    assert time.monotonic() - started < 1.0
    # Secondaries answer intention checks from their replica.
    check = fed.dc2.servers[1].get("/v1/connect/intentions/check?source=web&destination=db&stale")[1]
    assert check == {"Allowed": True}


def test_writes_in_a_secondary_go_to_the_primary_and_come_back(fed: Federation) -> None:
    c1_dc2 = fed.dc2.servers[2]
    status, body = c1_dc2.request("POST", "/v1/connect/intentions",
                                  {"SourceName": "api", "DestinationName": "db", "Action": "deny"})[:2]
    assert status == 200 and body["ID"]
    assert ("api", "db", "deny") in intentions(fed.a)  # written in the primary, synchronously
    wait_for(lambda: ("api", "db", "deny") in intentions(fed.d), 5, message="dc3 to replicate dc2's write")
    assert fed.d.put("/v1/config", {"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"})[0] == 200
    assert fed.a.get("/v1/config/service-defaults/db")[1]["Protocol"] == "tcp"
    wait_for(lambda: fed.dc2.servers[0].get("/v1/config/service-defaults/db?stale")[0] == 200, 5,
             message="dc2 to replicate dc3's config entry")
    # Deletes too.
    assert fed.dc2.servers[0].request("DELETE", "/v1/config/service-defaults/db")[0] == 200
    assert fed.a.get("/v1/config/service-defaults/db")[0] == 404
    wait_for(lambda: fed.d.get("/v1/config/service-defaults/db?stale")[0] == 404, 5, message="the delete to replicate")


def test_secondaries_share_the_primarys_roots_and_sign_with_their_own_intermediate(fed: Federation,
                                                                                   tmp_path: Path) -> None:
    primary_roots = fed.a.get("/v1/connect/ca/roots")[1]

    def same_roots() -> bool:
        r = fed.dc2.servers[0].get("/v1/connect/ca/roots?stale")[1]
        return r["TrustDomain"] == primary_roots["TrustDomain"] and r["ActiveRootID"] == primary_roots["ActiveRootID"]

    wait_for(same_roots, 10, message="dc2 to follow dc1's CA")
    leaf = fed.dc2.servers[0].get("/v1/agent/connect/ca/leaf/web")[1]
    assert leaf["ServiceURI"].startswith(f"spiffe://{primary_roots['TrustDomain']}/ns/default/dc/dc2/svc/web")
    parts = [p + "-----END CERTIFICATE-----\n" for p in leaf["CertPEM"].split("-----END CERTIFICATE-----")
             if "BEGIN" in p]
    assert len(parts) == 2  # the leaf, then dc2's intermediate
    dc1_leaf = fed.a.get("/v1/agent/connect/ca/leaf/db")[1]
    assert dc1_leaf["CertPEM"].count("BEGIN CERTIFICATE") == 1  # the primary signs with its root
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    (tmp_path / "bundle.pem").write_text("".join(r["RootCert"] for r in primary_roots["Roots"]))
    (tmp_path / "leaf.pem").write_text(parts[0])
    (tmp_path / "inter.pem").write_text(parts[1])
    res = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem"), "-untrusted",
                          str(tmp_path / "inter.pem"), str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith(": OK"), res.stdout + res.stderr
    # …and without the intermediate it does not verify: the leaf really is signed by dc2's intermediate.
    res = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem"), str(tmp_path / "leaf.pem")],
                         capture_output=True, text=True)
    assert res.returncode != 0
    # dc3's intermediate is another one.
    leaf3 = fed.d.get("/v1/agent/connect/ca/leaf/web")[1]["CertPEM"]
    assert leaf3.split("-----END CERTIFICATE-----")[1] != parts[1].split("-----END CERTIFICATE-----")[0]


def test_wan_cut_secondary_serves_itself_and_catches_up(fed: Federation) -> None:
    dc2 = fed.dc2.servers
    wait_for(lambda: all(("web", "db", "allow") in intentions(s) for s in dc2), 10,
             message=f"every dc2 server to hold the replicated intention before the cut "
                     f"(dc1: {intentions(fed.a)}, dc2: {[intentions(s) for s in dc2]})")
    fed.a.put("/v1/agent/debug/partition", {"Block": ["dc2"]})
    for s in dc2:
        s.put("/v1/agent/debug/partition", {"Block": ["dc1"]})
    try:
        # dc2 keeps answering from its replica and signing leaves with its intermediate…
        assert ("web", "db", "allow") in intentions(dc2[0])
        assert dc2[1].get("/v1/agent/connect/ca/leaf/cut-svc")[0] == 200
        assert dc2[0].request("PUT", "/v1/kv/cut", raw=b"local")[1] is True
        # …while writes of what the primary owns fail fast, in Consul's words.
        started = time.monotonic()
        status, body = dc2[0].request("POST", "/v1/connect/intentions",
                                      {"SourceName": "x", "DestinationName": "db", "Action": "deny"})[:2]
        assert (status, body) == (500, "Remote DC has no server currently reachable\n")
        assert time.monotonic() - started < 1.0
        assert fed.a.request("POST", "/v1/connect/intentions",
                             {"SourceName": "during-cut", "DestinationName": "db", "Action": "deny"})[0] == 200
        written = time.time()
        leader = fed.dc2.leader()

        def failed_since_write() -> bool:
            reps = leader.get("/v1/operator/federation")[1]["Replication"]
            return any(r["Name"] == "config-entries" and r["LastErrorAt"] > written for r in reps)

        # The replicator tried after the write and failed: the cut holds (nothing leaked through).
        wait_for(failed_since_write, 10, message="dc2's replicator to fail against the cut")
        assert ("during-cut", "db", "deny") not in intentions(dc2[0])
        view = leader.get("/v1/operator/federation")[1]
        dc1 = next(d for d in view["Datacenters"] if d["Datacenter"] == "dc1")
        assert dc1["Primary"] and not dc1["Reachable"]
    finally:
        fed.a.put("/v1/agent/debug/partition", {"Block": []})
        for s in dc2:
            s.put("/v1/agent/debug/partition", {"Block": []})
    wait_for(lambda: all(("during-cut", "db", "deny") in intentions(s) for s in dc2), 15,
             message="dc2 to catch up after the cut")
    reps = fed.dc2.leader().get("/v1/operator/federation")[1]["Replication"]
    assert reps[0]["Running"] and reps[0]["ReplicatedIndex"] > 0
