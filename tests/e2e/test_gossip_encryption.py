"""Gossip encryption between real agent processes: an encrypted cluster of 3 servers and a client forms; an
agent with another key, or with none, cannot join (the error says why) and its frames are dropped and
counted; a member of our own on loopback records what the agents put on the wire and finds no node ID
in it; the key is rotated with the CLI (install → use → remove) while the cluster stays whole; a client
restarted afterwards with its old `encrypt` still joins, from the keyring file it kept."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, ServerCluster, ok, one_line_error, run, until, wait_for

from proconsul.agent.cluster.lan import LANGossip
from proconsul.membership.config import Timings
from proconsul.membership.keyring import GossipSealer, Keyring, decode_key

pytestmark = pytest.mark.xdist_group("cluster")

K1 = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
WRONG = "4lU4KzW5Wp/0WRxjN0pkIt2vTEn7DigqKBUMmgLsEXQ="


def alive(agent: AgentProcess) -> set[str]:
    return {m["Name"] for m in agent.get("/v1/agent/members")[1] if m["Status"] == 1}


def serf_stats(agent: AgentProcess) -> dict[str, str]:
    return agent.get("/v1/agent/self")[1]["Stats"]["serf_lan"]


class Recording:
    """The real sealer, keeping every frame as it arrived off the socket (before it is opened)."""

    def __init__(self, key: str) -> None:
        self.inner = GossipSealer(Keyring([decode_key(key)]))
        self.raw: list[bytes] = []

    def seal(self, frame: bytes) -> bytes:
        return self.inner.seal(frame)

    def open(self, data: bytes) -> bytes:
        self.raw.append(data)
        return self.inner.open(data)


async def capture(join: str, want: int) -> list[bytes]:
    """Join the cluster as one more member and record `want` frames the agents send us."""
    rec = Recording(K1)
    g = LANGossip("spy-member", "127.0.0.1", 0, {"role": "node", "dc": "dc1", "id": "spy"}, "dc1", "127.0.0.1",
                  timings=Timings(probe_interval=0.5, probe_timeout=0.25, gossip_interval=0.1),
                  rng=random.Random(7), sealer=rec)
    port = await g.start()
    g.members.update_me(port, {"role": "node", "dc": "dc1", "id": "spy"})
    try:
        await g.join([join])
        await until(lambda: len(rec.raw) >= want, 20, f"{want} frames to reach the spy")
    finally:
        await g.pool.leave(2.0)  # leave, so no keyring operation later waits on a member that is gone
        await g.pool.stop()
    return rec.raw


def keyring(agent: AgentProcess) -> list[dict[str, Any]]:
    status, rows = agent.get("/v1/operator/keyring")
    assert status == 200, rows
    return rows


def lan_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in rows if not r["WAN"])


def test_an_encrypted_cluster_forms_keeps_strangers_out_and_rotates_its_key(tmp_path: Path) -> None:
    cluster = ServerCluster(tmp_path, 3, config={"encrypt": K1})
    client = cluster.client("encrypted-client-one")
    client.extra_args += ["--encrypt", K1]
    strangers = [AgentProcess(tmp_path / name, dev=False, args=["--node", name, "--data-dir",
                                                                str(tmp_path / name / "data"), *extra])
                 for name, extra in (("wrong-key", ["--encrypt", WRONG]), ("plaintext", []))]
    try:
        for a in (*cluster.servers, client, *strangers):
            a.start_background()
        for a in cluster.servers:
            a.wait_ready(30)
        client.wait_ready(30)
        agents = [*cluster.servers, client]
        names = {"s0", "s1", "s2", "encrypted-client-one"}
        wait_for(lambda: all(alive(a) == names for a in agents), 30, message="4 members alive everywhere")
        s0 = cluster.servers[0]
        assert serf_stats(s0)["encrypted"] == "true"
        assert json.loads((tmp_path / "s0" / "data" / "serf" / "local.keyring").read_text()) == [K1]
        rows = json.loads(ok(s0, "keyring", "-list", "--format", "json"))
        assert lan_row(rows) == {"WAN": False, "Datacenter": "dc1", "Segment": "", "Keys": {K1: 4},
                                 "PrimaryKeys": {K1: 4}, "NumNodes": 4}
        assert rows[0]["WAN"] and rows[0]["Keys"] == {K1: 3}  # the servers' WAN keyrings, listed first as Consul does

        # Strangers: another key, and no key. `join` fails with a reason; the servers count what they dropped.
        join = f"127.0.0.1:{s0.serf_lan_port}"
        for a in strangers:
            wait_for(lambda a=a: a.get("/v1/agent/self")[0] == 200, 20, message="a stranger to answer")
        line = one_line_error(run(strangers[0], "join", join))
        assert "no installed gossip key opens it" in line, line
        line = one_line_error(run(strangers[1], "join", join))
        assert "plaintext frame, and this pool's gossip is encrypted" in line, line
        stats = serf_stats(s0)
        assert int(stats["dropped_key"]) >= 1 and int(stats["dropped_plaintext"]) >= 1, stats
        assert "dropped a frame from" in s0.log() and "no installed gossip key opens it" in s0.log()
        assert all(alive(a) == names for a in agents)
        for a in strangers:
            a.stop()

        # What the agents send a member, as it comes off the socket: no node ID of theirs in clear.
        frames = asyncio.run(capture(join, 12))
        node_ids = [a.get("/v1/agent/self")[1]["Config"]["NodeID"].encode() for a in agents]
        blob = b"".join(frames)
        assert not any(i in blob for i in node_ids) and b"encrypted-client-one" not in blob
        opened = b"".join(GossipSealer(Keyring([decode_key(K1)])).open(f) for f in frames)
        assert any(i in opened for i in node_ids)  # the control: the same frames, opened, name the agents
        wait_for(lambda: all(alive(a) == names for a in agents), 30, message="the spy to have left")

        # Rotation with the CLI, Consul's spelling; the cluster stays whole at every step, and no agent
        # drops a single frame for want of a key while it happens.
        dropped = [int(serf_stats(a)["dropped_key"]) for a in agents]
        k2 = ok(None, "keygen").strip()
        assert len(decode_key(k2)) == 32
        assert "Successfully installed key!" in ok(client, "keyring", "-install", k2)
        assert lan_row(keyring(client))["Keys"] == {K1: 4, k2: 4}
        assert all(alive(a) == names for a in agents)
        assert "Successfully changed primary key!" in ok(s0, "keyring", f"-use={k2}")
        assert lan_row(keyring(s0))["PrimaryKeys"] == {k2: 4}
        assert all(alive(a) == names for a in agents)
        line = one_line_error(run(s0, "keyring", "-remove", k2))
        assert "Removing the primary key is not allowed" in line, line
        assert "Successfully removed key!" in ok(s0, "keyring", "-remove", K1)
        rows = keyring(cluster.servers[1])
        assert lan_row(rows)["Keys"] == {k2: 4} and rows[0]["Keys"] == {k2: 3}
        table = ok(s0, "keyring", "-list-primary")
        assert k2 in table and "4/4" in table and K1 not in table
        assert all(alive(a) == names for a in agents)
        assert [int(serf_stats(a)["dropped_key"]) for a in agents] == dropped
        assert [c for c in s0.get("/v1/health/state/critical")[1] if c["Node"] in names] == []
        assert json.loads((tmp_path / "encrypted-client-one" / "data" / "serf" / "local.keyring").read_text()) == [k2]

        # The client restarts with `encrypt` = the old key still in its flags: its keyring file wins.
        client.stop()
        wait_for(lambda: "encrypted-client-one" not in alive(s0), 30, message="the client to leave")
        client.start(30)
        assert "LAN keyring doesn't include key provided with -encrypt, using keyring" in client.log()
        wait_for(lambda: all(alive(a) == names for a in agents), 30, message="the restarted client to rejoin")
        assert lan_row(keyring(client))["Keys"] == {k2: 4}
    finally:
        for a in (*strangers, client):
            a.stop()
        cluster.stop()
