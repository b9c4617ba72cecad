"""Focused tests of the pure Raft core: elections, replication, commit rule, snapshots, membership,
leadership transfer and ReadIndex, driven by hand through `Cluster` (no event loop, no clock)."""

from __future__ import annotations

import random

import pytest

from proconsul.consensus.core import RaftConfig, RaftCore, bootstrap_state
from proconsul.consensus.errors import (
    ConfChangeInProgress,
    ConfigurationError,
    NotLeader,
    ProposalDropped,
    RaftError,
)
from proconsul.consensus.messages import ConfChange, ConfChangeType, Configuration, EntryType, MsgType, Role
from proconsul.consensus.progress import ProgressState
from proconsul.consensus.sim import Cluster

IDS3 = ["n1", "n2", "n3"]
IDS5 = ["n1", "n2", "n3", "n4", "n5"]


def test_single_voter_elects_itself_and_commits_without_network() -> None:
    c = Cluster(["n1"])
    core = c.elect("n1")
    assert core.is_leader and core.term == 2
    idx = core.propose(b"x")
    c.deliver()
    assert c.applied["n1"] == [(idx, b"x")]
    assert c.queue == []


def test_three_node_election_and_replication() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    assert leader.is_leader and c.leaders() == ["n1"]
    for sid in ("n2", "n3"):
        assert c[sid].lead == "n1" and c[sid].term == leader.term
    idxs = leader.propose_many([b"a", b"b", b"c"])
    c.deliver()
    for sid in IDS3:
        assert [d for _, d in c.applied[sid]] == [b"a", b"b", b"c"]
        assert c[sid].log.committed == idxs[-1]


def test_election_by_timeout_yields_exactly_one_leader() -> None:
    for seed in range(20):
        c = Cluster(IDS5, seed=seed)
        for _ in range(60):
            c.tick()
            if c.leaders():
                break
        assert len(c.leaders()) == 1, seed


def test_vote_refused_to_a_candidate_with_a_stale_log() -> None:
    c = Cluster(IDS3)
    c.elect("n1")
    c.isolate("n3")
    c["n1"].propose(b"only-on-n1-n2")
    c.deliver()
    c.heal()
    # n3 lacks the committed entry: it may never win, even when it campaigns first.
    c["n3"].campaign()
    c.deliver()
    assert not c["n3"].is_leader
    assert c.leaders() == ["n1"]


def test_prevote_keeps_a_partitioned_server_from_disrupting_on_rejoin() -> None:
    c = Cluster(IDS3)
    c.elect("n1")
    term = c["n1"].term
    c.isolate("n3")
    c.tick("n3", 100)  # many election timeouts alone
    assert c["n3"].term == term, "pre-vote must not bump the term of an isolated server"
    assert c["n3"].role in (Role.FOLLOWER, Role.PRE_CANDIDATE)
    c.heal()
    c.tick(n=3)
    assert c.leaders() == ["n1"] and c["n1"].term == term


def test_without_prevote_a_rejoining_server_would_disrupt() -> None:
    c = Cluster(IDS3, config=RaftConfig(pre_vote=False, check_quorum=False))
    c.elect("n1")
    term = c["n1"].term
    c.isolate("n3")
    c.tick("n3", 40)
    assert c["n3"].term > term  # the contrast that pre-vote prevents


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    c.isolate("n1")
    c.tick("n1", 2 * c.cfg.election_ticks)
    assert not leader.is_leader and leader.role == Role.FOLLOWER
    with pytest.raises(NotLeader):
        leader.propose(b"x")


def test_lease_ignores_vote_requests_while_leader_is_live() -> None:
    c = Cluster(IDS3)
    c.elect("n1")
    term = c["n1"].term
    c["n2"].campaign()  # n2 and n3 heard from n1 within the election timeout
    c.deliver()
    assert c.leaders() == ["n1"] and c["n1"].term == term


def test_stale_leader_steps_down_when_it_hears_a_higher_term() -> None:
    c = Cluster(IDS3)
    c.elect("n1")
    c.isolate("n1")
    c.tick("n2", 3 * c.cfg.election_ticks)  # n2 and n3 move on
    c.tick("n3", 3 * c.cfg.election_ticks)
    new = c.leaders()
    assert "n1" in new and len(new) == 2  # n1 has not noticed yet (no ticks)
    c.heal()
    c.tick("n1")
    assert c.leaders() != ["n1"] and len(c.leaders()) == 1


