"""Token secret → Authorizer, with a cache: the asyncio shell around the pure ACL core.

On a server, a cached authorizer stays valid while the ACL tables have not changed (their index is
the cache's key), so a changed policy takes effect on the next request. On a client agent, which reads
tokens from a server, entries live `token_ttl`; when no server answers, `down_policy` decides
(Consul's extend-cache / async-cache keep using what is cached, then deny; allow; deny). A secondary
datacenter's server resolves from its replica what replication brought, and asks the primary for the rest;
a follower asks its leader for a token its replica lacks (one just written may not have reached it yet).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from proconsul.agent.acl.authorizer import Authorizer
from proconsul.agent.acl.builtin import ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, anonymous_token
from proconsul.agent.acl.errors import ACLNotFound, RulesError
from proconsul.agent.acl.identity import expired, token_rules
from proconsul.agent.acl.rules import Rules, parse_rules

log = logging.getLogger("proconsul.acl")

# (secret) -> (index, {"Token": row | None, "Policies": {id: row}, "Roles": {id: row}})
FetchBundle = Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]
FetchLocal = Callable[[str], tuple[int, dict[str, Any]]]  # a server's own replica: no waiting
CACHE_SIZE = 4096


@dataclass(slots=True)
class _Entry:
    authz: Authorizer
    token: dict[str, Any]
    generation: int
    fetched: float
    expires: bool  # the token has an ExpirationTime (checked on every hit only then)
    remote: bool  # read from a server or the primary datacenter: lives token_ttl (else: until the tables change)
    index: int
    bundle: dict[str, Any]


class ACLUnavailable(Exception):
    """No server (or, for a secondary's server, the primary datacenter) answered for a token this agent
    has not cached: the caller applies its own down_policy."""


class Resolver:
    """Resolves token secrets for one agent. A server passes `fetch_local` (its own replica) and calls
    `changed()` whenever the ACL tables change; a client agent's entries live `token_ttl`."""

    def __init__(self, *, default_allow: bool, down_policy: str, datacenter: str, token_ttl: float,
                 fetch: FetchBundle, clock: Callable[[], float], wall: Callable[[], float],
                 fetch_local: FetchLocal | None = None, fetch_remote: FetchBundle | None = None,
                 fetch_leader: Callable[[str], Awaitable[tuple[int, dict[str, Any]] | None]] | None = None) -> None:
        self.default_allow = default_allow
        self.down_policy = down_policy
        self.datacenter = datacenter
        self.token_ttl = token_ttl
        self._fetch = fetch
        self._clock = clock  # monotonic: cache ages
        self._wall = wall  # the epoch: token expiry
        self._fetch_local = fetch_local
        # A secondary datacenter's server: tokens its replica lacks (global ones, without token replication)
        # are read from the primary and live token_ttl; when the primary is unreachable, down_policy decides.
        self._fetch_remote = fetch_remote
        # A primary datacenter's server: a token its replica lacks may be one the leader has just written (a
        # follower applies it a moment later); the leader is asked (None from it: this server leads).
        self._fetch_leader = fetch_leader
        self._generation = 0  # bumped by changed(): entries of an older generation are stale
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._parsed: dict[tuple[str, int], Rules] = {}

    def changed(self) -> None:
        """The ACL tables changed (a server's replica): every cached token is resolved again."""
        self._generation += 1

    def _fresh(self, entry: _Entry) -> bool:
        if entry.generation != self._generation and self._fetch_local is not None:
            return False
        return not entry.remote or self._clock() - entry.fetched < self.token_ttl

    def cached(self, secret: str) -> Authorizer | None:
        """The hot path: a cached, still valid authorizer, without awaiting anything; None on a miss."""
        entry = self._cache.get(secret or ANONYMOUS_SECRET)
        if entry is None or entry.generation != self._generation or (
                entry.remote and self._clock() - entry.fetched >= self.token_ttl) or (
                entry.expires and expired(entry.token, self._wall())):
            return None
        return entry.authz

    async def resolve(self, secret: str, ask_leader: bool = True) -> Authorizer:
        """The authorizer of `secret` (anonymous for ""); raises ACLNotFound for an unknown secret."""
        return (await self.resolve_with_token(secret, ask_leader))[0]

    def _hit(self, secret: str) -> _Entry | None:
        entry = self._cache.get(secret)
        if entry is not None and self._fresh(entry) and not (entry.expires and expired(entry.token, self._wall())):
            return entry
        return None

    async def resolve_with_token(self, secret: str, ask_leader: bool = True) -> tuple[Authorizer, dict[str, Any]]:
        secret = secret or ANONYMOUS_SECRET
        hit = self._hit(secret)
        if hit is not None:
            return hit.authz, hit.token
        try:
            entry = await self._load(secret, ask_leader)
        except ACLNotFound:
            raise
        except Exception as e:  # no server (or primary) answers: the down policy decides
            return self._down(secret, self._cache.get(secret), e)
        return entry.authz, entry.token

    async def _load(self, secret: str, ask_leader: bool = True) -> _Entry:
        if self._fetch_local is None:
            return self._build(secret, *await self._fetch(secret), remote=True)
        index, bundle = self._fetch_local(secret)
        if bundle.get("Token") is None and secret != ANONYMOUS_SECRET:
            if self._fetch_remote is not None:
                return self._build(secret, *await self._fetch_remote(secret), remote=True)
            if self._fetch_leader is not None and ask_leader:
                from_leader = await self._ask_leader(secret)
                if from_leader is not None:
                    return self._build(secret, *from_leader, remote=True)
        return self._build(secret, index, bundle)

    async def _ask_leader(self, secret: str) -> tuple[int, dict[str, Any]] | None:
        """A follower's replica may not have applied a token the leader has just acknowledged: the leader's
        answer, or None when this server leads or no leader answers (then the replica's answer stands)."""
        assert self._fetch_leader is not None
        try:
            return await self._fetch_leader(secret)
        except Exception as e:
            log.debug("the leader did not answer for a token this replica lacks (%s): not found", e)
            return None

    async def bundle(self, secret: str, ask_leader: bool = True) -> tuple[int, dict[str, Any]]:
        """What resolving `secret` read (the token, policies and roles), for a client agent asking this server;
        ACLUnavailable when it could not be read and nothing usable is cached (the client's down_policy then
        decides), ACLNotFound for an unknown secret. A follower asking its leader passes `ask_leader=False`, so
        two servers that each believe the other leads (an election) do not ask each other in a circle."""
        secret = secret or ANONYMOUS_SECRET
        entry = self._hit(secret)
        if entry is None:
            try:
                entry = await self._load(secret, ask_leader)
            except ACLNotFound:
                raise
            except Exception as e:
                stale = self._cache.get(secret)
                if stale is None or self.down_policy not in ("extend-cache", "async-cache"):
                    raise ACLUnavailable(f"cannot resolve the token: {e}") from None
                log.warning("cannot resolve an ACL token (%s): down_policy %s keeps the cached one", e,
                            self.down_policy)
                entry = stale
        return entry.index, entry.bundle

    def resolve_local(self, secret: str) -> Authorizer:
        """For synchronous callers on a server (DNS answering): resolve from the local replica; an unknown
        secret gets the default policy's authorizer with no rules (it is the agent's own configuration)."""
        secret = secret or ANONYMOUS_SECRET
        hit = self._hit(secret)
        if hit is not None:
            return hit.authz
        if self._fetch_local is None:
            raise RuntimeError("resolve_local needs a local replica")
        try:
            return self._build(secret, *self._fetch_local(secret)).authz
        except ACLNotFound:
            log.error("the agent's DNS token matches no ACL token: DNS answers as with no rules")
            return Authorizer(Rules(), default_allow=self.default_allow, accessor=ANONYMOUS_ACCESSOR)

    def _build(self, secret: str, index: int, bundle: dict[str, Any], remote: bool = False) -> _Entry:
        token = bundle.get("Token")
        if token is None and secret == ANONYMOUS_SECRET:
            token = anonymous_token()  # before the leader has written it
        if token is None or expired(token, self._wall()):
            self._cache.pop(secret, None)
            raise ACLNotFound()
        rules = token_rules(token, bundle.get("Policies") or {}, bundle.get("Roles") or {}, self.datacenter,
                            self._parse)
        authz = Authorizer(rules, default_allow=self.default_allow, accessor=token["AccessorID"],
                           description=token.get("Description") or "")
        entry = _Entry(authz, token, self._generation, self._clock(), bool(token.get("ExpirationTime")), remote,
                       index, dict(bundle, Token=token))
        self._cache[secret] = entry
        self._cache.move_to_end(secret)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry

    def _down(self, secret: str, entry: _Entry | None, err: Exception) -> tuple[Authorizer, dict[str, Any]]:
        log.warning("cannot resolve an ACL token (%s): applying down_policy %s", err, self.down_policy)
        if self.down_policy in ("extend-cache", "async-cache") and entry is not None:
            return entry.authz, entry.token
        allow = self.down_policy == "allow"
        token = anonymous_token()
        return Authorizer(Rules(), default_allow=allow, accessor=ANONYMOUS_ACCESSOR), token

    def _parse(self, policy: dict[str, Any]) -> Rules:
        key = (policy["ID"], int(policy.get("ModifyIndex") or 0))
        rules = self._parsed.get(key)
        if rules is None:
            try:
                rules = parse_rules(policy.get("Rules") or "")
            except RulesError as e:  # stored rules were checked when written; never crash a request on them
                log.error("policy %s has rules that no longer parse (%s): it grants nothing", policy.get("Name"), e)
                rules = Rules()
            if len(self._parsed) > CACHE_SIZE:
                self._parsed.clear()
            self._parsed[key] = rules
        return rules

    def invalidate(self) -> None:
        """Forget every cached token (a client agent after it changed ACL objects itself)."""
        self._cache.clear()
