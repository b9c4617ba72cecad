"""Serf's snapshot: a restarted agent re-joins the members it knew, without retry_join — unless it had left
gracefully (then only with `-rejoin` / `rejoin_after_leave`). The log itself: replay, torn lines,
compaction."""

from __future__ import annotations

import signal
from pathlib import Path

from support import AgentProcess, wait_for

from proconsul.agent.cluster.gossip_snapshot import Remembered, SnapshotFile, render, replay


def test_replay_follows_joins_failures_and_a_leave() -> None:
    state = replay(["alive: a 10.0.0.1:8301\n", "alive: b 10.0.0.2:8301\n", "not-alive: a\n",
                    "alive: b 10.0.0.9:8301\n", "event-clock: 7\n", "event-clock: 3\n", "# note\n", "\n"])
    assert state.alive == {"b": "10.0.0.9:8301"} and state.event_clock == 7 and not state.left
    assert state.rejoin_addresses("me", rejoin_after_leave=False) == ["10.0.0.9:8301"]
    left = replay(["alive: b 10.0.0.2:8301", "alive: me 10.0.0.3:8301", "leave"])
    assert left.left and left.rejoin_addresses("me", rejoin_after_leave=False) == []
    assert left.rejoin_addresses("me", rejoin_after_leave=True) == ["10.0.0.2:8301"]  # never ourselves
    # A later fact (we re-joined after all) clears the leave; a torn last line is skipped and counted.
    again = replay(["alive: b 10.0.0.2:8301", "leave", "alive: c 10.0.0.4:8301", "alive: d 10.0"])
    assert not again.left and sorted(again.alive) == ["b", "c"] and again.unreadable == 1
    assert replay(render(again).splitlines()) == Remembered(again.alive, again.event_clock, False)


def test_the_file_is_compacted_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "serf" / "local.snapshot"
    snap = SnapshotFile(path, compact_min=512)
    assert snap.load() == Remembered()
    for i in range(200):  # churn: far more history than live content
        snap.alive(f"n{i % 5}", f"10.0.0.{i % 5}:{8301 + i}")
        if i % 3 == 0:
            snap.gone(f"n{i % 5}")
    snap.event_clock(42)
    live = dict(snap.state.alive)
    snap.close()
    assert path.stat().st_size <= max(512, 2 * len(render(snap.state))) + 64
    reopened = SnapshotFile(path).load()
    assert reopened.alive == live and reopened.event_clock == 42
    assert not (tmp_path / "serf" / "local.snapshot.compact").exists()


def _server(tmp_path: Path) -> AgentProcess:
    return AgentProcess(tmp_path / "s", dev=False, args=["--server", "--bootstrap-expect", "1", "--node", "s",
                                                          "--data-dir", str(tmp_path / "s" / "data")])


def _client(tmp_path: Path, server: AgentProcess, *extra: str) -> AgentProcess:
    return AgentProcess(tmp_path / "c", dev=False, args=["--node", "c", "--data-dir", str(tmp_path / "c" / "data"),
                                                          *extra])


def _alive(observer: AgentProcess, name: str) -> bool:
    return any(m["Name"] == name and m["Status"] == 1 for m in observer.get("/v1/agent/members")[1])


def test_a_restarted_agent_rejoins_what_it_knew_unless_it_left(tmp_path: Path) -> None:
    server = _server(tmp_path)
    server.start()
    client = _client(tmp_path, server, "--retry-join", f"127.0.0.1:{server.serf_lan_port}")
    try:
        client.start()
        wait_for(lambda: _alive(server, "c") and _alive(client, "s"), 20, message="the client in the pool")
        assert "alive: s 127.0.0.1:" in (tmp_path / "c" / "data" / "serf" / "local.snapshot").read_text()
        # kill -9, then start again without any join flag: the snapshot knows the server.
        client.stop(signal.SIGKILL)
        client.extra_args = ["--node", "c", "--data-dir", str(tmp_path / "c" / "data")]
        client.start_background()
        wait_for(lambda: "re-joined the LAN pool through 127.0.0.1:" in client.log(), 20, message="the re-join")
        wait_for(lambda: _alive(client, "s") and _alive(server, "c"), 20, message="the client back in the pool")
        # A graceful leave (SIGTERM on a client leaves) is remembered: the next start does not re-join…
        assert client.stop(signal.SIGTERM) == 0
        wait_for(lambda: not _alive(server, "c"), 20, message="the server to see the leave")
        client.start_background()
        wait_for(lambda: "not re-joining the 1 LAN members known before" in client.log(), 20,
                 message="the agent to say why it stays alone")
        wait_for(lambda: [m["Name"] for m in client.get("/v1/agent/members")[1]] == ["c"], 20,
                 message="the agent's HTTP API, with itself its only member")
        assert not _alive(server, "c")
        # …unless told to (-rejoin, Consul's flag for rejoin_after_leave). The leave is still the log's last
        # fact: the previous start added nothing.
        client.stop(signal.SIGKILL)
        client.extra_args.append("-rejoin")
        client.start_background()
        wait_for(lambda: _alive(server, "c") and _alive(client, "s"), 20, message="the re-join after a leave")
    finally:
        client.stop()
        server.stop()