def _win(c: Cluster, sid: str) -> RaftCore:
    """Campaign until `sid` wins (a first pre-vote may only teach it the current term)."""
    for _ in range(4):
        c.elect(sid)
        if c[sid].is_leader:
            break
    return c[sid]


def test_figure8_commit_rule_counts_only_current_term_entries() -> None:
    """Raft paper figure 8: an entry from an older term is not committed by counting replicas."""
    c = Cluster(IDS5, config=RaftConfig(max_msg_entries=1, check_quorum=False))
    s1 = c.elect("n1")  # term 2, noop at 2
    assert s1.term == 2 and s1.log.committed == 2
    # (a) S1 replicates entry 3 (term 2) to S2 only, then crashes.
    c.drop(lambda m: m.type == MsgType.APP and m.to in ("n3", "n4", "n5"))
    s1.propose(b"old")
    c.deliver()
    assert c["n2"].log.term(3) == 2 and c["n3"].log.last_index == 2
    c.heal()
    c.crash("n1")
    # (b) S5 wins term 3 with S3 and S4 and appends its noop at index 3, then crashes.
    c.drop(lambda m: m.type == MsgType.APP and m.frm == "n5")
    s5 = _win(c, "n5")
    assert s5.term == 3 and s5.log.term(3) == 3
    c.crash("n5")
    c.heal()
    # (c) S1 restarts and wins term 4; entry (3, term 2) reaches S3 and S4, so S1, S3, S4 hold it: a
    #     majority. S1's own noop (index 4) reaches no one.
    s1 = c.start("n1")
    c.drop(lambda m: m.type == MsgType.APP and m.to in ("n2", "n5"))
    c.drop(lambda m: m.type == MsgType.APP and m.to in ("n3", "n4") and c[m.to].log.last_index >= 3
           and any(e.index >= 4 for e in m.entries))
    s1 = _win(c, "n1")
    assert s1.term == 4 and s1.log.term(4) == 4
    assert s1.prs["n3"].match == 3 and s1.prs["n4"].match == 3 and c["n3"].log.term(3) == 2
    assert s1.log.committed == 2, "an older-term entry must not be committed by counting replicas"
    # (d) S1 crashes; S5 can still win and overwrite index 3 — safe only because it was never committed.
    c.crash("n1")
    c.heal()
    s5 = c.start("n5")
    s5 = _win(c, "n5")
    c.deliver()
    assert s5.term >= 5 and s5.log.term(3) == 3
    for sid in ("n2", "n3", "n4"):
        assert c[sid].log.term(3) == 3


def test_old_term_entries_commit_with_the_new_leaders_noop() -> None:
    c = Cluster(IDS3)
    s1 = c.elect("n1")
    c.drop(lambda m: m.type == MsgType.APP and m.to == "n3")
    s1.propose(b"x")
    c.deliver()
    c.drop(lambda m: m.frm == "n1" or m.to == "n1")
    c.crash("n1")
    c.heal()
    for _ in range(10 * c.cfg.election_ticks):
        c.tick()
        if c.leaders():
            break
    assert c.leaders() == ["n2"]  # n3 lacks the entry, so only n2 can win
    assert [d for _, d in c.applied["n3"]] == [b"x"]


def test_pipelining_sends_up_to_max_inflight_without_acks() -> None:
    c = Cluster(IDS3, config=RaftConfig(max_inflight=4, max_msg_entries=2))
    leader = c.elect("n1")
    assert leader.prs["n2"].state == ProgressState.REPLICATE
    c.drop(lambda m: m.type == MsgType.APP_RESP)  # no acks come back
    for i in range(20):
        leader.propose(f"p{i}".encode())
    sent = []
    while c.process("n1"):
        pass
    sent = [m for m in c.queue if m.type == MsgType.APP and m.to == "n2"]
    # One message per proposal until the window of 4 fills; then pause.
    assert len(sent) == 4
    assert all(len(m.entries) <= 2 for m in sent)
    c.heal()
    c.deliver()
    assert len(c.applied["n2"]) == 20


