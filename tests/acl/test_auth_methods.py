"""The jwt auth method with static public keys: binding rules turn a signed JWT's claims into a login
token (py-consul's acl.login / logout, and the CLI's `proconsul login` / `logout`)."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path

import consul
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from proconsul.agent.acl.jwt import JWTError, verify
from tests.support import AgentProcess, ok, one_line_error, run, wait_for

pytestmark = pytest.mark.xdist_group("acl-auth")
MGMT = "auth-management"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key, claims: dict, alg: str = "RS256") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    if alg == "RS256":
        sig = key.sign(head.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(head.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return head + "." + b64(sig)


def pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_verify_checks_signature_time_issuer_and_audience():
    now = time.time()
    claims = {"sub": "web", "iss": "ci", "aud": "consul", "exp": now + 60}
    assert verify(sign(RSA, claims), [RSA.public_key()], now=now, bound_issuer="ci",
                  bound_audiences=["consul"])["sub"] == "web"
    assert verify(sign(EC, claims, "ES256"), [EC.public_key()], now=now, algorithms=["ES256"])["sub"] == "web"
    for token, kw, says in [
        (sign(OTHER, claims), {}, "signature"),
        (sign(RSA, dict(claims, exp=now - 1000)), {}, "expired"),
        (sign(RSA, claims), {"bound_issuer": "prod"}, "issuer"),
        (sign(RSA, claims), {"bound_audiences": ["vault"]}, "audience"),
        (sign(EC, claims, "ES256"), {}, "algorithm"),
        ("not.a.jwt", {}, "not a JWT"),
    ]:
        with pytest.raises(JWTError, match=says):
            verify(token, [RSA.public_key()], now=now, **kw)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = AgentProcess(tmp_path_factory.mktemp("auth"), args=[
        "-hcl", f'acl {{ enabled = true default_policy = "deny" tokens {{ initial_management = "{MGMT}" }} }}'])
    a.start()
    # The leader writes the initial management token just after it starts leading (as Consul's does).
    wait_for(lambda: consul.Consul(port=a.http_port, token=MGMT).acl.token.read_self(), message="initial token")
    yield a
    a.stop()


def test_login_and_logout_through_binding_rules(agent: AgentProcess, tmp_path: Path):
    mgmt = consul.Consul(port=agent.http_port, token=MGMT)
    method = mgmt.acl.auth_method.create("ci", "jwt", config={
        "JWTValidationPubKeys": [pem(RSA)], "BoundIssuer": "ci", "ClaimMappings": {"service": "service"},
        "ListClaimMappings": {"groups": "groups"}}, max_token_ttl="10m")
    assert method["Name"] == "ci" and method["TokenLocality"] == "local"
    mgmt.acl.policy.create(name="ops", rules='operator = "read"')
    mgmt.acl.binding_rule.create("ci", "service", "${value.service}", selector='value.service != ""')
    mgmt.acl.binding_rule.create("ci", "policy", "ops", selector='"admins" in list.groups')
    assert len(mgmt.acl.binding_rule.list(auth_method="ci")) == 2

    anon = consul.Consul(port=agent.http_port)
    token = anon.acl.login("ci", sign(RSA, {"iss": "ci", "service": "api", "groups": ["admins"],
                                           "exp": time.time() + 60}), meta={"pod": "api-1"})
    assert token["AuthMethod"] == "ci" and token["ServiceIdentities"] == [{"ServiceName": "api"}]
    assert token["Policies"][0]["Name"] == "ops" and token["Local"] is True and token["ExpirationTime"]
    api = consul.Consul(port=agent.http_port, token=token["SecretID"])
    api.agent.service.register("api", port=9000)  # the service identity's right
    with pytest.raises(consul.ACLPermissionDenied):
        api.agent.service.register("other", port=9001)
    req = urllib.request.Request(agent.url + "/v1/operator/raft/configuration",
                                 headers={"X-Consul-Token": token["SecretID"]})
    with urllib.request.urlopen(req, timeout=10) as r:  # the policy bound for admins
        assert json.loads(r.read())["Servers"]

    with pytest.raises(consul.ACLPermissionDenied, match="signature"):
        anon.acl.login("ci", sign(OTHER, {"iss": "ci", "service": "api"}))
    with pytest.raises(consul.ACLPermissionDenied, match="no binding rule"):
        anon.acl.login("ci", sign(RSA, {"iss": "ci", "groups": ["dev"]}))
    with pytest.raises(consul.ACLPermissionDenied):  # a token not made by login cannot log out
        anon.acl.logout(MGMT)
    assert anon.acl.logout(token["SecretID"])
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        api.acl.token.read_self()

    # The CLI: proconsul login writes the token to a sink file; logout deletes it.
    jwt_file, sink = tmp_path / "jwt", tmp_path / "token"
    jwt_file.write_text(sign(RSA, {"iss": "ci", "service": "cli"}))
    ok(agent, "login", "-method", "ci", f"-bearer-token-file={jwt_file}", f"-token-sink-file={sink}")
    secret = sink.read_text().strip()
    assert consul.Consul(port=agent.http_port, token=secret).acl.token.read_self()["ServiceIdentities"] == [
        {"ServiceName": "cli"}]
    ok(agent, "logout", "-token", secret)
    assert "ACL not found" in one_line_error(run(agent, "acl", "token", "read", "-self", "-token", secret))
    # Deleting the method removes its rules and the tokens it made.
    mgmt.acl.auth_method.delete("ci")
    assert mgmt.acl.binding_rule.list() == []


def test_bad_auth_method_configs_are_400s(agent: AgentProcess):
    mgmt = consul.Consul(port=agent.http_port, token=MGMT)
    for config, says in [({}, "JWTValidationPubKeys"), ({"JWTValidationPubKeys": ["nope"]}, "not a PEM"),
                         ({"JWTValidationPubKeys": [pem(RSA)], "OIDCDiscoveryURL": "https://x"}, "not supported")]:
        with pytest.raises(consul.ConsulException, match=says):
            mgmt.acl.auth_method.create("bad", "jwt", config=config)
    with pytest.raises(consul.ConsulException, match="only \\\\\"jwt\\\\\"|only \"jwt\""):
        mgmt.acl.auth_method.create("k8s", "kubernetes", config={})
