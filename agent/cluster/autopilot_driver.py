"""The leader's autopilot round: gather what the pure rules in `autopilot.py` need, apply their plan.

Runs inside the leader's reconcile loop (every few seconds and on membership changes). Its settings are
Consul's autopilot configuration, kept in the replicated `meta` table (row "autopilot") so every server
agrees; until an operator writes one, the agent config's `autopilot { … }` block (or Consul's defaults)
applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from proconsul.agent.cluster import autopilot as ap
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.catalog.store import StateStore
from proconsul.consensus.node import RaftNode

log = logging.getLogger("proconsul.autopilot")
META_KEY = "autopilot"


def settings_from(raw: dict[str, Any]) -> ap.Settings:
    def dur(v: Any, default: float) -> float:
        try:
            return parse_duration(v) if isinstance(v, str) else float(v)
        except (DurationError, TypeError, ValueError):
            return default

    return ap.Settings(cleanup_dead_servers=bool(raw.get("CleanupDeadServers", True)),
                       last_contact_threshold=dur(raw.get("LastContactThreshold", "200ms"), 0.2),
                       max_trailing_logs=int(raw.get("MaxTrailingLogs", 250)),
                       min_quorum=int(raw.get("MinQuorum", 0)),
                       server_stabilization_time=dur(raw.get("ServerStabilizationTime", "10s"), 10.0))


def config_from_file(block: dict[str, Any]) -> dict[str, Any]:
    """The agent config's snake_case `autopilot { … }` as Consul's API fields, over Consul's defaults
    (InvalidSetting names a bad field; the config loader checks this before the agent starts)."""
    return ap.checked({"".join(p[:1].upper() + p[1:] for p in k.split("_")): v for k, v in block.items()})


class AutopilotDriver:
    def __init__(self, store: StateStore, file_config: dict[str, Any],
                 members: Callable[[], list[tuple[Any, str]]], my_id: str, datacenter: str, *,
                 monotonic: Callable[[], float], wall: Callable[[], float]) -> None:
        self.store = store
        self.monotonic = monotonic  # the clocks are the caller's (the agent passes time.monotonic/time.time)
        self.wall = wall
        self.file_config = config_from_file(file_config)
        self.members = members  # (Member, status) pairs of the LAN pool
        self.my_id = my_id
        self.datacenter = datacenter
        self.stable_since: dict[str, float] = {}

    def config(self) -> dict[str, Any]:
        row = self.store.table_get("meta", META_KEY)[1]
        return dict(row) if row else dict(self.file_config, CreateIndex=0, ModifyIndex=0)

    def view(self, raft: RaftNode) -> tuple[list[ap.ServerView], int]:
        """The servers in the Raft configuration, as autopilot sees them, and the leader's last index."""
        by_id = {m.tags.get("id", ""): (m, status) for m, status in self.members()
                 if m.is_server and m.tags.get("dc") == self.datacenter}
        progress = raft.peer_progress()
        leader_index = raft.stats()["last_log_index"]
        servers = []
        for srv in raft.configuration():
            m, status = by_id.get(srv.id, (None, "none"))
            match, since = progress.get(srv.id, (leader_index, 0.0))
            servers.append(ap.ServerView(id=srv.id, name=m.name if m else srv.id, address=srv.address,
                                         serf_status=status, voter=srv.voter, leader=srv.id == self.my_id,
                                         last_contact=0.0 if srv.id == self.my_id else since,
                                         last_index=leader_index if srv.id == self.my_id else match,
                                         version=m.tags.get("build", "") if m else ""))
        return servers, leader_index

    async def run_once(self, raft: RaftNode) -> None:
        """One round on the leader: track stability, then promote and clean up as the rules say."""
        servers, leader_index = self.view(raft)
        settings = settings_from(self.config())
        now = self.monotonic()
        self.stable_since = ap.track_stability(servers, leader_index, settings, self.stable_since, now)
        for action in ap.plan(servers, leader_index, settings, self.stable_since, now):
            if action.kind == "promote":
                log.info("autopilot: promoting server %s (%s) to voter: %s", action.name, action.address, action.reason)
                await raft.add_voter(action.server_id, action.address)
            else:
                log.warning("autopilot: removing server %s (%s) from the Raft configuration: %s", action.name,
                            action.address, action.reason)
                await raft.remove_server(action.server_id)

    def report(self, raft: RaftNode, what: str) -> dict[str, Any]:
        servers, leader_index = self.view(raft)
        settings = settings_from(self.config())
        fn = ap.health_body if what == "health" else ap.state_body
        return fn(servers, leader_index, settings, self.stable_since, self.wall(), self.monotonic())
