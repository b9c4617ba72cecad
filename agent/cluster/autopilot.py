"""Autopilot (pure): server health, failure tolerance, and what the leader should change in Raft.

Consul's rules: a server is healthy when its membership status is alive, the leader heard from it within
`LastContactThreshold`, and its log is within `MaxTrailingLogs` of the leader's. New servers join as
non-voters and are promoted once they have been healthy for `ServerStabilizationTime`; with
`CleanupDeadServers`, failed servers are removed from the Raft configuration — only while fewer than
half of the servers are failed and at least `MinQuorum` voters stay, and (our addition) only once the
leader has not heard from them over Raft for `LastContactThreshold` either. Time is an argument; the leader's
reconcile loop (agent/cluster/cluster.py) feeds the inputs and applies the plan.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from proconsul.agent.config.duration import DurationError, parse_duration

DEFAULTS: dict[str, Any] = {"CleanupDeadServers": True, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250,
                            "MinQuorum": 0, "ServerStabilizationTime": "10s", "RedundancyZoneTag": "",
                            "DisableUpgradeMigration": False, "UpgradeVersionTag": ""}

FIELDS = tuple(DEFAULTS)


class InvalidSetting(ValueError):
    """An autopilot setting that cannot be used; the message names the field."""


def checked(raw: dict[str, Any]) -> dict[str, Any]:
    """Consul's autopilot fields over the defaults, or InvalidSetting naming the first bad one."""
    unknown = set(raw) - set(FIELDS) - {"CreateIndex", "ModifyIndex"}
    if unknown:
        raise InvalidSetting(f"unknown autopilot field(s): {', '.join(sorted(unknown))}")
    for name in ("LastContactThreshold", "ServerStabilizationTime"):
        if name in raw:
            try:
                ok = (parse_duration(raw[name]) if isinstance(raw[name], str) else float(raw[name])) >= 0
            except (DurationError, TypeError, ValueError):
                ok = False
            if not ok:
                raise InvalidSetting(f"{name} must be a duration such as \"200ms\" or \"10s\"")
    for name in ("MaxTrailingLogs", "MinQuorum"):
        if name in raw and (not isinstance(raw[name], int) or isinstance(raw[name], bool) or raw[name] < 0):
            raise InvalidSetting(f"{name} must be a whole number ≥ 0")
    for name in ("CleanupDeadServers", "DisableUpgradeMigration"):
        if name in raw and not isinstance(raw[name], bool):
            raise InvalidSetting(f"{name} must be true or false")
    return dict(DEFAULTS, **{k: v for k, v in raw.items() if k in FIELDS})


@dataclass(frozen=True, slots=True)
class ServerView:
    id: str
    name: str
    address: str
    serf_status: str  # alive | failed | left | none
    voter: bool
    leader: bool
    last_contact: float  # seconds since the leader heard from it (0 for the leader)
    last_index: int
    version: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    cleanup_dead_servers: bool = True
    last_contact_threshold: float = 0.2
    max_trailing_logs: int = 250
    min_quorum: int = 0
    server_stabilization_time: float = 10.0


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "promote" | "remove"
    server_id: str
    address: str
    name: str
    reason: str


def healthy(s: ServerView, leader_index: int, cfg: Settings) -> bool:
    if s.serf_status != "alive":
        return False
    if s.leader:
        return True
    return s.last_contact <= cfg.last_contact_threshold and leader_index - s.last_index <= cfg.max_trailing_logs


def failure_tolerance(servers: list[ServerView], leader_index: int, cfg: Settings) -> int:
    """How many more voters may fail with the cluster keeping a quorum (Consul's FailureTolerance)."""
    voters = [s for s in servers if s.voter]
    healthy_voters = sum(1 for s in voters if healthy(s, leader_index, cfg))
    quorum = len(voters) // 2 + 1
    return max(0, healthy_voters - quorum)


