"""Connect on a server (and a dev agent): the CA's replicated state, signing, and intention storage.

CA state lives in the replicated tables (`ca_config` row "config", `ca_roots` one row per root,
with the signing key kept out of every API answer and RPC reply). The leader creates the first root;
a configuration change with a new key (or key size) rotates to a new root that the old one
cross-signs. Intentions are stored as `service-intentions` config entries (as Consul ≥ 1.9 does) and
served through both the legacy `/v1/connect/intentions` API and `/v1/config`. Client agents reach
these operations over RPC (`connect.*`, registered by `register_rpc`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.agent.connect.base import ConnectBase, ConnectHost, intentions_of, iso_time, now_utc
from proconsul.agent.connect.secondary import SecondaryCA
from proconsul.catalog import commands as c
from proconsul.catalog.queries import public_roots
from proconsul.catalog.store import Changes, StateStore
from proconsul.connect import ca
from proconsul.connect import intentions as ixns
from proconsul.connect.errors import CANotReady, ConcurrentChange, InvalidCAConfig
from proconsul.connect.spiffe import trust_domain_for

log = logging.getLogger("proconsul.connect")
ENTRY_PREFIX = "service-intentions/"
DECISION_TABLES = frozenset({"config_entries", "ca_config", "ca_roots"})  # intentions; the trust domain


def _serial() -> int:
    return secrets.randbits(63) | 1


class Connect(ConnectBase):
    """Connect where the catalog is: reads come from the local replica, writes go through Raft."""

    def __init__(self, agent: ConnectHost) -> None:
        super().__init__(agent)
        assert agent.store is not None, "server-side Connect runs where the catalog is"
        self.store: StateStore = agent.store
        self._ixn_cache: tuple[int, list[dict[str, Any]]] | None = None
        self._roots_cache: tuple[int, dict[str, Any]] | None = None
        self.store.subscribe(self._on_store_change)
        self.secondary: SecondaryCA | None = None  # set when this server's datacenter is not the primary

    def _on_store_change(self, changes: Changes) -> None:
        if not changes.tables.isdisjoint(DECISION_TABLES):
            self.forget_decisions()

    # ------------------------------------------------------------------ reads
    def config(self) -> dict[str, Any] | None:
        return self.store.table_get("ca_config", "config")[1]

    def _trust_domain(self) -> str:
        cfg = self.config()
        return cfg["TrustDomain"] if cfg else ""

    def roots_body(self) -> tuple[int, dict[str, Any]]:
        idx = self.store.table_index("ca_roots", "ca_config")
        if self._roots_cache is None or self._roots_cache[0] != idx:
            _, rows = self.store.table_list("ca_roots")
            self._roots_cache = (idx, public_roots(rows, self._trust_domain()))
        return self._roots_cache

    def active_root(self) -> ca.Root:
        _, rows = self.store.table_list("ca_roots")
        for r in rows:
            if r["Active"]:
                return ca.Root({k: v for k, v in r.items() if k != "SigningKey"}, r["SigningKey"])
        raise CANotReady("the CA has no active root yet")

    def leaf_ttl(self) -> float:
        cfg = self.config() or {}
        raw = (cfg.get("Config") or {}).get("LeafCertTTL") or "72h"
        return parse_duration(raw) if isinstance(raw, str) else float(raw)

    def intentions(self) -> list[dict[str, Any]]:
        """Every intention (legacy shape), rebuilt only when config entries changed."""
        idx = self.store.table_index("config_entries")
        if self._ixn_cache is None or self._ixn_cache[0] != idx:
            _, rows = self.store.table_list("config_entries")
            self._ixn_cache = (idx, intentions_of(rows))
        return self._ixn_cache[1]

    def intentions_index(self) -> int:
        return self.store.table_index("config_entries")

    async def wait_roots(self, min_index: int, wait: float) -> None:
        await self.agent.backend.query("table.list", {"table": "ca_roots"}, min_index, wait)

    async def wait_intentions(self, min_index: int, wait: float) -> None:
        await self.agent.backend.query("config.list", {"kind": "service-intentions"}, min_index, wait)

    # ------------------------------------------------------------------ the CA
    def sign(self, csr_pem: str, service: str | None) -> dict[str, Any]:
        """What a server does for ConnectCA.Sign: check the CSR and sign it with the active root."""
        root = self.active_root()
        return ca.sign_leaf(csr_pem, root, self._trust_domain(), now_utc(), _serial(), self.leaf_ttl(), service)

    async def sign_csr(self, csr_pem: str, service: str) -> dict[str, Any]:
        return self.sign(csr_pem, service)

    async def bootstrap(self) -> None:
        """On the leader: create the cluster's first root if there is none (idempotent); a datacenter
        promoted to primary whose CA still signs with an intermediate takes a root of its own."""
        if self.config() is not None:
            await self._own_root_after_promotion()
            return
        cluster_id = str(uuid.uuid4())
        td = trust_domain_for(cluster_id)
        root = ca.generate_root(td, now_utc(), _serial())
        settings = dict(self.agent.config.connect_ca_config or {})
        config = {"Provider": "consul", "ClusterID": cluster_id, "TrustDomain": td,
                  "Config": {"LeafCertTTL": settings.get("leaf_cert_ttl", "72h"), "RotationPeriod": "2160h",
                             "IntermediateCertTTL": "8760h", "PrivateKeyType": "ec", "PrivateKeyBits": 256},
                  "State": None, "ForceWithoutCrossSigning": False}
        await self.agent.backend.apply(c.Batch(commands=[
            c.TableSet(table="ca_config", key="config", row=config, cas=0),
            c.TableSet(table="ca_roots", key=root.row["ID"], row=dict(root.row, SigningKey=root.key_pem))]))
        log.info("Connect CA initialised: trust domain %s, root %s", td, root.row["ID"])

    async def _own_root_after_promotion(self) -> None:
        """This datacenter was a secondary (its active root carries the intermediate it signed with) and
        is now the primary: make a new root in the same trust domain and make it active. The old roots
        stay in the bundle, inactive, so leaves issued under them keep verifying until they are renewed
        (every cached leaf is re-issued at once when the active root changes); secondaries that follow
        us get intermediates from the new root."""
        _, rows = self.store.table_list("ca_roots")
        active = next((r for r in rows if r.get("Active")), None)
        if active is None or not active.get("SigningCert"):
            return
        root = ca.generate_root(self._trust_domain(), now_utc(), _serial())
        cmds: list[c.Command] = [c.TableSet(table="ca_roots", key=r["ID"], row={
            k: v for k, v in dict(r, Active=False, RotatedOutAt=iso_time()).items()
            if k not in ("SigningKey", "SigningCert", "CreateIndex", "ModifyIndex")}) for r in rows if r.get("Active")]
        cmds.append(c.TableSet(table="ca_roots", key=root.row["ID"], row=dict(root.row, SigningKey=root.key_pem)))
        cfg = dict(self.config() or {})
        cfg.pop("CreateIndex", None)
        cfg.pop("ModifyIndex", None)
        cmds.append(c.TableSet(table="ca_config", key="config", row=dict(cfg, State=None)))
        await self.agent.backend.apply(c.Batch(commands=cmds))
        log.warning("this datacenter is now the primary: its CA has a root of its own (%s); the previous "
                    "primary's roots stay trusted until leaves issued under them are renewed", root.row["ID"])

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
            new_root = ca.generate_root(self._trust_domain(), now_utc(), _serial(),
                                        bits=int(merged["PrivateKeyBits"]))
        merged.pop("PrivateKey", None)  # never stored in the visible configuration
        cmds: list[c.Command] = []
        if new_root is not None:
            force = bool(body.get("ForceWithoutCrossSigning"))
            inter = [] if force else [ca.cross_sign(new_root, old, now_utc(), _serial())]
            row = dict(new_root.row, IntermediateCerts=inter, SigningKey=new_root.key_pem)
            _, rows = self.store.table_list("ca_roots")
            for r in rows:
                if r["Active"]:
                    cmds.append(c.TableSet(table="ca_roots", key=r["ID"], row=dict(r, Active=False,
                                                                                  RotatedOutAt=iso_time())))
            cmds.append(c.TableSet(table="ca_roots", key=row["ID"], row=row))
            log.info("Connect CA root rotation: %s -> %s (cross-signed: %s)", old.row["ID"], row["ID"], not force)
        cmds.append(c.TableSet(table="ca_config", key="config", row=dict(cur, Config=merged, Provider=provider),
                               cas=cur["ModifyIndex"]))
        results = await self.agent.backend.apply(c.Batch(commands=cmds))
        if results[-1] is False:
            raise ConcurrentChange("the CA configuration changed concurrently; retry")

    # ------------------------------------------------------------------ intention writes
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

    async def remove_ids(self, ids: list[str]) -> bool:
        """Remove the intentions with these IDs; False if none of them existed."""
        removed = False
        wanted = set(ids)
        for ixn in [i for i in self.intentions() if i["ID"] in wanted]:
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

    # ------------------------------------------------------------------ RPC for client agents
    def register_rpc(self, register: Callable[[str, Callable[[dict[str, Any]], Awaitable[Any]]], None]) -> None:
        """Serve client agents' Connect calls on the server port (CSR signing and the writes)."""

        async def sign(args: dict[str, Any]) -> Any:
            return self.sign(str(args["csr"]), str(args["service"]))

        async def set_config(args: dict[str, Any]) -> Any:
            await self.set_config(dict(args["config"]))
            return True

        async def upsert(args: dict[str, Any]) -> Any:
            return await self.upsert(dict(args["intention"]), args.get("replace_id") or None)

        async def remove(args: dict[str, Any]) -> Any:
            return await self.remove_ids([str(i) for i in args["ids"]])

        async def sign_intermediate(args: dict[str, Any]) -> Any:
            """A secondary datacenter's intermediate CA, signed by our active root (any server of the
            primary can: the root's key is in every server's replica)."""
            if self.secondary is not None:
                raise InvalidCAConfig("only the primary datacenter signs intermediate CAs")
            pem = ca.sign_intermediate(str(args.get("csr", "")), self.active_root(), self._trust_domain(), now_utc(),
                                       _serial())
            log.info("signed an intermediate CA for datacenter %s", args.get("dc", "?"))
            return pem

        register("connect.sign", sign)
        register("connect.set_config", set_config)
        register("connect.upsert", upsert)
        register("connect.remove", remove)
        register("connect.sign_intermediate", sign_intermediate)

    # ------------------------------------------------------------------ leader duties
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
            await self.refresh_leaves()

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
            if self.secondary is not None:  # the primary's roots and our intermediate, never a root of our own
                tg.create_task(self.secondary.run(wait_leadership, stop))
            else:
                tg.create_task(bootstrap_when_leader())
            tg.create_task(self.watch_roots(stop))
