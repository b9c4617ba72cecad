"""Autopilot on a real 3-server cluster: configuration, health, a dead server cleaned up, and a new server
joining as a non-voter that is promoted once stable."""

from __future__ import annotations

import signal
from pathlib import Path

from support import AgentProcess, ServerCluster, ok, one_line_error, run, wait_for


def test_autopilot_end_to_end(tmp_path: Path) -> None:
    cluster = ServerCluster(tmp_path, 3)
    extra: AgentProcess | None = None
    try:
        cluster.start()
        lead = cluster.leader()
        cfg = lead.get("/v1/operator/autopilot/configuration")[1]
        assert cfg["CleanupDeadServers"] is True and cfg["ServerStabilizationTime"] == "10s"
        # The CLI, as an operator uses it: set two settings, the rest keep their values.
        assert "Configuration updated!" in ok(lead, "operator", "autopilot", "set-config",
                                              "-server-stabilization-time", "1s", "-last-contact-threshold", "2s")
        shown = ok(cluster.followers()[0], "operator", "autopilot", "get-config")
        assert "ServerStabilizationTime = 1s" in shown and "CleanupDeadServers = true" in shown
        assert "LastContactThreshold = 2s" in shown and "MaxTrailingLogs = 250" in shown
        assert "must be true or false" in one_line_error(run(lead, "operator", "autopilot", "set-config",
                                                             "-cleanup-dead-servers", "maybe"))
        assert "LastContactThreshold must be a duration" in one_line_error(
            run(lead, "operator", "autopilot", "set-config", "-last-contact-threshold", "soon"))
        assert lead.request("PUT", "/v1/operator/autopilot/configuration", {"MinQuorum": -1})[0] == 400
        follower = cluster.followers()[0]
        health = wait_for(lambda: (h := follower.get("/v1/operator/autopilot/health")[1]) and h.get("Healthy") and h,
                          15, message="a healthy cluster")
        assert health["FailureTolerance"] == 1 and sum(s["Voter"] for s in health["Servers"]) == 3
        state = lead.get("/v1/operator/autopilot/state")[1]
        assert len(state["Voters"]) == 3 and state["Servers"][state["Leader"]]["Status"] == "leader"
        shown = ok(follower, "operator", "autopilot", "state")
        assert "Healthy: true" in shown and "Failure tolerance: 1" in shown and shown.count("voter") >= 2

        victim = next(a for a in cluster.followers())
        victim.stop(signal.SIGKILL)

        def peers() -> int:
            return len(cluster.leader().get("/v1/status/peers")[1])
        wait_for(lambda: peers() == 2, 40, message="the dead server removed from Raft (cleanup_dead_servers)")

        lead = cluster.leader()
        extra = AgentProcess(tmp_path / "s9", dev=False, args=[
            "--server", "--node", "s9", "--data-dir", str(tmp_path / "s9" / "data"), "--retry-interval", "1s",
            "--retry-join", f"127.0.0.1:{lead.serf_lan_port}"])
        extra.start_background()

        def s9_status() -> str:
            servers = cluster.leader().get("/v1/operator/autopilot/state")[1]["Servers"]
            return next((s["Status"] for s in servers.values() if s["Name"] == "s9"), "")
        wait_for(lambda: s9_status() == "voter", 40, message="s9 promoted to voter after stabilizing")
        assert peers() == 3
    finally:
        if extra is not None:
            extra.stop()
        cluster.stop()
