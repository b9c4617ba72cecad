"""Token resolution: the cache, expiry, the down policy, and the agent-token file — pure, with a fake clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from proconsul.agent.acl.builtin import GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_RULES
from proconsul.agent.acl.errors import ACLNotFound
from proconsul.agent.acl.resolver import Resolver
from proconsul.agent.acl.state import rfc3339
from proconsul.agent.acl.tokens import load_agent_tokens, save_agent_tokens

POLICIES = {GLOBAL_MANAGEMENT_ID: {"ID": GLOBAL_MANAGEMENT_ID, "Name": "global-management",
                                   "Rules": GLOBAL_MANAGEMENT_RULES, "ModifyIndex": 1},
            "p": {"ID": "p", "Name": "read", "Rules": 'key_prefix "" { policy = "read" }', "ModifyIndex": 2}}


class Source:
    def __init__(self) -> None:
        self.tokens = {"s": {"AccessorID": "a", "SecretID": "s", "Policies": [{"ID": "p"}]}}
        self.calls = 0
        self.down = False

    async def fetch(self, secret: str):
        self.calls += 1
        if self.down:
            raise ConnectionError("no server")
        return 1, {"Token": self.tokens.get(secret), "Policies": POLICIES, "Roles": {}}


def resolver(src: Source, now: list[float], down_policy: str = "extend-cache") -> Resolver:
    return Resolver(default_allow=False, down_policy=down_policy, datacenter="dc1", token_ttl=30.0, fetch=src.fetch,
                    clock=lambda: now[0], wall=lambda: now[0])


def run(coro):
    return asyncio.run(coro)


def test_cache_lives_token_ttl_on_a_client_agent():
    src, now = Source(), [1000.0]
    r = resolver(src, now)
    assert run(r.resolve("s")).allowed("key", "x", "read")
    assert r.cached("s") is not None and src.calls == 1
    now[0] += 31
    assert r.cached("s") is None
    run(r.resolve("s"))
    assert src.calls == 2


def test_unknown_and_expired_tokens_are_not_found():
    src, now = Source(), [1000.0]
    r = resolver(src, now)
    with pytest.raises(ACLNotFound):
        run(r.resolve("nope"))
    src.tokens["e"] = {"AccessorID": "b", "SecretID": "e", "Policies": [], "ExpirationTime": rfc3339(1060.0)}
    run(r.resolve("e"))
    now[0] = 1061.0
    assert r.cached("e") is None
    with pytest.raises(ACLNotFound):
        run(r.resolve("e"))


@pytest.mark.parametrize(("policy", "cached_allowed", "uncached_allowed"),
                         [("extend-cache", True, False), ("async-cache", True, False), ("allow", True, True),
                          ("deny", True, False)])
def test_down_policy(policy, cached_allowed, uncached_allowed):
    src, now = Source(), [1000.0]
    r = resolver(src, now, policy)
    run(r.resolve("s"))
    now[0] += 31
    src.down = True
    got = run(r.resolve("s")).allowed("key", "x", "read")
    assert got == (cached_allowed if policy != "deny" else False)
    assert run(r.resolve("other")).allowed("key", "x", "read") == uncached_allowed


def test_server_cache_follows_table_changes():
    src, now = Source(), [1000.0]
    r = Resolver(default_allow=False, down_policy="extend-cache", datacenter="dc1", token_ttl=30.0, fetch=src.fetch,
                 clock=lambda: now[0], wall=lambda: now[0],
                 fetch_local=lambda s: (1, {"Token": src.tokens.get(s), "Policies": POLICIES, "Roles": {}}))
    assert r.resolve_local("s").allowed("key", "x", "read")
    assert r.cached("s") is not None
    r.changed()
    assert r.cached("s") is None


def test_agent_tokens_persist_in_the_data_dir(tmp_path):
    cfg = SimpleNamespace(dev=False, data_dir=str(tmp_path), acl=SimpleNamespace(
        enable_token_persistence=True, tokens={"agent": "from-config"}))
    assert load_agent_tokens(cfg) == {"agent": "from-config"}
    save_agent_tokens(str(tmp_path), {"agent": "from-config", "default": "set-by-api"}, cfg.acl.tokens)
    assert load_agent_tokens(cfg) == {"agent": "from-config", "default": "set-by-api"}
    assert (tmp_path / "acl-tokens.json").stat().st_mode & 0o777 == 0o600


def _secondary(down_policy: str, now: list[float]) -> tuple[Resolver, Source]:
    """A secondary datacenter's server: its replica has the policies but no global tokens; the primary has them."""
    primary = Source()

    def local(secret: str):
        return 1, {"Token": None, "Policies": POLICIES, "Roles": {}}

    async def never(secret: str):
        raise AssertionError("a server reads its own replica, not another server")

    r = Resolver(default_allow=False, down_policy=down_policy, datacenter="dc2", token_ttl=30.0, fetch=never,
                 clock=lambda: now[0], wall=lambda: now[0], fetch_local=local, fetch_remote=primary.fetch)
    return r, primary


