"""The jwt auth method with static public keys: binding rules turn a signed JWT's claims into a login
token (py-consul's acl.login / logout, and the CLI's `proconsul login` / `logout`)."""

from __future__ import annotations

import base64
import json
import re
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


def sign(key, claims: dict, alg: str = "RS256", kid: str = "") -> str:
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
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
    for config, says in [({}, "exactly one of Config.JWTValidationPubKeys"),
                         ({"JWTValidationPubKeys": ["nope"]}, "not a PEM"),
                         ({"JWTValidationPubKeys": [pem(RSA)], "OIDCDiscoveryURL": "https://x.example"},
                          "given: JWTValidationPubKeys, OIDCDiscoveryURL"),
                         ({"JWKSURL": "ftp://keys.example/jwks"}, "JWKSURL must be an http(s) URL"),
                         ({"JWKSURL": "https://keys.example/jwks", "JWKSCACert": "nope"}, "not a PEM CA certificate"),
                         ({"JWTValidationPubKeys": [pem(RSA)], "JWKSCACert": "x"}, "JWKSCACert is only for"),
                         ({"JWKSURL": "https://keys.example/jwks", "Audience": "x"}, "Config.Audience is not supported")]:
        with pytest.raises(consul.ConsulException, match=re.escape(says)):
            mgmt.acl.auth_method.create("bad", "jwt", config=config)
    with pytest.raises(consul.ConsulException, match="only \\\\\"jwt\\\\\"|only \"jwt\""):
        mgmt.acl.auth_method.create("k8s", "kubernetes", config={})


# ---------------------------------------------------------------------- JWKS and OIDC discovery
def jwk(key, kid: str) -> dict:
    """A public key as a JWK, written by hand from its numbers (RFC 7518), not by our own parser."""
    nums = key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(nums.n.to_bytes(256, "big")),
                "e": b64(nums.e.to_bytes(3, "big"))}
    return {"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")),
            "y": b64(nums.y.to_bytes(32, "big"))}


def test_jwk_sets_are_read_by_kid_and_bad_ones_named():
    from proconsul.agent.acl.jwt import jwk_keys

    keys = jwk_keys({"keys": [jwk(RSA, "r1"), jwk(EC, "e1"), {"kty": "OKP", "kid": "ed"},
                              dict(jwk(OTHER, "enc"), use="enc")]})
    assert sorted(keys) == ["e1", "r1"], "OKP and encryption keys are left out"
    now = time.time()
    assert verify(sign(EC, {"sub": "x"}, "ES256", kid="e1"), [keys["e1"]], now=now, algorithms=["ES256"])["sub"] == "x"
    assert verify(sign(RSA, {"sub": "y"}, kid="r1"), [keys["r1"]], now=now)["sub"] == "y"
    for doc, says in [([], "not a JSON Web Key Set"), ({"keys": [{"kty": "OKP"}]}, "no RSA or EC signing key"),
                      ({"keys": [{"kty": "RSA", "kid": "k", "n": 5, "e": "AQAB"}]}, "key k n must be"),
                      ({"keys": [dict(jwk(EC, "p"), x=b64(b"\x01" * 32))]}, "key p is not a point on P-256")]:
        with pytest.raises(JWTError, match=says):
            jwk_keys(doc)


