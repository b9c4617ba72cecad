"""Network coordinates measured, not typed in: a server and two client agents as real processes probe each
other over the LAN; every agent's coordinate moves off the origin from its probes' round trips, reaches the
servers through the leader's batches, and `proconsul rtt` estimates a loopback-sized round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import AgentProcess, ok, wait_for

pytestmark = pytest.mark.xdist_group("cluster")

FAST = {"gossip_lan": {"probe_interval": "200ms", "probe_timeout": "100ms"},
        "sync_coordinate_interval_min": "500ms", "consul": {"coordinate": {"update_period": "200ms"}}}


def test_agents_measure_their_coordinates_and_rtt_estimates_them(tmp_path: Path) -> None:
    conf = tmp_path / "coord.json"
    conf.write_text(json.dumps(FAST))
    server = AgentProcess(tmp_path / "s", dev=False, args=[
        "--server", "--bootstrap-expect", "1", "--node", "s", "--data-dir", str(tmp_path / "s" / "data"),
        "--config-file", str(conf)])
    clients = [AgentProcess(tmp_path / n, dev=False, args=[
        "--node", n, "--data-dir", str(tmp_path / n / "data"), "--retry-interval", "1s",
        "--retry-join", f"127.0.0.1:{server.serf_lan_port}", "--config-file", str(conf)]) for n in ("c1", "c2")]
    agents = [server, *clients]
    try:
        for a in agents:
            a.start()

        def measured() -> list[dict] | None:
            rows = clients[0].get("/v1/coordinate/nodes")[1]
            moved = [r for r in rows if any(r["Coord"]["Vec"]) and r["Coord"]["Error"] < 1.5]
            return rows if {r["Node"] for r in moved} == {"s", "c1", "c2"} else None

        rows = wait_for(measured, 20, message="every agent's measured coordinate in /v1/coordinate/nodes")
        assert all(set(r) == {"Node", "Segment", "Coord"} and len(r["Coord"]["Vec"]) == 8 for r in rows)
        out = ok(clients[0], "rtt", "c1", "c2").strip()
        ms = float(re.fullmatch(r"Estimated c1 <-> c2 rtt: ([0-9.]+) ms \(using LAN coordinates\)", out).group(1))
        assert 0.0 < ms < 50.0, out  # loopback: well under a millisecond measured; the estimate is near that
        assert ok(server, "rtt", "c2").startswith("Estimated c2 <-> s rtt: ")  # NODE2: the agent's own node
        # The estimate keeps coming from new measurements: a later coordinate differs from this one.
        first = {r["Node"]: r["Coord"] for r in rows}
        wait_for(lambda: any(r["Coord"] != first[r["Node"]] for r in server.get("/v1/coordinate/nodes")[1]), 10,
                 message="coordinates to be updated again")
    finally:
        for a in agents:
            a.stop()
