"""What the agent's Connect does the same way on servers and client agents: the leaf cache, authorize
with its decision caches, and intention lookups.

A subclass says where the CA state and intentions come from (`service.Connect`: the local replica of
the state store; `client.ClientConnect`: a server, over RPC, cached here) and how a CSR gets signed.
Leaves are cached per service and renewed when 60–90% of their life has passed (a random point per
leaf, as Consul spreads renewals) or the active root changes; `leaf_blocking` waits for a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from proconsul.agent.cluster.caller import acting_as, caller_token
from proconsul.agent.config.model import AgentConfig
from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore
from proconsul.connect import ca
from proconsul.connect import intentions as ixns
from proconsul.connect.chain import gateway_tls
from proconsul.connect.spiffe import ServiceID, parse_service

log = logging.getLogger("proconsul.connect")
DECISION_CACHE = 8192


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_time(t: float | None = None) -> str:
    """Consul's timestamp format (RFC 3339 with microseconds, UTC)."""
    return dt.datetime.fromtimestamp(t if t is not None else time.time(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Backend(Protocol):
    """The agent's way to the replicated state: the server role (or, on a client agent, RPC to one)."""

    async def apply(self, cmd: c.Command) -> Any: ...

    async def query(self, name: str, args: dict[str, Any], min_index: int = 0, wait: float = 300.0,
                    mode: str = "leader") -> tuple[int, Any]: ...


class ConnectHost(Protocol):
    """What Connect needs of the agent that runs it."""

    config: AgentConfig
    rng: random.Random
    store: StateStore | None
    backend: Backend


class ConnectBase:
    def __init__(self, agent: ConnectHost) -> None:
        self.agent = agent
        self._leaves: dict[str, dict[str, Any]] = {}
        self._leaf_locks: dict[str, asyncio.Lock] = {}
        self._leaf_tokens: dict[str, str] = {}  # service -> the token its leaf was asked with
        self._leaf_changed: dict[str, asyncio.Event] = {}
        self._leaf_index = 0
        # (target, client URI) -> encoded decision, and request bytes -> decision; both dropped whenever
        # intentions or the CA (its trust domain) change, so a hit costs one dict lookup and is never stale.
        self._decisions: dict[tuple[str, str], bytes] = {}
        self._raw_decisions: dict[bytes, bytes] = {}

    # ------------------------------------------------------------------ what a subclass provides
    def config(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def roots_body(self) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def intentions(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def intentions_index(self) -> int:
        raise NotImplementedError

    async def wait_roots(self, min_index: int, wait: float) -> None:
        raise NotImplementedError

    async def wait_intentions(self, min_index: int, wait: float) -> None:
        raise NotImplementedError

    async def sign_csr(self, csr_pem: str, service: str) -> dict[str, Any]:
        raise NotImplementedError

    async def set_config(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def upsert(self, ixn: dict[str, Any], replace_id: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def remove_ids(self, ids: list[str]) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------------ CA views
    @property
    def trust_domain(self) -> str:
        return self.roots_body()[1].get("TrustDomain", "")

    def active_root_id(self) -> str:
        return self.roots_body()[1].get("ActiveRootID", "")

    def forget_decisions(self) -> None:
        self._decisions, self._raw_decisions = {}, {}

    # ------------------------------------------------------------------ leaves (the agent's cache)
    async def _issue(self, service: str, dns_names: list[str]) -> dict[str, Any]:
        uri = ServiceID(self.trust_domain, "default", self.agent.config.datacenter, service).uri
        parse_service(uri)  # a name no SPIFFE ID can hold is refused (InvalidSpiffeID: a 400) before signing
        key = ca.generate_key()
        leaf = await self.sign_csr(ca.make_csr(uri, key, service, dns_names), service)
        self._leaf_index = max(self._leaf_index + 1, self.roots_body()[0])
        return dict(leaf, PrivateKeyPEM=ca.key_pem(key), Namespace="default", Partition="default",
                    Kind="", CreateIndex=self._leaf_index, ModifyIndex=self._leaf_index,
                    RootID=self.active_root_id(), Jitter=self.agent.rng.random(), DNSSANs=dns_names)

    def _fresh(self, leaf: dict[str, Any] | None) -> bool:
        if leaf is None or leaf["RootID"] != self.active_root_id():
            return False
        return not ca.leaf_needs_renewal(leaf["CertPEM"], now_utc(), leaf["Jitter"])

    async def dns_sans(self, service: str) -> list[str]:
        """The DNS names `service`'s leaf carries: an ingress gateway serving TLS gets Consul's
        (`*.ingress.<domain>`, `*.ingress.<dc>.<domain>`, its entry's Hosts); every other service none."""
        try:
            _, entry = await self.agent.backend.query("config.get", {"kind": "ingress-gateway", "name": service})
        except Exception as e:  # the servers may be busy: keep the names the leaf has
            log.debug("cannot read the ingress-gateway entry %r for its leaf's names: %s", service, e)
            cur = self._leaves.get(service)
            return list(cur["DNSSANs"]) if cur is not None else []
        cfg = self.agent.config
        return gateway_tls.dns_sans(entry, cfg.datacenter, cfg.domain, cfg.alt_domain)

    async def leaf(self, service: str) -> dict[str, Any]:
        """The service's cached leaf, issued anew when missing, aging, from an old root, or when the DNS
        names it must carry changed (an ingress gateway's TLS hosts)."""
        names = await self.dns_sans(service)
        cur = self._leaves.get(service)
        if self._fresh(cur) and cur["DNSSANs"] == names:  # type: ignore[index]
            return cur  # type: ignore[return-value]
        token = caller_token()
        if token is not None:  # renewals after a root change are signed with the token that asked (Consul)
            self._leaf_tokens[service] = token
        lock = self._leaf_locks.setdefault(service, asyncio.Lock())
        async with lock:  # one signature per service however many callers ask at once
            cur = self._leaves.get(service)
            if not self._fresh(cur) or cur["DNSSANs"] != names:  # type: ignore[index]
                cur = self._leaves[service] = await self._issue(service, names)
                ev = self._leaf_changed.pop(service, None)
                if ev is not None:
                    ev.set()
        return cur  # type: ignore[return-value]

    async def leaf_blocking(self, service: str, min_index: int, wait: float) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + wait
        leaf = await self.leaf(service)
        while min_index and leaf["ModifyIndex"] <= min_index:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            ev = self._leaf_changed.setdefault(service, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), min(remaining, 60.0))
            except TimeoutError:
                pass
            leaf = await self.leaf(service)  # also renews a leaf that aged past its renewal point
        return leaf

    async def refresh_leaves(self) -> None:
        """After a root change: re-issue cached leaves at once, waking blocked leaf queries."""
        for service in list(self._leaves):
            try:
                token = self._leaf_tokens.get(service)
                with acting_as(token) if token is not None else contextlib.nullcontext():
                    await self.leaf(service)
            except Exception as e:  # the servers may be busy: the next call renews it
                log.warning("could not renew the leaf of %s after a root change: %s", service, e)

    # ------------------------------------------------------------------ intentions
    def authorize_body(self, target: str, uri: str) -> bytes:
        """The encoded /v1/agent/connect/authorize answer, cached per (target, URI)."""
        body = self._decisions.get((target, uri))
        if body is None:
            allowed, reason = ixns.authorize(self.intentions(), target, uri, self.trust_domain,
                                             self.agent.config.intention_default_allow)
            body = orjson.dumps({"Authorized": allowed, "Reason": reason})
            if len(self._decisions) < DECISION_CACHE:
                self._decisions[(target, uri)] = body
        return body

    def authorize_raw(self, raw: bytes) -> bytes | None:
        """A cached answer for exactly these request bytes (the cache only holds valid ones)."""
        return self._raw_decisions.get(raw)

    def remember_raw(self, raw: bytes, answer: bytes) -> None:
        if len(raw) <= 1024 and len(self._raw_decisions) < DECISION_CACHE:
            self._raw_decisions[raw] = answer

    def find(self, ixn_id: str) -> dict[str, Any] | None:
        return next((i for i in self.intentions() if i["ID"] == ixn_id), None)

    def exact(self, source: str, destination: str) -> dict[str, Any] | None:
        return next((i for i in self.intentions() if i["SourceName"] == source and i["DestinationName"] == destination),
                    None)

    # ------------------------------------------------------------------ running
    async def run_duties(self, wait_leadership: Callable[[asyncio.Event], Awaitable[bool]],
                         stop: asyncio.Event) -> None:
        raise NotImplementedError


def intentions_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every intention (legacy shape) in `service-intentions` config entries, by precedence."""
    flat = []
    for row in rows:
        if row["Kind"] == "service-intentions":
            flat.extend(ixns.from_config_entry(row))
    return ixns.sort_by_precedence(flat)