def test_batching_respects_entry_and_byte_limits() -> None:
    c = Cluster(IDS3, config=RaftConfig(max_msg_entries=5, max_msg_bytes=300))
    leader = c.elect("n1")
    c.isolate("n2")
    leader.propose_many([bytes(100)] * 12)
    c.deliver()
    c.heal()
    leader.prs["n2"].become_probe()
    c.tick("n1", 2)  # heartbeat -> response -> catch-up appends
    c.deliver()
    assert len(c.applied["n2"]) == 12


def test_snapshot_installs_on_a_lagging_follower() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    c.isolate("n3")
    for i in range(30):
        leader.propose(f"v{i}".encode())
    c.deliver()
    snap = c.snapshot("n1")
    assert leader.log.first_index == snap.index + 1
    c.heal()
    c.tick(n=3)
    n3 = c["n3"]
    assert n3.snapshot is not None and n3.snapshot.index >= snap.index
    assert c.fsm["n3"].digest == c.fsm["n1"].digest
    leader.propose(b"after")
    c.deliver()
    assert c.applied["n3"][-1][1] == b"after"
    # The follower restarts from what it persisted: the snapshot plus later entries.
    c.start("n3")
    c.tick(n=3)
    assert c.fsm["n3"].digest == c.fsm["n1"].digest


def test_snapshot_message_lost_is_retried() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    c.isolate("n3")
    for i in range(10):
        leader.propose(f"v{i}".encode())
    c.deliver()
    c.snapshot("n1")
    c.heal()
    c.drop(lambda m: m.type == MsgType.SNAP)
    c.tick(n=3)
    assert leader.prs["n3"].state == ProgressState.SNAPSHOT
    c.heal()
    c.tick(n=3 * c.cfg.election_ticks)
    assert c.fsm["n3"].digest == c.fsm["n1"].digest


def test_membership_add_learner_promote_remove_one_at_a_time() -> None:
    c = Cluster(IDS3 + ["n4"], members=IDS3)
    leader = c.elect("n1")
    assert "n4" not in leader.config.members()
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "n4", "addr-n4"))
    assert "n4" in leader.config.learners  # effective on append
    with pytest.raises(ConfChangeInProgress):
        leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "n4"))
    c.deliver()
    assert c["n4"].config.learners.keys() == {"n4"} and c["n4"].log.committed == leader.log.committed
    leader.propose(b"x")
    c.deliver()
    assert c.applied["n4"][-1][1] == b"x"
    assert not c["n4"].promotable()
    leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "n4"))
    c.deliver()
    assert set(leader.config.voters) == {"n1", "n2", "n3", "n4"} and leader.config.quorum() == 3
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "n2"))
    c.deliver()
    assert set(c["n4"].config.voters) == {"n1", "n3", "n4"}
    assert "n2" not in leader.prs
    with pytest.raises(ConfigurationError):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "nope"))
    with pytest.raises(ConfigurationError):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, "n3", "addr"))


def test_a_removed_leader_steps_down_once_the_removal_commits() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    c.deliver()
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "n1"))
    assert leader.is_leader  # still leads until the change commits
    c.deliver()
    assert not leader.is_leader
    for _ in range(100):
        c.tick()
        if [s for s in c.leaders() if s != "n1"]:
            break
    (new,) = c.leaders()
    assert new in ("n2", "n3")
    c[new].propose(b"y")
    c.deliver()
    assert c.applied[new][-1][1] == b"y"


def test_uncommitted_conf_change_is_rolled_back_on_truncation() -> None:
    c = Cluster(IDS3 + ["n4"], members=IDS3)
    leader = c.elect("n1")
    c.isolate("n1")
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, "n4", "addr-n4"))
    c.deliver()
    assert "n4" in leader.config.voters and "n4" not in c["n2"].config.voters
    c.crash("n1")
    c.heal()
    c.isolate("n1")
    c.tick("n2", 3 * c.cfg.election_ticks)
    c.tick("n3", 3 * c.cfg.election_ticks)
    (new,) = c.leaders()
    n1 = c.start("n1")  # restarts with the uncommitted change in its log
    assert "n4" in n1.config.voters
    c.heal()
    c.tick(n=3)
    assert "n4" not in n1.config.voters, "the truncated change must no longer be in effect"
    assert n1.log.term(n1.log.last_index) == c[new].term