class KeyServer:
    """A real HTTPS server on 127.0.0.1 with an `openssl req -x509` certificate, serving a JWKS and an OIDC
    discovery document that the test changes as it goes."""

    def __init__(self, tmp: Path) -> None:
        import http.server
        import shutil
        import ssl
        import subprocess
        import threading

        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed (Debian openssl)")
        key, cert = tmp / "key.pem", tmp / "cert.pem"
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                               "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=keys",
                               "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        self.ca = cert.read_text()
        self.docs: dict[str, dict] = {}
        docs = self.docs

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 — http.server's name
                body = json.dumps(docs[self.path]).encode() if self.path in docs else b"{}"
                self.send_response(200 if self.path in docs else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_login_with_keys_from_a_jwks_url_and_oidc_discovery(agent: AgentProcess, tmp_path: Path):
    """Consul's JWKSURL (with JWKSCACert) and OIDCDiscoveryURL: the keys are fetched over real HTTPS checked
    against the given CA, a rotated key (a new kid) is fetched again, a discovery document naming another
    issuer and a server the CA does not vouch for are refused with a line naming the URL."""
    server = KeyServer(tmp_path)
    mgmt = consul.Consul(port=agent.http_port, token=MGMT)
    anon = consul.Consul(port=agent.http_port)
    claims = {"iss": "nomad", "service": "batch", "exp": time.time() + 60}
    try:
        server.docs["/jwks.json"] = {"keys": [jwk(RSA, "k1")]}
        mgmt.acl.auth_method.create("jwks", "jwt", config={"JWKSURL": server.url + "/jwks.json",
                                                           "JWKSCACert": server.ca, "BoundIssuer": "nomad",
                                                           "ClaimMappings": {"service": "service"}})
        mgmt.acl.binding_rule.create("jwks", "service", "${value.service}")
        token = anon.acl.login("jwks", sign(RSA, claims, kid="k1"))
        assert token["ServiceIdentities"] == [{"ServiceName": "batch"}]
        with pytest.raises(consul.ACLPermissionDenied, match="signature"):
            anon.acl.login("jwks", sign(OTHER, claims, kid="k1"))  # the right kid, another key

        server.docs["/jwks.json"] = {"keys": [jwk(EC, "k2")]}  # rotated: a new kid, fetched again when seen
        mgmt.acl.auth_method.update("jwks", "jwt", config={"JWKSURL": server.url + "/jwks.json",
                                                           "JWKSCACert": server.ca, "BoundIssuer": "nomad",
                                                           "JWTSupportedAlgs": ["RS256", "ES256"],
                                                           "ClaimMappings": {"service": "service"}})
        rotated = wait_for(lambda: _login(anon, "jwks", sign(EC, claims, "ES256", kid="k2")), 15,
                           message="the rotated key (kid k2) to be fetched")
        assert rotated["ServiceIdentities"] == [{"ServiceName": "batch"}]

        server.docs["/.well-known/openid-configuration"] = {"issuer": server.url,
                                                            "jwks_uri": server.url + "/jwks.json"}
        mgmt.acl.auth_method.create("oidc", "jwt", config={"OIDCDiscoveryURL": server.url,
                                                           "OIDCDiscoveryCACert": server.ca,
                                                           "JWTSupportedAlgs": ["ES256"],
                                                           "ClaimMappings": {"service": "service"}})
        mgmt.acl.binding_rule.create("oidc", "service", "${value.service}")
        assert anon.acl.login("oidc", sign(EC, claims, "ES256", kid="k2"))["ServiceIdentities"] == [
            {"ServiceName": "batch"}]

        server.docs["/other/.well-known/openid-configuration"] = {"issuer": "https://elsewhere.example",
                                                                  "jwks_uri": server.url + "/jwks.json"}
        mgmt.acl.auth_method.create("liar", "jwt", config={"OIDCDiscoveryURL": server.url + "/other",
                                                           "OIDCDiscoveryCACert": server.ca,
                                                           "JWTSupportedAlgs": ["ES256"]})
        with pytest.raises(consul.ACLPermissionDenied, match="names another issuer"):
            anon.acl.login("liar", sign(EC, claims, "ES256", kid="k2"))
        mgmt.acl.auth_method.create("untrusted", "jwt", config={"JWKSURL": server.url + "/jwks.json"})
        with pytest.raises(consul.ACLPermissionDenied, match=re.escape(f"could not fetch the JWKS from {server.url}")):
            anon.acl.login("untrusted", sign(EC, claims, "ES256", kid="k2"))
    finally:
        server.close()
        for name in ("jwks", "oidc", "liar", "untrusted"):
            try:
                mgmt.acl.auth_method.delete(name)
            except consul.ConsulException:
                pass


def _login(client: consul.Consul, method: str, bearer: str) -> dict | None:
    try:
        return client.acl.login(method, bearer)
    except consul.ACLPermissionDenied:
        return None
