"""`proconsul acl …` as Consul users type it: single-dash flags, -token / CONSUL_HTTP_TOKEN / -token-file,
one-line errors with exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import consul
import pytest

from tests.support import AgentProcess, ok, one_line_error, run, wait_for

pytestmark = pytest.mark.xdist_group("acl-cli")
MGMT = "cli-management"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = AgentProcess(tmp_path_factory.mktemp("acl-cli"), args=[
        "-hcl", f'acl {{ enabled = true default_policy = "deny" tokens {{ initial_management = "{MGMT}" }} }}'])
    a.start()
    # The leader writes the initial management token just after it starts leading (as Consul's does).
    wait_for(lambda: consul.Consul(port=a.http_port, token=MGMT).acl.token.read_self(), message="initial token")
    yield a
    a.stop()


def test_policy_token_role_commands(agent: AgentProcess, tmp_path: Path):
    rules = tmp_path / "app.hcl"
    rules.write_text('key_prefix "app/" { policy = "write" }\n')
    out = ok(agent, "acl", "policy", "create", "-token", MGMT, "-name", "app", f"-rules=@{rules}",
             "-description", "app keys")
    assert "Name:        app" in out and 'key_prefix "app/"' in out
    token = json.loads(ok(agent, "acl", "token", "create", f"-token={MGMT}", "-description", "app writer",
                          "-policy-name", "app", "-service-identity", "web", "-format", "json"))
    assert token["Policies"][0]["Name"] == "app" and token["ServiceIdentities"] == [{"ServiceName": "web"}]

    # The new token, from the environment: it writes app/ keys and nothing else.
    env = {"CONSUL_HTTP_TOKEN": token["SecretID"]}
    ok(agent, "kv", "put", "app/x", "1", env=env)
    line = one_line_error(run(agent, "kv", "put", "other/x", "1", env=env))
    assert "Permission denied" in line and "key:write" in line
    token_file = tmp_path / "token"
    token_file.write_text(token["SecretID"] + "\n")
    assert ok(agent, "kv", "get", "app/x", f"-token-file={token_file}").strip() == "1"

    listing = ok(agent, "acl", "token", "list", env={"CONSUL_HTTP_TOKEN": MGMT})
    assert "app writer" in listing and "Anonymous Token" in listing
    clone = json.loads(ok(agent, "acl", "token", "clone", "-id", token["AccessorID"], "-description", "copy",
                          "-format", "json", env={"CONSUL_HTTP_TOKEN": MGMT}))
    assert clone["Description"] == "copy" and clone["Policies"] == token["Policies"]
    assert "renamed" in ok(agent, "acl", "token", "update", "-id", clone["AccessorID"], "-description", "renamed",
                           env={"CONSUL_HTTP_TOKEN": MGMT})

    role = ok(agent, "acl", "role", "create", "-name", "readers", "-policy-name", "app",
              env={"CONSUL_HTTP_TOKEN": MGMT})
    assert "readers" in role and "app" in role
    assert "deleted" in ok(agent, "acl", "token", "delete", "-id", clone["AccessorID"], env={"CONSUL_HTTP_TOKEN": MGMT})
    assert "changed" in ok(agent, "acl", "policy", "update", "-name", "app", "-description", "changed",
                           env={"CONSUL_HTTP_TOKEN": MGMT})


def test_set_agent_token_and_templated_policies(agent: AgentProcess):
    env = {"CONSUL_HTTP_TOKEN": MGMT}
    assert "set successfully" in ok(agent, "acl", "set-agent-token", "agent", MGMT, env=env)
    out = ok(agent, "acl", "templated-policy", "preview", "-name", "builtin/service", "-var", "name:api", env=env)
    assert 'service "api"' in out and 'service "api-sidecar-proxy"' in out
    token = json.loads(ok(agent, "acl", "token", "create", "-templated-policy", "builtin/service", "-var", "name:api",
                          "-expires-ttl", "1h", "-format", "json", env=env))
    assert token["TemplatedPolicies"] == [{"TemplateName": "builtin/service", "TemplateVariables": {"Name": "api"}}]
    assert token["ExpirationTime"]


def test_errors_are_one_line(agent: AgentProcess):
    line = one_line_error(run(agent, "acl", "policy", "list"))
    assert "403" in line and "acl:read" in line
    assert "already exists" in one_line_error(run(agent, "acl", "policy", "create", "-token", MGMT, "-name",
                                                  "global-management"))
    assert "must be one of read, write, deny, list" in one_line_error(run(agent, "acl", "policy", "create", "-token", MGMT, "-name",
                                                   "bad", "-rules", 'key "x" { policy = "sideways" }'))
    assert "cannot read the token file" in one_line_error(run(agent, "members", "-token-file", "/nonexistent"))
