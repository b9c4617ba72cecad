"""RaftNode integration: real sockets on 127.0.0.1, real FileStorage, a small KV state machine.

Ticks are 20 ms here (production default 100 ms) so that elections take a fraction of a second.
Every wait is for a condition with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support import until

from proconsul.consensus.errors import BootstrapError, NotLeader
from proconsul.consensus.node import NodeOptions, RaftNode, Server
from proconsul.consensus.storage import FileStorage, MemoryStorage

FAST = NodeOptions(tick_interval=0.02, election_ticks=10, heartbeat_ticks=1, snapshot_threshold=8192)


class KV:
    """A trivial FSM: set/get; apply returns the previous value."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied: list[int] = []

    def apply(self, index: int, data: bytes) -> Any:
        op, key, value = msgpack.unpackb(data)
        self.applied.append(index)
        if op == "fail":
            raise ValueError(f"refused {key}")
        prev = self.data.get(key)
        self.data[key] = value
        return prev

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data)

    def restore(self, data: bytes) -> None:
        self.data = msgpack.unpackb(data)


def put(key: str, value: str) -> bytes:
    return msgpack.packb(["set", key, value])


class Cluster:
    def __init__(self, root: Path, n: int = 3, options: NodeOptions = FAST) -> None:
        self.root = root
        self.options = options
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.nodes: dict[str, RaftNode] = {}
        self.fsms: dict[str, KV] = {}
        self.addrs: dict[str, str] = {}

    def make(self, sid: str, bind: str = "127.0.0.1:0") -> RaftNode:
        self.fsms[sid] = KV()
        node = RaftNode(sid, self.fsms[sid], FileStorage(self.root / sid), bind=bind, options=self.options,
                        rng=random.Random(hash(sid) & 0xFFFF))
        self.nodes[sid] = node
        return node

    async def start(self) -> Cluster:
        for sid in self.ids:
            node = self.make(sid)
            await node.start()
            self.addrs[sid] = node.address
        servers = [Server(sid, self.addrs[sid]) for sid in self.ids]
        for sid in self.ids:
            await self.nodes[sid].bootstrap(servers)
        return self

    async def restart(self, sid: str) -> RaftNode:
        node = self.make(sid, bind=self.addrs[sid])
        await node.start()
        return node

    def live(self) -> list[RaftNode]:
        return [n for n in self.nodes.values() if not n._stopped]

    def leader(self) -> RaftNode | None:
        leaders = [n for n in self.live() if n.is_leader]
        return max(leaders, key=lambda n: n.term) if leaders else None

    async def wait_leader(self, timeout: float = 10.0, exclude: str = "") -> RaftNode:
        def ok() -> bool:
            lead = self.leader()
            return lead is not None and lead.id != exclude and all(
                n.leader_id == lead.id for n in self.live() if n.id != exclude)
        await until(ok, timeout, "a leader known to every live server")
        lead = self.leader()
        assert lead is not None
        return lead

    async def stop(self) -> None:
        for n in self.nodes.values():
            await n.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    c = await Cluster(tmp_path).start()
    try:
        yield c
    finally:
        await c.stop()


async def test_single_node_in_memory_commits_immediately() -> None:
    kv = KV()
    node = RaftNode("dev", kv, MemoryStorage(), options=NodeOptions())
    await node.start()
    try:
        await node.bootstrap([Server("dev", "127.0.0.1:8300")])
        await node.wait_for_leader(2.0)
        assert node.is_leader and node.transport is None
        assert await node.propose(put("a", "1")) is None
        assert await node.propose(put("a", "2")) == "1"
        await node.read_index()
        assert kv.data == {"a": "2"} and node.applied_index >= 3
        with pytest.raises(ValueError, match="refused"):
            await node.propose(msgpack.packb(["fail", "k", ""]))
        assert node.configuration() == [Server("dev", "127.0.0.1:8300", True)]
        assert node.last_contact == 0.0
        st = node.stats()
        assert st["state"] == "leader" and st["applied_index"] == node.applied_index and st["num_peers"] == 0
        with pytest.raises(BootstrapError):
            await node.bootstrap([Server("dev", "x:1")])
    finally:
        await node.stop()


async def test_three_servers_elect_replicate_and_redirect(cluster: Cluster) -> None:
    lead = await cluster.wait_leader()
    assert await lead.propose(put("k", "v")) is None
    await until(lambda: all(f.data.get("k") == "v" for f in cluster.fsms.values()), message="replication")
    follower = next(n for n in cluster.live() if not n.is_leader)
    with pytest.raises(NotLeader) as ei:
        await follower.propose(put("x", "y"))
    assert ei.value.leader_id == lead.id and ei.value.leader_addr == cluster.addrs[lead.id]
    with pytest.raises(NotLeader):
        await follower.read_index()
    await lead.read_index()
    assert follower.last_contact < 1.0
    assert {s.id for s in lead.configuration()} == set(cluster.ids)


