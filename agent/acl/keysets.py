"""The keys a `jwt` auth method verifies bearer tokens with: its static `JWTValidationPubKeys`, or a JSON Web
Key Set fetched from `JWKSURL`, or found by OIDC discovery from `OIDCDiscoveryURL` (its
`/.well-known/openid-configuration` names the `jwks_uri`; its `issuer` must be that URL, as Consul's OIDC
library checks). Fetched sets are cached per auth method source and fetched again when a token names a `kid`
the cached set does not have (a key rotation), at most every MIN_REFETCH seconds, and after MAX_AGE
seconds in any case (so a removed key stops working). A set that cannot be fetched fails the login with a
line naming the URL and why."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proconsul.agent.acl.jwt import JWTError, jwk_keys, load_public_keys, token_kid

MAX_AGE = 600.0
MIN_REFETCH = 5.0
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT = 1 << 20  # a key set or discovery document larger than 1 MiB is refused
WELL_KNOWN = "/.well-known/openid-configuration"


@dataclass
class _Cached:
    fetched: float
    keys: dict[str, Any]


class KeySets:
    """The agent's cache of fetched key sets (one object per agent; no module state)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], _Cached] = {}

    async def keys_for(self, config: dict[str, Any], token: str) -> list[Any]:
        """The keys to verify `token` with under an auth method's Config."""
        if config.get("JWTValidationPubKeys"):
            return load_public_keys(config["JWTValidationPubKeys"])
        if config.get("JWKSURL"):
            source, ca = str(config["JWKSURL"]), str(config.get("JWKSCACert") or "")
        else:
            source, ca = str(config.get("OIDCDiscoveryURL") or ""), str(config.get("OIDCDiscoveryCACert") or "")
        if not source:
            raise JWTError("the auth method has no keys (JWTValidationPubKeys, JWKSURL or OIDCDiscoveryURL)")
        kid, now = token_kid(token), time.monotonic()
        cached = self._cache.get((source, ca))
        stale = cached is None or now - cached.fetched > MAX_AGE or (
            kid and kid not in cached.keys and now - cached.fetched > MIN_REFETCH)
        if stale:
            keys = await (self._jwks(source, ca) if config.get("JWKSURL") else self._discovered(source, ca))
            cached = self._cache[(source, ca)] = _Cached(now, keys)
        assert cached is not None
        if kid and kid in cached.keys:
            return [cached.keys[kid]]
        return list(cached.keys.values())

    async def _discovered(self, issuer: str, ca: str) -> dict[str, Any]:
        doc = await _get_json(issuer.rstrip("/") + WELL_KNOWN, ca, "OIDC discovery document")
        found = doc.get("issuer") if isinstance(doc, dict) else None
        if not isinstance(found, str) or found.rstrip("/") != issuer.rstrip("/"):
            raise JWTError(f"the OIDC discovery document of {issuer} names another issuer ({found!r})")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise JWTError(f"the OIDC discovery document of {issuer} has no jwks_uri")
        return await self._jwks(jwks_uri, ca)

    async def _jwks(self, url: str, ca: str) -> dict[str, Any]:
        return jwk_keys(await _get_json(url, ca, "JWKS"))


async def _get_json(url: str, ca: str, what: str) -> Any:
    try:
        ctx: ssl.SSLContext | bool = ssl.create_default_context(cadata=ca) if ca else True
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT)) as session, \
                session.get(url, ssl=ctx if url.startswith("https://") else None) as resp:
            if resp.status != 200:
                raise JWTError(f"could not fetch the {what} from {url}: HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT + 1)
    except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as e:
        raise JWTError(f"could not fetch the {what} from {url}: {e or type(e).__name__}") from None
    if len(body) > MAX_DOCUMENT:
        raise JWTError(f"the {what} at {url} is larger than 1 MiB")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise JWTError(f"the {what} at {url} is not JSON") from None