@pytest.mark.parametrize("down_policy, seen_reads, unseen_reads, cached_works", [
    ("extend-cache", True, False, True), ("async-cache", True, False, True), ("allow", True, True, False),
    ("deny", False, False, False)])
def test_a_secondary_asks_the_primary_and_follows_down_policy_without_it(down_policy, seen_reads, unseen_reads,
                                                                         cached_works):
    now = [1000.0]
    r, primary = _secondary(down_policy, now)
    primary.tokens["u"] = {"AccessorID": "b", "SecretID": "u", "Policies": [{"ID": "p"}]}
    assert run(r.resolve("s")).allowed("key", "x", "read") and primary.calls == 1
    run(r.resolve("s"))
    assert primary.calls == 1  # cached for token_ttl
    with pytest.raises(ACLNotFound):
        run(r.resolve("nope"))
    primary.down = True
    now[0] += 31  # past token_ttl: the primary is asked again, and does not answer
    assert run(r.resolve("s")).allowed("key", "x", "read") is seen_reads
    assert run(r.resolve("u")).allowed("key", "x", "read") is unseen_reads
    index, bundle = run(r.bundle("s")) if cached_works else (None, None)
    assert bundle is None or bundle["Token"]["SecretID"] == "s"
    if not cached_works:  # a client agent asking this server hears it cannot tell, and applies its own policy
        from proconsul.agent.acl.resolver import ACLUnavailable

        with pytest.raises(ACLUnavailable):
            run(r.bundle("s"))


def test_a_follower_asks_its_leader_for_a_token_its_replica_has_not_applied_yet():
    """The leader acknowledged a new token; a follower that has not applied it yet asks the leader instead of
    answering "ACL not found". A server that leads (the leader answers None) or no leader: the replica stands."""
    now = [1000.0]
    leader = Source()
    leader.tokens["new"] = {"AccessorID": "n", "SecretID": "new", "Policies": [{"ID": "p"}]}
    asked: list[str] = []
    leads = [False]

    def local(secret: str):
        return 1, {"Token": None, "Policies": POLICIES, "Roles": {}}

    async def fetch_leader(secret: str):
        asked.append(secret)
        return None if leads[0] else await leader.fetch(secret)

    async def never(secret: str):
        raise AssertionError("a server reads its own replica, not another server")

    r = Resolver(default_allow=False, down_policy="extend-cache", datacenter="dc1", token_ttl=30.0, fetch=never,
                 clock=lambda: now[0], wall=lambda: now[0], fetch_local=local, fetch_leader=fetch_leader)
    assert run(r.resolve("new")).allowed("key", "x", "read") and asked == ["new"]
    with pytest.raises(ACLNotFound):
        run(r.resolve("nope"))  # the leader does not know it either
    with pytest.raises(ACLNotFound):  # a leader's question from a follower is answered from its replica only
        run(r.bundle("other", ask_leader=False))
    assert asked == ["new", "nope"]
    leads[0] = True
    with pytest.raises(ACLNotFound):
        run(r.resolve("gone"))
    leader.down = True
    leads[0] = False
    with pytest.raises(ACLNotFound):  # no leader answers: the replica's "not found" stands, never down_policy
        run(r.resolve("unreachable"))
