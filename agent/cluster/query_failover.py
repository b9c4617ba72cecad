"""Prepared-query failover across datacenters (Consul's `Failover { NearestN, Datacenters }`).

When a query finds no healthy instance here, the same definition runs in other datacenters: first the
`NearestN` nearest (by measured WAN round trip), then `Datacenters` in the order given. A datacenter
nobody knows is skipped without counting (as Consul); one whose servers cannot be reached costs nothing
(beyond Consul: the router refuses at once, so the next is tried without waiting out a timeout). The
first with instances answers. One function for the HTTP API (`/v1/query/:id/execute`) and DNS
(`<query>.query.<domain>`), so both fail over the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from proconsul.agent.cluster.errors import ClusterError
from proconsul.agent.cluster.rpc import RPCError
from proconsul.catalog.prepared_query import has_failover

log = logging.getLogger("proconsul.query")
REMOTE_TIMEOUT = 10.0


class Federation(Protocol):
    """What failover needs of the cluster: the datacenters nearest first, and an RPC to one of them."""

    async def datacenters(self) -> list[str]: ...

    async def forward_dc(self, datacenter: str, method: str, args: dict[str, Any], timeout: float | None = None,
                         idempotent: bool = False) -> Any: ...


def failover_order(query: dict[str, Any], known: list[str], own: str) -> list[str]:
    """The datacenters to try, in order (pure): the NearestN nearest others (`known` is nearest first), then
    the named ones that exist, each once."""
    failover = (query.get("Service") or {}).get("Failover") or {}
    order: list[str] = []
    if failover.get("NearestN"):
        order += [dc for dc in known if dc != own][: int(failover["NearestN"])]
    order += [dc for dc in failover.get("Datacenters") or [] if dc in known and dc != own and dc not in order]
    return order


@dataclass(frozen=True, slots=True)
class FailoverResult:
    answer: dict[str, Any] | None  # the first other datacenter's execute answer with instances, or None
    tried: int  # datacenters tried (Consul's `Failovers`)


async def fail_over(cluster: Federation, own: str, query: dict[str, Any], connect: bool = False) -> FailoverResult:
    """Run `query` (a stored definition) in its failover datacenters until one has instances."""
    if not has_failover(query):
        return FailoverResult(None, 0)
    order = failover_order(query, await cluster.datacenters(), own)
    tried = 0
    for dc in order:
        tried += 1
        try:
            answer = await cluster.forward_dc(dc, "catalog.query", {
                "name": "query.execute_definition", "args": {"definition": query, "connect": connect},
                "index": 0, "wait": 0.0, "mode": "leader"}, timeout=REMOTE_TIMEOUT, idempotent=True)
        except (ClusterError, RPCError) as e:
            log.info("prepared query %s: failover to %s skipped: %s", query.get("Name") or query.get("ID"), dc, e)
            continue
        remote = answer[1]
        if remote["Nodes"]:
            return FailoverResult(remote, tried)
    return FailoverResult(None, tried)
