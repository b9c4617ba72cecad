"""The leader's reconcile, the pure part: what the catalog and the Raft configuration must change
to agree with the LAN pool. No I/O — `Cluster.reconcile` applies the plan through Raft.

Consul's rules: an alive member is a catalog node with a passing `serfHealth` check; a failed one
keeps its node with `serfHealth` critical; a member that left is deregistered, and so is a node with
`serfHealth` whose member the pool no longer knows (reaped after `reconnect_timeout`). Servers carry the
`consul` service. An alive server of our datacenter missing from the Raft configuration is added as
a voter; a server that left is removed (never the leader itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proconsul.agent.cluster.membership import ALIVE, LEFT, Member
from proconsul.catalog import commands as c
from proconsul.catalog.store import CRITICAL, PASSING

SERF_CHECK_ID = "serfHealth"
ALIVE_OUTPUT = "Agent alive and reachable"
FAILED_OUTPUT = "Agent not live or unreachable"

# (node row or None, its checks, whether it has the consul service) for a node name.
NodeLookup = Callable[[str], tuple[dict[str, Any] | None, list[dict[str, Any]], bool]]


@dataclass(frozen=True)
class RaftChange:
    action: str  # "add_voter" | "remove"
    server_id: str
    address: str
    name: str


def catalog_plan(members: list[tuple[Member, str]], lookup: NodeLookup, datacenter: str) -> list[c.Command]:
    """The catalog writes that make every member's node and serfHealth match its status."""
    plan: list[c.Command] = []
    for m, status in members:
        if m.tags.get("dc") != datacenter:
            continue
        node, checks, has_consul = lookup(m.name)
        if status == LEFT:
            if node is not None:
                plan.append(c.Deregister(node=m.name))
            continue
        want = PASSING if status == ALIVE else CRITICAL
        serf = next((chk for chk in checks if chk["CheckID"] == SERF_CHECK_ID), None)
        if node is not None and serf is not None and serf["Status"] == want and (not m.is_server or has_consul):
            continue
        plan.append(c.Register(
            node=node or {"ID": m.tags.get("id", ""), "Node": m.name, "Address": m.addr, "Datacenter": datacenter,
                          "TaggedAddresses": {"lan": m.addr, "wan": m.addr}, "Meta": {"consul-network-segment": ""}},
            service={"ID": "consul", "Service": "consul", "Port": int(m.tags.get("port", "8300")), "Address": "",
                     "Meta": {"raft_version": "3", "serf_protocol_current": "2", "version": m.tags.get("build", "")}}
            if m.is_server else None,
            checks=[{"CheckID": SERF_CHECK_ID, "Name": "Serf Health Status", "Status": want,
                     "Output": ALIVE_OUTPUT if status == ALIVE else FAILED_OUTPUT, "Type": ""}],
            skip_node_update=node is not None))
    return plan


def reaped_plan(members: list[tuple[Member, str]], serf_nodes: list[str], me: str) -> list[c.Command]:
    """Consul's reconcileReaped: a catalog node with a `serfHealth` check whose member the pool no longer
    knows at all (reaped after `reconnect_timeout`, or a leave that never reached us) is deregistered.
    Nodes without `serfHealth` (registered through the catalog API) are not the pool's to remove."""
    known = {m.name.lower() for m, _ in members}
    return [c.Deregister(node=name) for name in serf_nodes
            if name.lower() not in known and name.lower() != me.lower()]


def raft_plan(members: list[tuple[Member, str]], configuration: set[str], my_id: str,
              datacenter: str) -> list[RaftChange]:
    """Servers to add (alive, not configured) and to remove (left, configured, not us)."""
    plan = []
    for m, status in members:
        sid = m.tags.get("id", "")
        if not m.is_server or m.tags.get("dc") != datacenter or not sid:
            continue
        if status == ALIVE and sid not in configuration:
            # A new server joins as a non-voter; autopilot promotes it once it has been healthy for
            # server_stabilization_time (Consul's behaviour).
            plan.append(RaftChange("add_nonvoter", sid, m.rpc_address, m.name))
        elif status == LEFT and sid in configuration and sid != my_id:
            plan.append(RaftChange("remove", sid, m.rpc_address, m.name))
    return plan


__all__ = ["RaftChange", "catalog_plan", "raft_plan", "reaped_plan"]