def test_leadership_transfer() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    term = leader.term
    c.isolate("n2")
    leader.propose(b"x")
    c.deliver()
    c.heal()
    leader.transfer_leadership("n2")  # n2 lags: the leader catches it up first, then TimeoutNow
    with pytest.raises(ProposalDropped):
        leader.propose(b"during")
    c.deliver()
    assert c.leaders() == ["n2"] and c["n2"].term == term + 1
    assert c["n2"].log.term(c["n2"].log.last_index) == term + 1
    with pytest.raises(ConfigurationError):
        c["n2"].transfer_leadership("n9")


def test_leadership_transfer_aborts_after_an_election_timeout() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    c.isolate("n3")
    leader.transfer_leadership("n3")
    assert leader.lead_transferee == "n3"
    for _ in range(c.cfg.election_ticks):
        leader.tick()
    assert leader.lead_transferee == "" and leader.is_leader
    leader.propose(b"ok")


def test_not_leader_error_names_the_leader() -> None:
    c = Cluster(IDS3)
    c.elect("n1")
    with pytest.raises(NotLeader) as ei:
        c["n2"].propose(b"x")
    assert ei.value.leader_id == "n1" and ei.value.leader_addr == "addr-n1"
    assert "n1" in str(ei.value)
    fresh = RaftCore("z", RaftConfig(), random.Random(1))
    with pytest.raises(NotLeader) as ei:
        fresh.propose(b"x")
    assert ei.value.leader_id == ""


def test_read_index_confirms_leadership_with_a_heartbeat_round() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    leader.propose(b"x")
    c.deliver()
    c.read_states = []
    leader.read_index(b"r1")
    c.deliver()
    assert c.read_states == [("n1", c.read_states[0][1])]
    assert c.read_states[0][1].index == leader.log.committed
    # An isolated leader cannot confirm: no answer.
    c.isolate("n1")
    c.read_states = []
    leader.read_index(b"r2")
    c.deliver()
    assert c.read_states == []
    c.tick("n1", 2 * c.cfg.election_ticks)  # check-quorum: it steps down and the read is dropped
    assert not leader.is_leader
    assert c.dropped_reads == [b"r2"]


def test_read_index_waits_for_a_commit_in_the_leaders_term() -> None:
    c = Cluster(IDS3)
    c.drop(lambda m: m.type == MsgType.APP_RESP)
    leader = c.elect("n1")
    assert leader.log.term(leader.log.committed) != leader.term
    c.read_states = []
    leader.read_index(b"early")
    c.deliver()
    assert c.read_states == []
    c.heal()
    c.tick("n1", 2)
    c.deliver()
    assert [rs.context for _, rs in c.read_states] == [b"early"]
    assert c.read_states[0][1].index >= 2


def test_read_index_rejected_on_followers() -> None:
    c = Cluster(IDS3)
    c.elect("n1")
    with pytest.raises(NotLeader):
        c["n2"].read_index(b"x")


def test_restart_from_durable_state_keeps_term_vote_and_log() -> None:
    c = Cluster(IDS3)
    leader = c.elect("n1")
    leader.propose(b"a")
    c.deliver()
    term = leader.term
    n2 = c.start("n2")  # crash + restart from storage
    assert n2.term == term and n2.log.last_index == leader.log.last_index
    assert n2.vote == "n1"
    c.tick(n=3)
    assert [d for _, d in c.applied["n2"]] == [b"a"]


def test_ready_contract_forbids_two_outstanding_readies() -> None:
    c = Cluster(["n1"])
    core = c["n1"]
    core.campaign()
    rd = core.ready()
    assert not core.has_ready()
    with pytest.raises(RaftError):
        core.ready()
    core.advance(rd)


def test_bootstrap_state_and_entry_types() -> None:
    st = bootstrap_state(Configuration({"a": "1"}))
    assert st.entries[0].type == EntryType.CONF and st.hard_state.term == 1
    with pytest.raises(RaftError):
        bootstrap_state(Configuration())


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RaftConfig(election_ticks=1, heartbeat_ticks=1)
    with pytest.raises(ValueError):
        RaftCore("", RaftConfig(), random.Random(0))
