"""The CA of a secondary datacenter: the primary's roots, and an intermediate of our own to sign with.

A secondary never creates a root. Its leader holds a blocking query open on the primary's roots
(through the router); whenever the primary's active root is not the one our intermediate chains to
(at first, and after a rotation there), it makes a new key, has the primary sign an intermediate CA
for it (`connect.sign_intermediate`), and writes, in one Raft entry: the primary's CA identity
(trust domain, cluster ID) and its roots, the active one carrying our intermediate (`SigningCert`,
first of `IntermediateCerts`) and its key. Leaves signed here then verify against the primary's root
bundle, so mTLS works across datacenters. While the primary is unreachable the intermediate we have
keeps signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.agent.cluster.replication import query_primary
from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore
from proconsul.connect import ca

log = logging.getLogger("proconsul.connect")
WAIT = 300.0


class SecondaryCA:
    def __init__(self, store: StateStore, datacenter: str, primary: str, forward_dc: Callable[..., Awaitable[Any]],
                 apply: Callable[[c.Command], Awaitable[Any]], leaf_ttl: str = "72h") -> None:
        self.store = store
        self.datacenter = datacenter
        self.primary = primary
        self.forward_dc = forward_dc
        self.apply = apply
        self.leaf_ttl = leaf_ttl
        self.index = 0
        self.last_error = ""
        self.last_success = 0.0  # wall-clock time of the last answer from the primary
        self.intermediates = 0  # intermediates the primary signed for us since start

    def report(self) -> dict[str, Any]:
        return {"SourceDatacenter": self.primary, "RootsIndex": self.index, "LastSuccess": self.last_success,
                "LastError": self.last_error, "IntermediatesSigned": self.intermediates}

    async def run(self, wait_leadership: Callable[[asyncio.Event], Awaitable[bool]], stop: asyncio.Event) -> None:
        backoff = 0.25
        while not stop.is_set():
            if not await wait_leadership(stop):
                return
            try:
                await self.sync_once(stop)
                backoff = 0.25
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_error = str(e) or type(e).__name__
                log.warning("secondary CA: cannot follow the primary %s's roots: %s; retrying in %.1fs",
                            self.primary, self.last_error, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def sync_once(self, stop: asyncio.Event) -> None:
        answer = await query_primary(self.forward_dc, self.primary, "connect.roots", {}, self.index, WAIT, stop)
        if answer is None:
            return
        index, body = answer
        await self.adopt(body)
        self.index = index if index >= self.index else 0
        self.last_success, self.last_error = time.time(), ""

    async def adopt(self, body: dict[str, Any]) -> None:
        """Make our CA tables follow the primary's roots `body` (Consul's /v1/connect/ca/roots shape)."""
        td, roots, active_id = body.get("TrustDomain") or "", body.get("Roots") or [], body.get("ActiveRootID")
        active = next((r for r in roots if r["ID"] == active_id), None)
        if not td or active is None:
            raise RuntimeError(f"the primary {self.primary} has no active CA root yet")
        _, mine = self.store.table_list("ca_roots")
        _, cfg = self.store.table_get("ca_config", "config")
        current = next((r for r in mine if r.get("Active")), None)
        cmds: list[c.Command] = []
        if current is None or current["ID"] != active_id or not current.get("SigningCert") or (
                cfg or {}).get("TrustDomain") != td:
            key = ca.generate_key()
            csr = ca.make_intermediate_csr(td, self.datacenter, key)
            pem = await self.forward_dc(self.primary, "connect.sign_intermediate", {"csr": csr, "dc": self.datacenter},
                                        timeout=30.0, idempotent=True)
            if not ca.verify_signed_by(pem, active["RootCert"]):
                raise RuntimeError("the primary's intermediate is not signed by its active root")
            current = dict(active, IntermediateCerts=[pem, *(active.get("IntermediateCerts") or [])],
                           SigningCert=pem, SigningKey=ca.key_pem(key))
            self.intermediates += 1
            log.info("secondary CA: intermediate for root %s signed by the primary %s", active_id, self.primary)
        wanted = {r["ID"]: _plain(r) for r in roots if r["ID"] != active_id}
        wanted[active_id] = _plain(current)
        for r in mine:
            if r["ID"] not in wanted:
                cmds.append(c.TableDelete(table="ca_roots", key=r["ID"]))
        have = {r["ID"]: _plain(r) for r in mine}
        for rid, row in wanted.items():
            if have.get(rid) != row:
                cmds.append(c.TableSet(table="ca_roots", key=rid, row=row))
        cluster_id = td.split(".")[0]
        if cfg is None or cfg.get("TrustDomain") != td:
            new_cfg = {"Provider": "consul", "ClusterID": cluster_id, "TrustDomain": td,
                       "Config": dict((cfg or {}).get("Config") or {"LeafCertTTL": self.leaf_ttl,
                                                                    "PrivateKeyType": "ec", "PrivateKeyBits": 256}),
                       "State": {"PrimaryDatacenter": self.primary}, "ForceWithoutCrossSigning": False}
            cmds.append(c.TableSet(table="ca_config", key="config", row=new_cfg))
        if cmds:
            await self.apply(c.Batch(commands=cmds))
            log.info("secondary CA: now following the primary %s's trust domain %s (%d change(s))",
                     self.primary, td, len(cmds))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("CreateIndex", "ModifyIndex")}
