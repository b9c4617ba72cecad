"""Autopilot's rules (pure): health, failure tolerance, promotion after stabilization, safe cleanup."""

from __future__ import annotations

from proconsul.agent.cluster import autopilot as ap

CFG = ap.Settings(last_contact_threshold=0.2, max_trailing_logs=250, server_stabilization_time=10.0)


def server(i: int, *, status: str = "alive", voter: bool = True, leader: bool = False, contact: float = 0.05,
           index: int = 1000) -> ap.ServerView:
    return ap.ServerView(f"id{i}", f"s{i}", f"127.0.0.1:{8300 + i}", status, voter, leader, contact, index)


def test_health_needs_alive_recent_contact_and_a_close_log() -> None:
    assert ap.healthy(server(0, leader=True, contact=99), 1000, CFG)
    assert ap.healthy(server(1), 1000, CFG)
    assert not ap.healthy(server(1, contact=0.5), 1000, CFG)
    assert not ap.healthy(server(1, index=700), 1000, CFG)
    assert not ap.healthy(server(1, status="failed"), 1000, CFG)


def test_failure_tolerance() -> None:
    three = [server(0, leader=True), server(1), server(2)]
    assert ap.failure_tolerance(three, 1000, CFG) == 1
    assert ap.failure_tolerance([server(0, leader=True), server(1), server(2, status="failed")], 1000, CFG) == 0
    five = [server(0, leader=True)] + [server(i) for i in range(1, 5)]
    assert ap.failure_tolerance(five, 1000, CFG) == 2


def test_non_voters_are_promoted_after_stabilization() -> None:
    servers = [server(0, leader=True), server(1), server(2), server(3, voter=False)]
    since = ap.track_stability(servers, 1000, CFG, {}, now=100.0)
    assert ap.plan(servers, 1000, CFG, since, now=105.0) == []
    since = ap.track_stability(servers, 1000, CFG, since, now=110.5)
    assert [(a.kind, a.server_id) for a in ap.plan(servers, 1000, CFG, since, now=110.5)] == [("promote", "id3")]
    lagging = servers[:3] + [server(3, voter=False, index=100)]
    since = ap.track_stability(lagging, 1000, CFG, since, now=111.0)  # unhealthy: its clock restarts
    assert "id3" not in since and ap.plan(lagging, 1000, CFG, since, now=200.0) == []


def test_dead_servers_are_cleaned_up_only_when_safe() -> None:
    one_dead = [server(0, leader=True), server(1), server(2, status="failed", contact=30.0)]
    assert [(a.kind, a.server_id) for a in ap.plan(one_dead, 1000, CFG, {}, 0)] == [("remove", "id2")]
    # Gossip says failed but Raft still hears from it (a flap, or a leader fresh out of its own partition
    # whose stale suspicion timed out): not dead, kept — removing it could cost the quorum.
    flapping = [server(0, leader=True), server(1), server(2, status="failed", contact=0.05)]
    assert ap.plan(flapping, 1000, CFG, {}, 0) == []
    two_dead = [server(0, leader=True), server(1, status="failed", contact=30.0),
                server(2, status="failed", contact=30.0)]
    assert ap.plan(two_dead, 1000, CFG, {}, 0) == []  # half or more failed: never remove (a partition?)
    off = ap.Settings(cleanup_dead_servers=False)
    assert ap.plan(one_dead, 1000, off, {}, 0) == []
    quorum = ap.Settings(min_quorum=3)
    assert ap.plan(one_dead, 1000, quorum, {}, 0) == []  # would leave 2 voters, fewer than min_quorum


def test_bodies_have_consuls_fields() -> None:
    servers = [server(0, leader=True), server(1), server(2, voter=False)]
    since = ap.track_stability(servers, 1000, CFG, {}, now=5.0)
    health = ap.health_body(servers, 1000, CFG, since, now_wall=1_700_000_000.0, now=10.0)
    assert health["Healthy"] and health["FailureTolerance"] == 0
    assert set(health["Servers"][0]) >= {"ID", "Name", "Address", "SerfStatus", "Version", "Leader", "LastContact",
                                         "LastTerm", "LastIndex", "Healthy", "Voter", "StableSince"}
    state = ap.state_body(servers, 1000, CFG, since, 1_700_000_000.0, 10.0)
    assert state["Leader"] == "id0" and state["Voters"] == ["id0", "id1"]
    assert state["Servers"]["id2"]["Status"] == "non-voter"
