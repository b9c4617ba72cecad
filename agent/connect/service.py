"""Connect in the agent: the CA's replicated state, leaf certificates, authorize, and intentions.

CA state lives in the replicated tables (`ca_config` row "config", `ca_roots` one row per root,
with the signing key kept out of API answers). The leader creates the first root; a configuration
change with a new key (or key size) rotates to a new root that the old one cross-signs. Intentions
are stored as `service-intentions` config entries (as Consul ≥ 1.9 does) and served through both
the legacy `/v1/connect/intentions` API and `/v1/config`. Decisions are the pure functions of
`proconsul.connect.intentions`, over an index rebuilt only when the config entries change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.agent.config.model import AgentConfig
from proconsul.catalog import commands as c
from proconsul.catalog.store import Changes, StateStore
from proconsul.connect import ca
from proconsul.connect import intentions as ixns
from proconsul.connect.errors import CANotReady, ConcurrentChange, InvalidCAConfig
from proconsul.connect.spiffe import ServiceID, trust_domain_for

log = logging.getLogger("proconsul.connect")
ENTRY_PREFIX = "service-intentions/"
DECISION_CACHE = 8192
DECISION_TABLES = frozenset({"config_entries", "ca_config"})  # intentions; the trust domain


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial() -> int:
    return secrets.randbits(63) | 1


def _iso(t: float | None = None) -> str:
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


class Connect:
    """Connect's state for one agent: CA views, the leaf cache and the intention index."""

    def __init__(self, agent: ConnectHost) -> None:
        assert agent.store is not None, "Connect runs where the catalog is (servers and dev agents)"
        self.agent = agent
        self.store: StateStore = agent.store
        self._ixn_cache: tuple[int, list[dict[str, Any]]] | None = None
        self._leaves: dict[str, dict[str, Any]] = {}
        self._leaf_changed: dict[str, asyncio.Event] = {}
        self._leaf_index = 0
        # (target, client URI) -> encoded decision, and request bytes -> decision; both dropped by the
        # store's change notification when intentions or the CA (its trust domain) change, so a hit
        # costs one dict lookup and can never be stale.
        self._decisions: dict[tuple[str, str], bytes] = {}
        self._raw_decisions: dict[bytes, bytes] = {}
        self.store.subscribe(self._on_store_change)

    def _on_store_change(self, changes: Changes) -> None:
        if not changes.tables.isdisjoint(DECISION_TABLES):
            self._decisions, self._raw_decisions = {}, {}

    # ------------------------------------------------------------------ CA state
    def config(self) -> dict[str, Any] | None:
        return self.store.table_get("ca_config", "config")[1]

    def roots(self) -> tuple[int, list[dict[str, Any]]]:
        idx, rows = self.store.table_list("ca_roots")
        return idx, sorted(rows, key=lambda r: r["CreateIndex"])

    def active_root(self) -> ca.Root:
        _, rows = self.roots()
        for r in rows:
            if r["Active"]:
                return ca.Root({k: v for k, v in r.items() if k != "SigningKey"}, r["SigningKey"])
        raise CANotReady("the CA has no active root yet")

    @property
    def trust_domain(self) -> str:
        cfg = self.config()
        return cfg["TrustDomain"] if cfg else ""

    def roots_body(self) -> tuple[int, dict[str, Any]]:
        idx, rows = self.roots()
        public = [{k: v for k, v in r.items() if k != "SigningKey"} for r in rows]
        active = next((r["ID"] for r in rows if r["Active"]), "")
        return idx, {"ActiveRootID": active, "TrustDomain": self.trust_domain, "Roots": public}

    def leaf_ttl(self) -> float:
        cfg = self.config() or {}
        raw = (cfg.get("Config") or {}).get("LeafCertTTL") or "72h"
        return parse_duration(raw) if isinstance(raw, str) else float(raw)

    async def bootstrap(self) -> None:
        """On the leader: create the cluster's first root if there is none (idempotent)."""
        if self.config() is not None:
            return
        cluster_id = str(uuid.uuid4())
        td = trust_domain_for(cluster_id)
        root = ca.generate_root(td, _now(), _serial())
        settings = dict(self.agent.config.connect_ca_config or {})
        config = {"Provider": "consul", "ClusterID": cluster_id, "TrustDomain": td,
                  "Config": {"LeafCertTTL": settings.get("leaf_cert_ttl", "72h"), "RotationPeriod": "2160h",
                             "IntermediateCertTTL": "8760h", "PrivateKeyType": "ec", "PrivateKeyBits": 256},
                  "State": None, "ForceWithoutCrossSigning": False}
        await self.agent.backend.apply(c.Batch(commands=[
            c.TableSet(table="ca_config", key="config", row=config, cas=0),
            c.TableSet(table="ca_roots", key=root.row["ID"], row=dict(root.row, SigningKey=root.key_pem))]))
        log.info("Connect CA initialised: trust domain %s, root %s", td, root.row["ID"])

    async def set_config(self, body: dict[str, Any]) -> None:
        """Update the CA settings (keys as Consul spells them), rotating the root when the key changes."""
        cur = self.config()
        if cur is None:
            raise CANotReady("the CA is not initialised yet")
        provider = body.get("Provider") or "consul"
        if provider != "consul":
            raise InvalidCAConfig(f"Provider {provider!r} is not supported: only the built-in \"consul\" provider")
        new_cfg = body.get("Config") or {}
        if not isinstance(new_cfg, dict):
            raise InvalidCAConfig("Config must be an object")
        merged = dict(cur["Config"])
        for k, v in new_cfg.items():
            merged[k] = v
        if "LeafCertTTL" in merged:
            try:
                ttl = parse_duration(merged["LeafCertTTL"]) if isinstance(merged["LeafCertTTL"], str) else None
            except DurationError as e:
                raise InvalidCAConfig(f"Config.LeafCertTTL: {e}") from None
            if ttl is None or not 3600 <= ttl <= 365 * 86400:
                raise InvalidCAConfig("Config.LeafCertTTL must be a duration between 1h and 8760h")
        old = self.active_root()
        new_root: ca.Root | None = None
        if new_cfg.get("PrivateKey") or new_cfg.get("RootCert"):
            if not (new_cfg.get("PrivateKey") and new_cfg.get("RootCert")):
                raise InvalidCAConfig("Config.PrivateKey and Config.RootCert must be given together")
            new_root = ca.root_from_config(new_cfg["PrivateKey"], new_cfg["RootCert"])
            if new_root.row["ID"] == old.row["ID"]:
                new_root = None
        elif int(merged.get("PrivateKeyBits", 256)) != int(cur["Config"].get("PrivateKeyBits", 256)):
            new_root = ca.generate_root(self.trust_domain, _now(), _serial(), bits=int(merged["PrivateKeyBits"]))
        merged.pop("PrivateKey", None)  # never stored in the visible configuration
        cmds: list[c.Command] = []
        if new_root is not None:
            force = bool(body.get("ForceWithoutCrossSigning"))
            inter = [] if force else [ca.cross_sign(new_root, old, _now(), _serial())]
            row = dict(new_root.row, IntermediateCerts=inter, SigningKey=new_root.key_pem)
            _, rows = self.roots()
            for r in rows:
                if r["Active"]:
                    cmds.append(c.TableSet(table="ca_roots", key=r["ID"], row=dict(r, Active=False,
                                                                                  RotatedOutAt=_iso())))
            cmds.append(c.TableSet(table="ca_roots", key=row["ID"], row=row))
            log.info("Connect CA root rotation: %s -> %s (cross-signed: %s)", old.row["ID"], row["ID"], not force)
        cmds.append(c.TableSet(table="ca_config", key="config", row=dict(cur, Config=merged, Provider=provider),
                               cas=cur["ModifyIndex"]))
        results = await self.agent.backend.apply(c.Batch(commands=cmds))
        if results[-1] is False:
            raise ConcurrentChange("the CA configuration changed concurrently; retry")

    # ------------------------------------------------------------------ leaves (agent cache)
    def sign(self, csr_pem: str, service: str | None) -> dict[str, Any]:
        """What a server does for ConnectCA.Sign: check the CSR and sign it with the active root."""
        root = self.active_root()
        return ca.sign_leaf(csr_pem, root, self.trust_domain, _now(), _serial(), self.leaf_ttl(), service)

    def _issue(self, service: str) -> dict[str, Any]:
        key = ca.generate_key()
        uri = ServiceID(self.trust_domain, "default", self.agent.config.datacenter, service).uri
        csr = ca.make_csr(uri, key, service)
        leaf = self.sign(csr, service)
        self._leaf_index = max(self._leaf_index + 1, self.store.table_index("ca_roots"))
        return dict(leaf, PrivateKeyPEM=ca.key_pem(key), Namespace="default", Partition="default",
                    Kind="", CreateIndex=self._leaf_index, ModifyIndex=self._leaf_index,
                    RootID=self.active_root().row["ID"], Jitter=self.agent.rng.random())

    def _fresh(self, leaf: dict[str, Any] | None) -> bool:
        if leaf is None or leaf["RootID"] != self.active_root().row["ID"]:
            return False
        return not ca.leaf_needs_renewal(leaf["CertPEM"], _now(), leaf["Jitter"])

    def leaf(self, service: str) -> dict[str, Any]:
        cur = self._leaves.get(service)
        if not self._fresh(cur):
            cur = self._leaves[service] = self._issue(service)
            ev = self._leaf_changed.pop(service, None)
            if ev is not None:
                ev.set()
        return cur  # type: ignore[return-value]

    async def leaf_blocking(self, service: str, min_index: int, wait: float) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + wait
        leaf = self.leaf(service)
        while min_index and leaf["ModifyIndex"] <= min_index:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            ev = self._leaf_changed.setdefault(service, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), min(remaining, 60.0))
            except TimeoutError:
                pass
            leaf = self.leaf(service)  # also renews a leaf that aged past its renewal point
        return leaf

    async def watch_roots(self, stop: asyncio.Event) -> None:
        """Re-issue cached leaves as soon as the active root changes, waking blocked leaf queries."""
        index = 0
        while not stop.is_set():
            # Stale: a server watches its own replica (this also works while there is no leader).
            waiter = asyncio.ensure_future(self.agent.backend.query("table.list", {"table": "ca_roots"}, index, 300,
                                                                    "stale"))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter not in done:
                waiter.cancel()
                return
            index = waiter.result()[0]
            for service in list(self._leaves):
                self.leaf(service)

    # ------------------------------------------------------------------ intentions
    def authorize_body(self, target: str, uri: str) -> bytes:
        """The encoded /v1/agent/connect/authorize answer, cached per (target, URI) until the intentions
        or the CA (its trust domain) change."""
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

    def intentions(self) -> list[dict[str, Any]]:
        """Every intention (legacy shape), rebuilt only when config entries changed."""
        idx = self.store.table_index("config_entries")
        if self._ixn_cache is None or self._ixn_cache[0] != idx:
            _, rows = self.store.table_list("config_entries")
            flat = []
            for row in rows:
                if row["Kind"] == "service-intentions":
                    flat.extend(ixns.from_config_entry(row))
            self._ixn_cache = (idx, ixns.sort_by_precedence(flat))
        return self._ixn_cache[1]

    async def upsert(self, ixn: dict[str, Any], replace_id: str | None = None) -> dict[str, Any]:
        """Add or replace one intention in its destination's config entry (CAS, retried)."""
        for _ in range(5):
            key = ENTRY_PREFIX + ixn["DestinationName"]
            _, entry = self.store.table_get("config_entries", key)
            current = ixns.from_config_entry(entry) if entry else []
            kept = [i for i in current if i["SourceName"] != ixn["SourceName"] and (not replace_id or i["ID"] != replace_id)]
            new = ixns.to_config_entry(ixn["DestinationName"], kept + [ixn], entry.get("Meta") if entry else None)
            ok = await self.agent.backend.apply(c.TableSet(table="config_entries", key=key, row=new,
                                                           cas=entry["ModifyIndex"] if entry else 0))
            if ok:
                return ixn
        raise ConcurrentChange("intentions changed concurrently; retry")

    async def remove(self, pred: Any) -> bool:
        removed = False
        for ixn in [i for i in self.intentions() if pred(i)]:
            for _ in range(5):
                key = ENTRY_PREFIX + ixn["DestinationName"]
                _, entry = self.store.table_get("config_entries", key)
                if entry is None:
                    break
                kept = [i for i in ixns.from_config_entry(entry) if i["SourceName"] != ixn["SourceName"]]
                cmd: c.Command = (c.TableSet(table="config_entries", key=key, cas=entry["ModifyIndex"],
                                             row=ixns.to_config_entry(ixn["DestinationName"], kept, entry.get("Meta")))
                                  if kept else c.TableDelete(table="config_entries", key=key, cas=entry["ModifyIndex"]))
                if await self.agent.backend.apply(cmd):
                    removed = True
                    break
        return removed

    def find(self, ixn_id: str) -> dict[str, Any] | None:
        return next((i for i in self.intentions() if i["ID"] == ixn_id), None)

    def exact(self, source: str, destination: str) -> dict[str, Any] | None:
        return next((i for i in self.intentions() if i["SourceName"] == source and i["DestinationName"] == destination),
                    None)

    # ------------------------------------------------------------------ leader duties
    async def run_duties(self, wait_leadership: Callable[[asyncio.Event], Awaitable[bool]],
                         stop: asyncio.Event) -> None:
        """While the agent runs: the first leader creates the CA; leaves follow root rotations."""

        async def bootstrap_when_leader() -> None:
            # The first leader creates the CA (through Raft); bootstrap() is a no-op once it exists.
            while not stop.is_set():
                if await wait_leadership(stop):
                    try:
                        await self.bootstrap()
                        return
                    except Exception as e:  # leadership moved mid-way: the next leader retries
                        log.warning("Connect CA bootstrap did not complete: %s", e)
                        await asyncio.sleep(0.5)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(bootstrap_when_leader())
            tg.create_task(self.watch_roots(stop))


def iso_time(t: float | None = None) -> str:
    """Consul's timestamp format (RFC 3339 with microseconds, UTC)."""
    return _iso(t)
