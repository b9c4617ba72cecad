"""ACLs across a server and a client agent: the client resolves tokens through the server (RPC), caches
them for token_ttl, and enforces them on its own API and its own anti-entropy."""

from __future__ import annotations

import json
from pathlib import Path

import consul
import pytest

from tests.support import ServerCluster, wait_for

pytestmark = pytest.mark.xdist_group("acl-cluster")
MGMT = "cluster-management"


def test_client_agent_enforces_tokens_resolved_by_the_servers(tmp_path: Path):
    acl = {"enabled": True, "default_policy": "deny", "token_ttl": "1s"}
    cluster = ServerCluster(tmp_path, n=1, config={"acl": dict(acl, tokens={"initial_management": MGMT})})
    cluster.start()
    client_conf = tmp_path / "client-acl.json"
    client = cluster.client("c1")
    try:
        server = cluster.leader()
        mgmt = consul.Consul(port=server.http_port, token=MGMT)
        wait_for(lambda: mgmt.acl.token.read_self(), message="initial management token")
        node_policy = mgmt.acl.policy.create(name="c1-node", rules='node "c1" { policy = "write" }\n'
                                                                   'service_prefix "" { policy = "read" }')
        agent_token = mgmt.acl.token.create(policies_id=[node_policy["ID"]], description="c1 agent")
        client_conf.write_text(json.dumps({"acl": dict(acl, tokens={"agent": agent_token["SecretID"]})}))
        client.extra_args += ["-config-file", str(client_conf)]
        client.start()
        wait_for(lambda: "c1" in [n["Node"] for n in mgmt.catalog.nodes()[1]], 30, message="c1 joins the catalog")

        on_client = consul.Consul(port=client.http_port, token=MGMT)
        on_client.kv.put("k", "v")  # the management token, resolved through the server
        with pytest.raises(consul.ACLPermissionDenied):
            consul.Consul(port=client.http_port).kv.get("k")

        reader = mgmt.acl.policy.create(name="k-read", rules='key "k" { policy = "read" }')
        token = mgmt.acl.token.create(policies_id=[reader["ID"]])
        user = consul.Consul(port=client.http_port, token=token["SecretID"])
        assert user.kv.get("k")[1]["Value"] == b"v"
        with pytest.raises(consul.ACLPermissionDenied):
            user.kv.put("k", "w")
        # A changed policy reaches the client agent within its token_ttl.
        mgmt.acl.policy.update(reader["ID"], "k-read", rules='key "k" { policy = "write" }')
        wait_for(lambda: user.kv.put("k", "w"), 10, message="the new rule on the client agent")

        # The client's anti-entropy registers a service with the token that registered it.
        svc_token = mgmt.acl.token.create(service_identities=[{"ServiceName": "api"}])
        consul.Consul(port=client.http_port, token=svc_token["SecretID"]).agent.service.register("api", port=80)
        wait_for(lambda: "api" in mgmt.catalog.services()[1], 20, message="api synced by the client")
    finally:
        client.stop()
        cluster.stop()