def plan(servers: list[ServerView], leader_index: int, cfg: Settings, stable_since: dict[str, float],
         now: float) -> list[Action]:
    """Promotions of stable non-voters, then removals of dead servers that are safe to remove."""
    actions: list[Action] = []
    for s in servers:
        since = stable_since.get(s.id)
        if (not s.voter and healthy(s, leader_index, cfg) and since is not None
                and now - since >= cfg.server_stabilization_time):
            actions.append(Action("promote", s.id, s.address, s.name,
                                  f"healthy for {now - since:.0f}s (server_stabilization_time)"))
    if cfg.cleanup_dead_servers:
        # Dead is failed in gossip *and* silent in Raft: a server the leader still hears from is replicating
        # (a gossip flap, or a suspicion this leader raised while it was cut off itself) — removing it
        # could cost the quorum. Stricter than Consul, which goes by gossip alone.
        failed = [s for s in servers if s.serf_status == "failed" and not s.leader
                  and s.last_contact > cfg.last_contact_threshold]
        voters = [s for s in servers if s.voter]
        if failed and len(failed) * 2 < len(servers):
            remaining_voters = len(voters) - sum(1 for s in failed if s.voter)
            if remaining_voters >= max(cfg.min_quorum, 1):
                actions += [Action("remove", s.id, s.address, s.name, "failed (cleanup_dead_servers)")
                            for s in failed]
    return actions


def track_stability(servers: list[ServerView], leader_index: int, cfg: Settings, stable_since: dict[str, float],
                    now: float) -> dict[str, float]:
    """Since when each server has been healthy without a break (unhealthy servers drop out)."""
    return {s.id: stable_since.get(s.id, now) for s in servers if healthy(s, leader_index, cfg)}


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(seconds: float) -> str:
    return "0s" if seconds <= 0 else f"{seconds * 1000:.3f}ms"


def health_body(servers: list[ServerView], leader_index: int, cfg: Settings, stable_since: dict[str, float],
                now_wall: float, now: float) -> dict[str, Any]:
    """Consul's /v1/operator/autopilot/health answer."""
    rows = []
    for s in servers:
        ok = healthy(s, leader_index, cfg)
        since = stable_since.get(s.id)
        rows.append({"ID": s.id, "Name": s.name, "Address": s.address, "SerfStatus": s.serf_status,
                     "Version": s.version, "Leader": s.leader, "LastContact": _ms(s.last_contact),
                     "LastTerm": 0, "LastIndex": s.last_index, "Healthy": ok, "Voter": s.voter,
                     "StableSince": _rfc3339(now_wall - (now - since)) if since is not None else ""})
    return {"Healthy": all(r["Healthy"] for r in rows), "FailureTolerance": failure_tolerance(servers, leader_index, cfg),
            "Servers": rows}


def state_body(servers: list[ServerView], leader_index: int, cfg: Settings, stable_since: dict[str, float],
               now_wall: float, now: float) -> dict[str, Any]:
    """Consul's /v1/operator/autopilot/state answer (1.9+)."""
    health = health_body(servers, leader_index, cfg, stable_since, now_wall, now)
    out: dict[str, Any] = {}
    for s, row in zip(servers, health["Servers"], strict=True):
        out[s.id] = {"ID": s.id, "Name": s.name, "Address": s.address, "NodeStatus": s.serf_status,
                     "Version": s.version, "LastContact": row["LastContact"], "LastTerm": 0,
                     "LastIndex": s.last_index, "Healthy": row["Healthy"], "StableSince": row["StableSince"],
                     "ReadReplica": False, "Status": "leader" if s.leader else ("voter" if s.voter else "non-voter"),
                     "Meta": {}, "NodeType": "voter" if s.voter else "non-voter"}
    voters = [s.id for s in servers if s.voter]
    return {"Healthy": health["Healthy"], "FailureTolerance": health["FailureTolerance"],
            "OptimisticFailureTolerance": max(0, len(voters) - (len(voters) // 2 + 1)),
            "Servers": out, "Leader": next((s.id for s in servers if s.leader), ""), "Voters": voters,
            "ReadReplicas": None, "RedundancyZones": None, "Upgrade": None}
