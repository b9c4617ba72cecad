"""ACL replication across datacenters, with real agent processes: dc1 is the primary; dc2 replicates policies,
roles and global tokens (enable_token_replication); dc3 replicates policies and roles and asks the primary for
global tokens, caching them for token_ttl. Writes of global objects made in a secondary go to the primary;
local tokens stay where they were made. With the primary gone, dc2 resolves from its replica and dc3 follows
its down_policy (extend-cache: a token it has used keeps working, one it has never seen is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import consul
import pytest
from support import AgentProcess, wait_for
from support_federation import WAN_FAST

pytestmark = pytest.mark.xdist_group("acl-replication")
MGMT, REPL = "repl-test-management", "0b5c6f0e-6d4a-4b43-9a51-5d0e8a6f3a21"
ZERO = "0001-01-01T00:00:00Z"


def _server(root: Path, dc: str, conf: dict, join_wan: AgentProcess | None = None) -> AgentProcess:
    path = root / f"{dc}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(WAN_FAST, primary_datacenter="dc1", **conf)))
    args = ["--server", "--bootstrap-expect", "1", "--node", f"{dc}-s", "--datacenter", dc, "--data-dir",
            str(root / dc / "data"), "--config-file", str(path)]
    if join_wan is not None:
        args += ["--retry-join-wan", f"127.0.0.1:{join_wan.serf_wan_port}"]
    return AgentProcess(root / dc, dev=False, args=args)


def _status(agent: AgentProcess) -> dict:
    return agent.get("/v1/acl/replication")[1]


def test_acl_replication_and_down_policy(tmp_path: Path):
    acl = {"enabled": True, "default_policy": "deny"}
    dc1 = _server(tmp_path, "dc1", {"acl": dict(acl, tokens={"initial_management": MGMT})})
    dc1.start()
    started = [dc1]
    try:
        p1 = consul.Consul(port=dc1.http_port, token=MGMT)
        wait_for(lambda: p1.acl.token.read_self(), message="the primary's management token")
        assert _status(dc1)["Enabled"] is False  # the primary replicates from no one
        repl_rules = ('acl = "write"\noperator = "write"\n'
                      'service_prefix "" { policy = "read" intentions = "read" }')
        repl = p1.acl.policy.create(name="replication", rules=repl_rules)
        p1.acl.token.create(secret_id=REPL, policies_id=[repl["ID"]], description="replication")
        app = p1.acl.policy.create(name="kv-app", rules='key_prefix "app/" { policy = "write" }')
        used = p1.acl.token.create(policies_id=[app["ID"]])["SecretID"]
        unused = p1.acl.token.create(policies_id=[app["ID"]])["SecretID"]

        dc2 = _server(tmp_path, "dc2", {"acl": dict(acl, enable_token_replication=True,
                                                   tokens={"replication": REPL})}, dc1)
        dc3 = _server(tmp_path, "dc3", {"acl": dict(acl, token_ttl="1s", down_policy="extend-cache",
                                                   tokens={"replication": REPL})}, dc1)
        for a in (dc2, dc3):
            a.start()
            started.append(a)

        # dc2 copies policies, roles and global tokens, and says so in Consul's fields.
        def caught_up(agent: AgentProcess, kind: str) -> dict | None:
            s = _status(agent)
            ok = (s["Enabled"] and s["Running"] and s["SourceDatacenter"] == "dc1" and s["ReplicationType"] == kind
                  and s["ReplicatedIndex"] > 0 and s["LastSuccess"] != ZERO)
            return s if ok and (kind == "policies" or s["ReplicatedTokenIndex"] > 0) else None

        s2 = wait_for(lambda: caught_up(dc2, "tokens"), 30, message="dc2's ACL replication")
        assert set(s2) == {"Enabled", "Running", "SourceDatacenter", "ReplicationType", "ReplicatedIndex",
                           "ReplicatedRoleIndex", "ReplicatedTokenIndex", "LastSuccess", "LastError",
                           "LastErrorMessage"}
        s3 = wait_for(lambda: caught_up(dc3, "policies"), 30, message="dc3's ACL replication")
        assert s3["ReplicatedTokenIndex"] == 0
        p2 = consul.Consul(port=dc2.http_port, token=MGMT)
        p3 = consul.Consul(port=dc3.http_port, token=MGMT)  # dc3 asks dc1 for the management token
        wait_for(lambda: {"kv-app", "replication"} <= {p["Name"] for p in p2.acl.policy.list()}, 20,
                 message="the primary's policies in dc2")
        assert {"kv-app", "replication"} <= {p["Name"] for p in p3.acl.policy.list()}

        # A global object written in a secondary is the primary's: it lands there and comes back.
        p2.acl.policy.create(name="made-in-dc2", rules='key "x" { policy = "read" }')
        assert "made-in-dc2" in {p["Name"] for p in p1.acl.policy.list()}
        wait_for(lambda: "made-in-dc2" in {p["Name"] for p in p3.acl.policy.list()}, 20,
                 message="dc2's policy replicated to dc3 through the primary")
        # A local token stays in its datacenter, and replication leaves it alone.
        local = p2.acl.token.create(policies_id=[app["ID"]], local=True)
        assert local["Local"] is True
        assert local["AccessorID"] not in {t["AccessorID"] for t in p1.acl.token.list()}
        p1.acl.policy.update(app["ID"], "kv-app", rules='key_prefix "app/" { policy = "write" }\n'
                                                        'key "shared" { policy = "read" }')
        wait_for(lambda: "shared" in p2.acl.policy.read(app["ID"])["Rules"], 20, message="the update in dc2")
        assert local["AccessorID"] in {t["AccessorID"] for t in p2.acl.token.list()}

        # The global tokens work in both secondaries (dc3 resolves `used` through the primary and caches it).
        assert consul.Consul(port=dc2.http_port, token=unused).kv.put("app/a", "1")
        assert consul.Consul(port=dc3.http_port, token=used).kv.put("app/b", "1")

        # The primary goes away.
        dc1.stop()
        wait_for(lambda: _status(dc3)["LastErrorMessage"], 30, message="dc3 to notice the primary is gone")
        s3 = _status(dc3)
        assert s3["LastError"] != ZERO and s3["Running"]
        # dc2 resolves every replicated token from its own copy.
        assert consul.Consul(port=dc2.http_port, token=unused).kv.put("app/c", "1")
        assert consul.Consul(port=dc2.http_port, token=local["SecretID"]).kv.put("app/d", "1")
        # dc3, extend-cache: the token it has used keeps working past its token_ttl; one it never saw is refused.
        assert consul.Consul(port=dc3.http_port, token=used).kv.put("app/e", "1")
        with pytest.raises(consul.ACLPermissionDenied):
            consul.Consul(port=dc3.http_port, token=unused).kv.put("app/f", "1")
        assert "applying down_policy extend-cache" in dc3.log()
    finally:
        for a in started:
            a.stop()
