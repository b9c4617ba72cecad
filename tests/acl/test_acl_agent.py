"""ACLs end to end on a real dev agent started the way Consul users start one, driven by py-consul:
bootstrap, tokens, policies, roles, enforcement (403 with Consul's words), filtered listings, DNS."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import consul
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.support import AgentProcess, wait_for

pytestmark = pytest.mark.xdist_group("acl-agent")

MGMT = "T-management"
GOSSIP_KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
WEB_RULES = '''
service "web" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "app/" { policy = "read" }
'''


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = AgentProcess(tmp_path_factory.mktemp("acl"), args=[
        "-hcl", f'acl {{ enabled = true default_policy = "deny" tokens {{ initial_management = "{MGMT}" }} }}',
        "-encrypt", GOSSIP_KEY])
    a.start()
    mgmt = consul.Consul(port=a.http_port, token=MGMT)
    wait_for(lambda: any(t["SecretID"] == MGMT for t in mgmt.acl.token.list()), message="initial token")
    yield a
    a.stop()


def client(agent: AgentProcess, token: str | None = None) -> consul.Consul:
    return consul.Consul(port=agent.http_port, token=token)


def raw(agent: AgentProcess, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        data: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(agent.url + path, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def test_bootstrap_is_spent_by_the_initial_management_token(agent):
    with pytest.raises(consul.ACLPermissionDenied, match=r"ACL bootstrap no longer allowed \(reset index: \d+\)"):
        client(agent).acl.bootstrap()


def test_management_token_does_everything_anonymous_nothing(agent):
    mgmt, anon = client(agent, MGMT), client(agent)
    mgmt.kv.put("app/config", "v1")
    assert mgmt.kv.get("app/config")[1]["Value"] == b"v1"
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:read' on \"app/config\""):
        anon.kv.get("app/config")
    with pytest.raises(consul.ACLPermissionDenied, match="key:write"):
        anon.kv.put("x", "1")
    assert "consul" in mgmt.catalog.services()[1]
    status, body, headers = raw(agent, "/v1/catalog/services")
    assert status == 200 and body == "{}" and headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    assert raw(agent, "/v1/agent/self")[0] == 403
    assert raw(agent, "/v1/snapshot")[0] == 403
    assert raw(agent, "/v1/status/leader")[0] == 200  # open, as in Consul


def test_the_keyring_endpoint_obeys_the_keyring_rule(agent):
    mgmt = client(agent, MGMT)
    reader = mgmt.acl.token.create(policies_id=[mgmt.acl.policy.create(name="kr-read", rules='keyring = "read"')["ID"]])
    writer = mgmt.acl.token.create(policies_id=[mgmt.acl.policy.create(name="kr-write",
                                                                       rules='keyring = "write"')["ID"]])
    status, body, _ = raw(agent, "/v1/operator/keyring")
    assert status == 403 and "keyring:read" in body
    status, body, _ = raw(agent, "/v1/operator/keyring", {"X-Consul-Token": reader["SecretID"]})
    assert status == 200 and json.loads(body)[-1]["Keys"] == {GOSSIP_KEY: 1}
    new = json.dumps({"Key": "xGO97pQcfaG6I/lVzMoqFA=="}).encode()
    status, body, _ = raw(agent, "/v1/operator/keyring", {"X-Consul-Token": reader["SecretID"]}, "POST", new)
    assert status == 403 and "keyring:write" in body
    assert raw(agent, "/v1/operator/keyring", {"X-Consul-Token": writer["SecretID"]}, "POST", new)[0] == 200
    status, body, _ = raw(agent, "/v1/operator/keyring", {"X-Consul-Token": MGMT}, "DELETE", new)
    assert status == 200
    rows = json.loads(raw(agent, "/v1/operator/keyring", {"X-Consul-Token": MGMT})[1])
    assert rows[-1]["Keys"] == {GOSSIP_KEY: 1}


def test_unknown_token_is_acl_not_found(agent):
    status, body, _ = raw(agent, "/v1/kv/app/config", {"X-Consul-Token": "no-such-secret"})
    assert (status, body.strip()) == (403, "ACL not found")


def test_token_in_bearer_header_and_query(agent):
    assert raw(agent, "/v1/agent/self", {"Authorization": f"Bearer {MGMT}"})[0] == 200
    assert raw(agent, f"/v1/agent/self?token={MGMT}")[0] == 200


def test_policy_token_and_role_lifecycle_with_py_consul(agent):
    mgmt = client(agent, MGMT)
    mgmt.kv.put("app/config", "v1")
    policy = mgmt.acl.policy.create(name="web-svc", rules=WEB_RULES, description="web's rights")
    assert policy["Name"] == "web-svc" and policy["Rules"] == WEB_RULES
    assert mgmt.acl.policy.read(policy["ID"])["Description"] == "web's rights"
    assert any(p["Name"] == "global-management" for p in mgmt.acl.policy.list())
    with pytest.raises(consul.ConsulException, match="already exists"):
        mgmt.acl.policy.create(name="web-svc", rules="")
    with pytest.raises(consul.ConsulException, match="Failed to parse ACL rules|Invalid"):
        mgmt.acl.policy.create(name="bad", rules='key_prefix "" { policy = "admin" }')

    token = mgmt.acl.token.create(description="web", policies_id=[policy["ID"]])
    assert token["Policies"] == [{"ID": policy["ID"], "Name": "web-svc"}]
    web = client(agent, token["SecretID"])
    assert web.acl.token.read_self()["AccessorID"] == token["AccessorID"]

    # A service token registers its own service and reads the catalog, but writes no KV.
    web.agent.service.register("web", service_id="web-1", port=8080)
    with pytest.raises(consul.ACLPermissionDenied, match="service:write"):
        web.agent.service.register("db", port=5432)
    with pytest.raises(consul.ACLPermissionDenied, match="key:write"):
        web.kv.put("app/config", "v2")
    assert web.kv.get("app/config")[1]["Value"] == b"v1"
    # Anti-entropy syncs it with the token that registered it; the node itself, with no agent token, is not.
    wait_for(lambda: "web" in web.catalog.services()[1], message="web in the catalog")
    assert "Node info update blocked by ACLs" in agent.log()
    assert web.health.service("web")[1][0]["Service"]["ID"] == "web-1"
    with pytest.raises(consul.ACLPermissionDenied):
        web.acl.token.list()

    # A role with a service identity; a token that holds the role.
    role = mgmt.acl.role.create(name="db-role", service_identities=[{"ServiceName": "db"}])
    assert mgmt.acl.role.read_by_name("db-role")["ID"] == role["ID"]
    db_token = mgmt.acl.token.create(roles_name=["db-role"], description="db")
    client(agent, db_token["SecretID"]).agent.service.register("db", port=5432)
    with pytest.raises(consul.ACLPermissionDenied):
        client(agent, db_token["SecretID"]).agent.service.register("web", service_id="web-2")

    clone = mgmt.acl.token.clone(token["AccessorID"], description="web clone")
    assert clone["Policies"] == token["Policies"] and clone["SecretID"] != token["SecretID"]
    # Changing the policy changes what its tokens may do at once (the resolver's cache follows the tables).
    mgmt.acl.policy.update(policy["ID"], "web-svc", rules=WEB_RULES + 'key_prefix "app/" { policy = "write" }')
    web.kv.put("app/config", "v2")
    assert mgmt.acl.token.delete(clone["AccessorID"])
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        client(agent, clone["SecretID"]).acl.token.read_self()
    with pytest.raises(consul.ACLPermissionDenied, match="anonymous"):
        mgmt.acl.token.delete("00000000-0000-0000-0000-000000000002")
    # The anonymous token can be given policies, as Consul users do for DNS or a read-only catalog.
    anon_policy = mgmt.acl.policy.create(name="anon-web", rules='service "web" { policy = "read" }')
    mgmt.acl.token.update("00000000-0000-0000-0000-000000000002", policies_id=[anon_policy["ID"]],
                          description="Anonymous Token")
    assert list(client(agent).catalog.services()[1]) == ["web"]
    mgmt.acl.token.update("00000000-0000-0000-0000-000000000002", description="Anonymous Token")
    assert client(agent).catalog.services()[1] == {}


def test_listings_are_filtered_to_what_the_token_reads(agent):
    mgmt = client(agent, MGMT)
    for k in ("app/a", "app/b", "secret/x"):
        mgmt.kv.put(k, "1")
    pol = mgmt.acl.policy.create(name="app-reader", rules='key_prefix "app/" { policy = "read" }')
    reader = mgmt.acl.token.create(policies_name=["app-reader"])
    _, rows = client(agent, reader["SecretID"]).kv.get("", recurse=True)
    assert {r["Key"] for r in rows} >= {"app/a", "app/b"} and not any(r["Key"].startswith("secret/") for r in rows)
    status, _, headers = raw(agent, "/v1/kv/?recurse", {"X-Consul-Token": reader["SecretID"]})
    assert status == 200 and headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    _, keys = client(agent, reader["SecretID"]).kv.get("", keys=True)
    assert "secret/x" not in keys and "app/a" in keys
    # The management token sees everything, unfiltered.
    _, all_keys = mgmt.kv.get("", keys=True)
    assert "secret/x" in all_keys
    # A recursive delete needs write on everything under the prefix.
    with pytest.raises(consul.ACLPermissionDenied):
        client(agent, reader["SecretID"]).kv.delete("app/", recurse=True)
    assert mgmt.acl.policy.delete(pol["ID"])
    # A filtered answer is cached per token, and a changed policy invalidates it at once.
    svc = mgmt.acl.policy.create(name="svc-some", rules='service "consul" { policy = "read" }')
    some = client(agent, mgmt.acl.token.create(policies_id=[svc["ID"]])["SecretID"])
    mgmt.agent.service.register("listed", port=1)
    wait_for(lambda: "listed" in mgmt.catalog.services()[1], message="listed registered")
    assert list(some.catalog.services()[1]) == ["consul"]
    assert list(some.catalog.services()[1]) == ["consul"]  # (from the response cache)
    mgmt.acl.policy.update(svc["ID"], "svc-some", rules='service_prefix "" { policy = "read" }')
    assert "listed" in some.catalog.services()[1]


def test_dns_answers_with_the_agents_token(agent):
    mgmt = client(agent, MGMT)
    mgmt.agent.service.register("dnsweb", port=80)
    wait_for(lambda: "dnsweb" in mgmt.catalog.services()[1], message="dnsweb registered")

    def ask() -> DNSRecord:
        q = DNSRecord.question("dnsweb.service.mesh", "A")
        return DNSRecord.parse(q.send("127.0.0.1", agent.dns_port, timeout=5))

    assert ask().header.rcode == RCODE.NXDOMAIN  # anonymous may read nothing
    mgmt.acl.policy.create(name="dns-read", rules='service_prefix "" { policy = "read" }\n'
                                                  'node_prefix "" { policy = "read" }')
    dns_token = mgmt.acl.token.create(policies_name=["dns-read"])
    with pytest.raises(consul.ACLPermissionDenied):  # setting an agent token needs acl:write
        client(agent, dns_token["SecretID"]).agent.token.set("default", dns_token["SecretID"])
    # Without a `dns` token, DNS answers with the agent's default token (which requests without one use too).
    assert mgmt.agent.token.set("default", dns_token["SecretID"])
    try:
        reply = wait_for(lambda: (r := ask()).header.rcode == RCODE.NOERROR and r, message="DNS answers")
        assert [QTYPE[rr.rtype] for rr in reply.rr] == ["A"]
        assert "dnsweb" in client(agent).catalog.services()[1]
        status, _, _ = raw(agent, "/v1/agent/token/dns", {"X-Consul-Token": MGMT}, "PUT", b'{"Token": "nope"}')
        assert status == 200  # a `dns` token wins over the default one for DNS
        wait_for(lambda: ask().header.rcode == RCODE.NXDOMAIN, message="DNS hides what the dns token cannot read")
    finally:
        mgmt.agent.token.set("default", "")


def test_acl_endpoints_on_an_agent_without_acls(tmp_path: Path):
    a = AgentProcess(tmp_path)
    a.start()
    try:
        with pytest.raises(consul.ACLDisabled):
            client(a).acl.bootstrap()
    finally:
        a.stop()


def test_bootstrap_once(tmp_path: Path):
    a = AgentProcess(tmp_path, args=["-hcl", 'acl { enabled = true default_policy = "deny" }'])
    a.start()
    try:
        token = client(a).acl.bootstrap()
        assert token["Policies"][0]["Name"] == "global-management"
        assert client(a, token["SecretID"]).acl.token.read_self()["AccessorID"] == token["AccessorID"]
        with pytest.raises(consul.ACLPermissionDenied, match="no longer allowed"):
            client(a).acl.bootstrap()
    finally:
        a.stop()


def test_intentions_default_to_the_acl_default_policy(agent):
    status, body, _ = raw(agent, "/v1/connect/intentions/check?source=a&destination=b", {"X-Consul-Token": MGMT})
    assert status == 200 and '"Allowed":false' in body.replace(" ", "")
    status, body, _ = raw(agent, "/v1/agent/self", {"X-Consul-Token": MGMT})
    assert '"DefaultIntentionPolicy":"deny"' in body.replace(" ", "")


BAD_BODIES = [b"[]", b'"x"', b"1", b"{}", b"not json", b'{"Name": 1}', b'{"Name": "ok-name", "Rules": 5}',
              b'{"Policies": "x"}', b'{"Policies": [1]}', b'{"Policies": [{}]}', b'{"Roles": [{"Name": "nope"}]}',
              b'{"ServiceIdentities": [{}]}', b'{"ServiceIdentities": "web"}', b'{"NodeIdentities": [{"NodeName": 1}]}',
              b'{"TemplatedPolicies": [{"TemplateName": "builtin/service"}]}', b'{"ExpirationTTL": "soon"}',
              b'{"ExpirationTTL": 5}', b'{"Token": 5}', b'{"AuthMethod": "x", "BearerToken": "a.b.c"}',
              b'{"Type": "jwt", "Name": "m", "Config": {"JWTValidationPubKeys": "x"}}',
              b'{"AuthMethod": "none", "BindType": "service", "BindName": "x", "Selector": "(("}']


def test_malformed_acl_bodies_are_4xx_never_5xx(agent):
    mgmt = client(agent, MGMT)
    policy = mgmt.acl.policy.create(name="fuzz-p", rules="")
    token = mgmt.acl.token.create(description="fuzz")
    role = mgmt.acl.role.create(name="fuzz-r")
    targets = [("PUT", "/v1/acl/token"), ("PUT", f"/v1/acl/token/{token['AccessorID']}"),
               ("PUT", f"/v1/acl/token/{token['AccessorID']}/clone"), ("PUT", "/v1/acl/policy"),
               ("PUT", f"/v1/acl/policy/{policy['ID']}"), ("PUT", "/v1/acl/role"), ("PUT", f"/v1/acl/role/{role['ID']}"),
               ("PUT", "/v1/acl/auth-method"), ("PUT", "/v1/acl/binding-rule"), ("POST", "/v1/acl/login"),
               ("POST", "/v1/acl/templated-policy/preview/builtin/service"), ("PUT", "/v1/agent/token/default"),
               ("PUT", "/v1/acl/bootstrap")]
    for method, path in targets:
        for body in BAD_BODIES:
            status, text, _ = raw(agent, path, {"X-Consul-Token": MGMT}, method, body)
            assert status < 500, (method, path, body, status, text)
    for path in ("/v1/acl/token/nope", "/v1/acl/policy/nope", "/v1/acl/role/name/nope", "/v1/acl/auth-method/nope",
                 "/v1/acl/binding-rule/nope", "/v1/acl/templated-policy/name/nope"):
        assert raw(agent, path, {"X-Consul-Token": MGMT})[0] == 403  # Consul's "ACL not found"
    mgmt.agent.token.set("default", "")


def test_prepared_queries_and_coordinates_obey_tokens(agent):
    body = b'{"Name": "web-q", "Service": {"Service": "web"}}'
    assert raw(agent, "/v1/query", {}, "POST", body)[0] == 403
    status, text, _ = raw(agent, "/v1/query", {"X-Consul-Token": MGMT}, "POST", body)
    assert status == 200, text
    assert "web-q" in raw(agent, "/v1/query", {"X-Consul-Token": MGMT})[1]
    status, text, headers = raw(agent, "/v1/query")
    assert (status, text) == (200, "[]") and headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    update = b'{"Node": "dev", "Coord": {"Vec": [0,0,0,0,0,0,0,0], "Error": 1.5, "Adjustment": 0, "Height": 0.00001}}'
    assert raw(agent, "/v1/coordinate/update", {}, "PUT", update)[0] == 403


def test_txn_checks_every_operation_before_applying(agent):
    ops = b'[{"KV": {"Verb": "set", "Key": "txn/a", "Value": "MQ=="}}, {"KV": {"Verb": "frob", "Key": "k"}}]'
    status, text, _ = raw(agent, "/v1/txn", {}, "PUT", ops)
    assert status == 403 and "key:write" in text
    status, text, _ = raw(agent, "/v1/txn", {"X-Consul-Token": MGMT}, "PUT", ops)
    assert status == 409  # the refused verb fails it; the right to the rest was there
    ok = b'[{"KV": {"Verb": "set", "Key": "txn/a", "Value": "MQ=="}}]'
    assert raw(agent, "/v1/txn", {"X-Consul-Token": MGMT}, "PUT", ok)[0] == 200
