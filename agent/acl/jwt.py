"""JWT verification for the `jwt` auth method: with static public keys (Consul's `JWTValidationPubKeys`) or a
JSON Web Key Set (RFC 7517, fetched from `JWKSURL` or found by OIDC discovery, `agent/acl/keysets.py`).

Pure: the caller gives the time and the keys. RS256/384/512, PS256/384/512 and ES256/384/512 (the
`cryptography` package does the signature maths); `exp`, `nbf` with leeways, `iss`, `aud`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proconsul.agent.acl.errors import ACLError

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
ALGORITHMS = tuple(f"{family}{bits}" for family in ("RS", "PS", "ES") for bits in ("256", "384", "512"))


class JWTError(ACLError):
    """A bearer token that is malformed, badly signed, expired, or not meant for this auth method."""


def load_public_keys(pems: list[str]) -> list[Any]:
    """PEM public keys (or certificates) → key objects; a bad one is an error naming its position."""
    from cryptography import x509

    keys = []
    for i, pem in enumerate(pems):
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            if b"CERTIFICATE" in data:
                keys.append(x509.load_pem_x509_certificate(data).public_key())
            else:
                keys.append(serialization.load_pem_public_key(data))
        except (ValueError, TypeError) as e:
            raise JWTError(f"JWTValidationPubKeys[{i}] is not a PEM public key: {e}") from None
    return keys


_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def _b64int(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value:
        raise JWTError(f"the key set's {what} must be a base64url string")
    try:
        return int.from_bytes(_b64(value), "big")
    except (ValueError, TypeError):
        raise JWTError(f"the key set's {what} is not base64url") from None


def jwk_keys(doc: Any) -> dict[str, Any]:
    """A JSON Web Key Set's signing keys by `kid` (a key without one is keyed `#<position>`). RSA and EC
    (P-256/384/521) keys are read; others, and keys marked for encryption (`"use": "enc"`), are left out.
    A document that is not a key set, or has no usable key, is an error."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JWTError("the JWKS document is not a JSON Web Key Set (an object with a \"keys\" list)")
    out: dict[str, Any] = {}
    for i, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) and jwk.get("kid") else f"#{i}"
        if jwk.get("kty") == "RSA":
            try:
                out[kid] = rsa.RSAPublicNumbers(_b64int(jwk.get("e"), f"key {kid} e"),
                                                _b64int(jwk.get("n"), f"key {kid} n")).public_key()
            except ValueError as e:
                raise JWTError(f"the key set's key {kid} is not an RSA public key: {e}") from None
        elif jwk.get("kty") == "EC" and jwk.get("crv") in _CURVES:
            try:
                out[kid] = ec.EllipticCurvePublicNumbers(
                    _b64int(jwk.get("x"), f"key {kid} x"), _b64int(jwk.get("y"), f"key {kid} y"),
                    _CURVES[jwk["crv"]]).public_key()
            except ValueError as e:
                raise JWTError(f"the key set's key {kid} is not a point on {jwk['crv']}: {e}") from None
    if not out:
        raise JWTError("the JWKS has no RSA or EC signing key")
    return out


def token_kid(token: str) -> str:
    """The `kid` in a JWT's header ("" when it has none or the token is malformed: `verify` says why)."""
    try:
        header = json.loads(_b64(token.strip().split(".")[0]))
    except (ValueError, TypeError, IndexError):
        return ""
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else ""


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _verify(key: Any, alg: str, signing_input: bytes, sig: bytes) -> bool:
    h = _HASHES[alg[2:]]()
    try:
        if alg.startswith(("RS", "PS")) and isinstance(key, rsa.RSAPublicKey):
            pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(
                mgf=padding.MGF1(h), salt_length=padding.PSS.DIGEST_LENGTH)
            key.verify(sig, signing_input, pad, h)
            return True
        if alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            n = len(sig) // 2
            der = encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))
            key.verify(der, signing_input, ec.ECDSA(h))
            return True
    except InvalidSignature:
        return False
    return False


def verify(token: str, keys: list[Any], *, now: float, algorithms: list[str] | None = None,
           bound_issuer: str = "", bound_audiences: list[str] | None = None, leeway: float = 0.0,
           expiration_leeway: float = 150.0, not_before_leeway: float = 150.0) -> dict[str, Any]:
    """The claims of a JWT whose signature one of `keys` verifies and whose times and audience fit."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JWTError("the bearer token is not a JWT (header.payload.signature)")
    try:
        header = json.loads(_b64(parts[0]))
        claims = json.loads(_b64(parts[1]))
        sig = _b64(parts[2])
    except (ValueError, TypeError):
        raise JWTError("the bearer token is not a JWT: bad base64 or JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JWTError("the bearer token is not a JWT: header and payload must be objects")
    alg = header.get("alg")
    allowed = algorithms or ["RS256"]
    if alg not in ALGORITHMS or alg not in allowed:
        raise JWTError(f"unsupported JWT algorithm {alg!r} (this auth method accepts {', '.join(allowed)})")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    if not any(_verify(k, alg, signing_input, sig) for k in keys):
        raise JWTError("failed to verify the JWT's signature with any of the auth method's keys")
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if isinstance(exp, int | float) and now > exp + expiration_leeway + leeway:
        raise JWTError("the JWT has expired")
    if isinstance(nbf, int | float) and now < nbf - not_before_leeway - leeway:
        raise JWTError("the JWT is not valid yet (nbf)")
    if bound_issuer and claims.get("iss") != bound_issuer:
        raise JWTError("the JWT's issuer (iss) does not match BoundIssuer")
    if bound_audiences:
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not set(auds) & set(bound_audiences):
            raise JWTError("the JWT's audience (aud) does not match BoundAudiences")
    return claims