async def test_leader_death_new_leader_and_restart_from_disk(cluster: Cluster) -> None:
    lead = await cluster.wait_leader()
    for i in range(20):
        await lead.propose(put(f"k{i}", str(i)))
    old = lead.id
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await lead.stop()
    new = await cluster.wait_leader(exclude=old)
    elapsed = loop.time() - t0
    assert new.id != old
    # 20 ms ticks, election after 10-20 ticks: well under a second (2 s at the 100 ms default).
    assert elapsed < 3.0, elapsed
    assert await new.propose(put("after", "x")) is None
    back = await cluster.restart(old)
    await until(lambda: cluster.fsms[old].data.get("after") == "x", message="restarted server catching up")
    assert cluster.fsms[old].data["k19"] == "19"
    assert not back.is_leader or back.term > new.term


async def test_partition_via_transport_hook(cluster: Cluster) -> None:
    lead = await cluster.wait_leader()
    await lead.propose(put("before", "1"))
    others = [n for n in cluster.live() if n is not lead]
    assert lead.transport is not None
    for n in others:
        lead.transport.block(n.id)
        assert n.transport is not None
        n.transport.block(lead.id)
    new = await cluster.wait_leader(exclude=lead.id)
    await until(lambda: not lead.is_leader, message="check-quorum step-down of the isolated leader")
    with pytest.raises(NotLeader):
        await lead.propose(put("lost", "x"))
    await new.propose(put("during", "2"))
    for n in others:
        lead.transport.unblock(n.id)
        assert n.transport is not None
        n.transport.unblock(lead.id)
    await until(lambda: cluster.fsms[lead.id].data.get("during") == "2", message="healed server catching up")
    assert cluster.leader() is not None and cluster.leader().term >= new.term


async def test_snapshot_install_to_a_far_behind_follower(tmp_path: Path) -> None:
    opts = NodeOptions(tick_interval=0.02, election_ticks=10, snapshot_threshold=30, trailing_logs=5)
    c = await Cluster(tmp_path, options=opts).start()
    try:
        lead = await c.wait_leader()
        lagger = next(n for n in c.live() if n is not lead)
        await lagger.stop()
        for i in range(120):
            await lead.propose(put(f"k{i}", str(i)))
        assert lead.core is not None and lead.core.log.first_index > 10, "leader compacted its log"
        back = await c.restart(lagger.id)
        await until(lambda: c.fsms[lagger.id].data == c.fsms[lead.id].data, message="snapshot install")
        assert back.core is not None and back.core.snapshot is not None
        assert list((tmp_path / lagger.id / "snapshots").glob("*.snap"))
        # and it restarts from that snapshot
        await back.stop()
        again = await c.restart(lagger.id)
        assert again.applied_index >= 30 and c.fsms[lagger.id].data.get("k10") == "10"
    finally:
        await c.stop()


async def test_membership_add_and_remove(cluster: Cluster) -> None:
    lead = await cluster.wait_leader()
    await lead.propose(put("x", "1"))
    n4 = cluster.make("n4")
    await n4.start()
    cluster.addrs["n4"] = n4.address
    await lead.add_nonvoter("n4", n4.address)
    await until(lambda: cluster.fsms["n4"].data.get("x") == "1", message="non-voter catching up")
    assert Server("n4", n4.address, False) in lead.configuration()
    await lead.add_voter("n4", n4.address)
    assert Server("n4", n4.address, True) in lead.configuration()
    victim = next(s for s in cluster.ids if s != lead.id)
    await lead.remove_server(victim)
    assert victim not in {s.id for s in lead.configuration()}
    await lead.propose(put("y", "2"))
    await until(lambda: cluster.fsms["n4"].data.get("y") == "2", message="new voter applying")


async def test_leadership_transfer(cluster: Cluster) -> None:
    lead = await cluster.wait_leader()
    await lead.propose(put("a", "1"))
    target = next(s for s in cluster.ids if s != lead.id)
    new_id = await lead.transfer_leadership(target)
    assert new_id == target
    new = cluster.nodes[target]
    await until(lambda: new.is_leader, message="transfer")
    assert await new.propose(put("a", "2")) == "1"


async def test_leader_change_notification(cluster: Cluster) -> None:
    lead = await cluster.wait_leader()
    seen: list[str] = []
    follower = next(n for n in cluster.live() if n is not lead)
    follower.on_leader_change(seen.append)
    await lead.transfer_leadership(follower.id)
    await until(lambda: follower.id in seen, message="leader-change callback")


async def test_group_commit_one_fsync_for_many_concurrent_proposals(tmp_path: Path) -> None:
    kv = KV()
    storage = FileStorage(tmp_path / "solo")
    node = RaftNode("solo", kv, storage, options=FAST)
    await node.start()
    try:
        await node.bootstrap([Server("solo", "127.0.0.1:1")])
        await node.wait_for_leader(5.0)
        await node.read_index()
        before = storage.stats["log_fsyncs"]
        results = await asyncio.gather(*(node.propose(put(f"k{i}", str(i))) for i in range(300)))
        assert results == [None] * 300 and len(kv.data) == 300
        fsyncs = storage.stats["log_fsyncs"] - before
        assert fsyncs <= 10, f"{fsyncs} fsyncs for 300 proposals: no group commit"
    finally:
        await node.stop()
    # and everything is there after a restart
    kv2 = KV()
    again = RaftNode("solo", kv2, FileStorage(tmp_path / "solo"), options=FAST)
    await again.start()
    try:
        await again.wait_for_leader(5.0)
        await again.read_index()
        assert len(kv2.data) == 300
    finally:
        await again.stop()
