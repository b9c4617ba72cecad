"""LAN gossip on real sockets (127.0.0.1, ephemeral ports): join, failure, leave, force-leave, a foreign
datacenter, and peers that misbehave — a few pools in one process with quick timings."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import pytest
from support import until

from proconsul.agent.cluster.lan import JoinError, LANGossip
from proconsul.membership.config import Timings
from proconsul.membership.errors import Malformed

FAST = Timings(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, suspicion_mult=2,
               push_pull_interval=2.0, tcp_timeout=2.0)


class ToySealer:
    """Stands in for the keyring (security issue): proves where sealing sits, not that it is secure."""

    def seal(self, frame: bytes) -> bytes:
        return b"SEALED" + bytes(b ^ 0x5A for b in frame)

    def open(self, data: bytes) -> bytes:
        if not data.startswith(b"SEALED"):
            raise Malformed("sealed", "not sealed with our key")
        return bytes(b ^ 0x5A for b in data[6:])


async def pool(name: str, dc: str = "dc1", sealer: ToySealer | None = None) -> LANGossip:
    g = LANGossip(name, "127.0.0.1", 0, {"role": "node", "dc": dc, "id": name}, dc, "127.0.0.1", timings=FAST,
                  rng=random.Random(name), sealer=sealer)
    port = await g.start()
    g.members.update_me(port, {"role": "node", "dc": dc, "id": name})
    return g


def statuses(g: LANGossip) -> dict[str, str]:
    return {m.name: st for m, st in g.members.members()}


async def test_members_join_see_a_crash_as_failed_and_a_leave_as_left() -> None:
    gs = [await pool(f"n{i}") for i in range(4)]
    try:
        for g in gs[1:]:
            assert await g.join([f"127.0.0.1:{gs[0].port}"]) == 1
        await until(lambda: all(len(statuses(g)) == 4 and set(statuses(g).values()) == {"alive"} for g in gs), 10,
                    "everyone to know everyone")
        await gs[3].pool.stop()  # a crash: no leave
        await until(lambda: all(statuses(g)["n3"] == "failed" for g in gs[:3]), 15, "n3 failed everywhere")
        assert gs[0].members.force_leave("n3", gs[0].pool.now())
        await until(lambda: all(statuses(g)["n3"] == "left" for g in gs[:3]), 10, "n3 force-left everywhere")
        await gs[2].stop(leave=True)
        await until(lambda: all(statuses(g)["n2"] == "left" for g in gs[:2]), 10, "n2 left everywhere")
        assert all(statuses(g)["n1"] == "alive" for g in gs[:2])
    finally:
        for g in gs:
            await g.pool.stop()


async def test_a_pool_of_another_datacenter_is_refused_with_a_reason_and_garbage_changes_nothing() -> None:
    a, b = await pool("a"), await pool("b", dc="dc2")
    try:
        with pytest.raises(JoinError, match="refused.*lan:dc1.*lan:dc2"):
            await b.join([f"127.0.0.1:{a.port}"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for junk in (b"", b"\x01", b"\x01\x01\x07lan:dc1\xc1", b"\x01\x01\x07lan:dc2\x91\x91\x04", bytes(2000)):
                u.sendto(junk, ("127.0.0.1", a.port))
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        writer.write(struct.pack(">I", 1 << 30))  # an oversized frame: disconnected
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await until(lambda: a.core.stats.get("dropped_oversized", 0) == 1, 5, "the oversized frame to be counted")
        assert a.core.stats.get("dropped_foreign", 0) >= 1 and statuses(a) == {"a": "alive"}
    finally:
        await a.pool.stop()
        await b.pool.stop()


@pytest.mark.parametrize("reply", [b"", b"\x00\x00", struct.pack(">I", 100) + b"short",
                                   struct.pack(">I", 3) + b"\xc1\xc1\xc1", struct.pack(">I", 1) + b"\x01"])
async def test_a_peer_that_dies_mid_exchange_or_answers_garbage_fails_the_join_and_nothing_else(reply: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(reply)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    g = await pool("me")
    try:
        with pytest.raises(JoinError, match="could not join"):
            await g.join([f"127.0.0.1:{server.sockets[0].getsockname()[1]}"])
        assert statuses(g) == {"me": "alive"}
    finally:
        server.close()
        await g.pool.stop()


async def test_a_sealer_wraps_every_frame_and_an_unsealed_member_cannot_join_or_disturb() -> None:
    a, b = await pool("a", sealer=ToySealer()), await pool("b", sealer=ToySealer())
    plain = await pool("plain")
    try:
        assert await b.join([f"127.0.0.1:{a.port}"]) == 1
        await until(lambda: statuses(a) == statuses(b) == {"a": "alive", "b": "alive"}, 10, "a and b to agree")
        rtts: list[str] = []
        b.core.want_rtt = True
        b.on_event = lambda kind, name, detail: rtts.append(name) if kind == "rtt" else None
        await until(lambda: "a" in rtts, 5, "b's UDP probe of a to be answered through the sealer")
        with pytest.raises(JoinError):
            await plain.join([f"127.0.0.1:{a.port}"])
        assert statuses(a) == {"a": "alive", "b": "alive"} and a.core.stats.get("dropped_sealed", 0) >= 1
    finally:
        for g in (a, b, plain):
            await g.pool.stop()


def test_gossip_lan_block_uses_consuls_names_and_durations_and_refuses_what_cannot_be_honoured() -> None:
    from proconsul.agent.cluster.lan import lan_timings
    from proconsul.agent.config.values import as_duration
    from proconsul.membership.errors import ConfigError

    def parse(v: object) -> float:
        return as_duration("gossip_lan", v, "test")

    t = lan_timings({"probe_interval": "2s", "probe_timeout": "800ms", "gossip_nodes": 4}, 8 * 3600.0, parse)
    assert (t.probe_interval, t.probe_timeout, t.gossip_nodes, t.reconnect_timeout) == (2.0, 0.8, 4, 8 * 3600.0)
    assert t.gossip_interval == 0.2 and t.lifeguard
    with pytest.raises(ConfigError, match="probe_timeout .* must be shorter than probe_interval"):
        lan_timings({"probe_timeout": "2s"}, 8 * 3600.0, parse)
    with pytest.raises(ConfigError, match="unknown key 'probe_intervall'"):
        lan_timings({"probe_intervall": "1s"}, 8 * 3600.0, parse)
    with pytest.raises(ConfigError, match="gossip_nodes must be a whole number"):
        lan_timings({"gossip_nodes": "many"}, 8 * 3600.0, parse)
