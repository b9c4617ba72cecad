"""`serf_lan_allowed_cidrs` / `serf_wan_allowed_cidrs`: a pool member drops datagrams and closes connections
from outside its allowed networks before reading them (counted as `dropped_cidr`), so a member there cannot
join; from inside, the pool forms as usual. On a real agent the setting reaches the LAN port and the count
shows in `/v1/agent/self`."""

from __future__ import annotations

import ipaddress
import json
import random
import socket
from pathlib import Path

import pytest
from support import AgentProcess, until, wait_for

from proconsul.agent.cluster.lan import JoinError, LANGossip
from proconsul.agent.config.keys import merge_file_data
from proconsul.agent.config.model import AgentConfig, ConfigError
from proconsul.membership.config import Timings

FAST = Timings(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, suspicion_mult=2,
               push_pull_interval=2.0, tcp_timeout=2.0)


async def member(name: str, allowed: str = "") -> LANGossip:
    g = LANGossip(name, "127.0.0.1", 0, {"role": "node", "dc": "dc1", "id": name}, "dc1", "127.0.0.1",
                  timings=FAST, rng=random.Random(name))
    if allowed:
        g.pool.allowed = (ipaddress.ip_network(allowed),)
    port = await g.start()
    g.members.update_me(port, {"role": "node", "dc": "dc1", "id": name})
    return g


async def test_a_member_outside_the_allowed_networks_cannot_join_and_its_packets_are_counted() -> None:
    fenced, open_ = await member("fenced", "10.0.0.0/8"), await member("open", "127.0.0.0/8")
    outsider, insider = await member("outsider"), await member("insider")
    try:
        with pytest.raises(JoinError):
            await outsider.join([f"127.0.0.1:{fenced.port}"])
        before = fenced.core.stats.get("dropped_cidr", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"\x01anything", ("127.0.0.1", fenced.port))
        await until(lambda: fenced.core.stats.get("dropped_cidr", 0) == before + 1, 5, "the datagram counted")
        assert "outsider" not in {m.name for m, _ in fenced.members.members()}
        assert await insider.join([f"127.0.0.1:{open_.port}"]) == 1
        await until(lambda: {m.name for m, st in open_.members.members() if st == "alive"} == {"open", "insider"},
                    10, "the pool to form from inside the allowed network")
        assert open_.core.stats.get("dropped_cidr", 0) == 0
    finally:
        for g in (fenced, open_, outsider, insider):
            await g.pool.stop()


def test_the_setting_reaches_a_real_agents_lan_port(tmp_path: Path) -> None:
    (tmp_path / "cidrs.json").write_text(json.dumps({"serf_lan_allowed_cidrs": ["10.0.0.0/8"]}))
    a = AgentProcess(tmp_path / "a", args=["--config-file", str(tmp_path / "cidrs.json")])
    a.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"\x01anything", ("127.0.0.1", a.serf_lan_port))
        wait_for(lambda: int(a.get("/v1/agent/self")[1]["Stats"]["serf_lan"]["dropped_cidr"]) >= 1, 5,
                 message="the agent to drop and count a datagram from outside 10.0.0.0/8")
        assert "outside the allowed networks (10.0.0.0/8)" in a.log()
    finally:
        a.stop()


def test_a_bad_cidr_names_the_key() -> None:
    with pytest.raises(ConfigError, match="serf_wan_allowed_cidrs: 'ten' is not a CIDR"):
        merge_file_data(AgentConfig(dev=True), {"serf_wan_allowed_cidrs": ["ten"]}, "test.json")
