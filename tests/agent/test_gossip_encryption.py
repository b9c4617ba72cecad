"""Gossip encryption on real sockets, several LAN pools in one process: an encrypted pool forms, a member
with another key or none cannot join (and says why), its packets are dropped and counted, what a member
puts on the wire does not show its node names, and the keyring's install → use → remove travels to every
member through the pool's requests while the pool stays whole."""

from __future__ import annotations

import asyncio
import base64
import random
import socket
from pathlib import Path

import pytest
from support import free_port

from proconsul.agent.cluster.keyring import GossipKeys, Target, failures
from proconsul.agent.cluster.lan import JoinError, LANGossip
from proconsul.agent.cluster.wan.pool import WANPool, WANServer
from proconsul.agent.config.model import AgentConfig
from proconsul.membership import codec as c
from proconsul.membership.keyring import GossipSealer, Keyring, encode_key
from proconsul.membership.pool import RequestRefused

from .test_lan import FAST, statuses, until

K1, K2, WRONG = bytes(range(32)), bytes(range(100, 132)), bytes(range(50, 82))


def keys_for(name: str, key: bytes | None, tmp: Path | None = None, **cfg: object) -> GossipKeys | None:
    if key is None:
        return None
    return GossipKeys(AgentConfig(node_name=name, encrypt=encode_key(key), data_dir=str(tmp / name) if tmp else "",
                                  **cfg), wan=False)  # type: ignore[arg-type]


async def member(name: str, key: bytes | None = None, *, keys: GossipKeys | None = None) -> LANGossip:
    keys = keys or keys_for(name, key)
    g = LANGossip(name, "127.0.0.1", 0, {"role": "node", "dc": "dc1", "id": name}, "dc1", "127.0.0.1",
                  timings=FAST, rng=random.Random(name), sealer=keys.lan_sealer if keys else None,
                  on_request=keys.handle if keys else None)
    port = await g.start()
    g.members.update_me(port, {"role": "node", "dc": "dc1", "id": name})
    g.keys = keys  # type: ignore[attr-defined]
    return g


def all_alive(gs: list[LANGossip]) -> bool:
    names = {g.core.name for g in gs}
    return all(statuses(g) == dict.fromkeys(names, "alive") for g in gs)


async def test_a_wrong_key_or_plaintext_member_cannot_join_and_its_packets_are_dropped_and_counted() -> None:
    a, b = await member("a", K1), await member("b", K1)
    wrong, plain = await member("wrong", WRONG), await member("plain")
    try:
        assert await b.join([f"127.0.0.1:{a.port}"]) == 1
        await until(lambda: all_alive([a, b]), 10, "the encrypted pair to agree")
        with pytest.raises(JoinError, match="no installed gossip key opens it"):
            await wrong.join([f"127.0.0.1:{a.port}"])
        with pytest.raises(JoinError, match="plaintext frame, and this pool's gossip is encrypted"):
            await plain.join([f"127.0.0.1:{a.port}"])
        # An encrypted member asked by a plaintext one: the other way round is refused too, with a reason.
        with pytest.raises(JoinError, match="not encrypted"):
            await b.join([f"127.0.0.1:{plain.port}"])
        # Datagrams: a ping sealed with the wrong key, and one in plaintext, as those members' shells send them.
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ping = wrong.core.codec.packet([c.ping(1, "a", "wrong", "127.0.0.1", wrong.port)])
        before = dict(a.core.stats)
        udp.sendto(wrong.pool.sealer.seal(ping), ("127.0.0.1", a.port))
        udp.sendto(ping, ("127.0.0.1", a.port))
        udp.close()
        await until(lambda: a.core.stats.get("dropped_key", 0) == before.get("dropped_key", 0) + 1
                    and a.core.stats.get("dropped_plaintext", 0) == before.get("dropped_plaintext", 0) + 1,
                    5, "a to count the wrong-key and the plaintext datagram")
        assert before.get("dropped_key") == before.get("dropped_plaintext") == 1  # the two joins' first frames
        assert statuses(a) == statuses(b) == {"a": "alive", "b": "alive"}
    finally:
        for g in (a, b, wrong, plain):
            await g.pool.stop()


class Spy(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.seen.append(data)


@pytest.mark.parametrize("encrypted", [True, False])
async def test_what_a_member_sends_on_the_wire_does_not_show_its_node_names(encrypted: bool) -> None:
    """A UDP listener on loopback, made known to member a as a member, receives a's probes and gossip: with
    a key the bytes hold no node name (and open with the key); without one (the control) they do."""
    a, b = await member("alpha-node", K1 if encrypted else None), await member("bravo-node", K1 if encrypted else None)
    loop = asyncio.get_running_loop()
    transport, spy = await loop.create_datagram_endpoint(Spy, local_addr=("127.0.0.1", 0))
    spy_port = transport.get_extra_info("sockname")[1]
    try:
        assert await b.join([f"127.0.0.1:{a.port}"]) == 1
        await until(lambda: all_alive([a, b]), 10, "a and b to agree")
        # Tell a (through its core's public input, as a datagram it received) that a member lives at the spy's port.
        a.core.on_packet(a.pool.now(), a.core.codec.packet([c.alive(1, "spy", "127.0.0.1", spy_port, {})]))
        a.pool.flush()
        await until(lambda: len(spy.seen) >= 3, 10, "a to probe or gossip to the spy")
        blob = b"".join(spy.seen)
        if encrypted:
            assert b"alpha-node" not in blob and b"bravo-node" not in blob
            opened = GossipSealer(Keyring([K1])).open(spy.seen[0])
            assert b"alpha-node" in opened or b"bravo-node" in opened or b"spy" in opened
        else:
            assert b"alpha-node" in blob or b"bravo-node" in blob  # the control: plaintext shows them
    finally:
        transport.close()
        for g in (a, b):
            await g.pool.stop()


async def test_key_rotation_reaches_every_member_and_the_pool_stays_whole(tmp_path: Path) -> None:
    gs = [await member(n, keys=keys_for(n, K1, tmp_path)) for n in ("r0", "r1", "r2")]
    try:
        for g in gs[1:]:
            await g.join([f"127.0.0.1:{gs[0].port}"])
        await until(lambda: all_alive(gs), 10, "three members to agree")
        g0 = gs[0]
        targets = [Target(g.core.name, "127.0.0.1", g.port) for g in gs[1:]]

        async def op(name: str, key: bytes | None = None) -> list[dict]:
            rows = await g0.keys.operate(g0.pool, targets, name, encode_key(key) if key else "")
            assert failures(rows) == "", rows
            assert all_alive(gs)
            return rows

        k1, k2 = encode_key(K1), encode_key(K2)
        assert (await op("list"))[0] == {"WAN": False, "Datacenter": "dc1", "Segment": "", "Keys": {k1: 3},
                                         "PrimaryKeys": {k1: 3}, "NumNodes": 3}
        rows = await op("install", K2)
        assert rows[0]["Keys"] == {k1: 3, k2: 3} and rows[0]["PrimaryKeys"] == {k1: 3}
        rows = await op("use", K2)
        assert rows[0]["PrimaryKeys"] == {k2: 3}
        with pytest.raises(Exception, match="Removing the primary key is not allowed"):
            await g0.keys.operate(g0.pool, targets, "remove", k2)
        rows = await op("remove", K1)
        assert rows[0]["Keys"] == {k2: 3}
        # Every member sends with K2 now: a fresh push-pull goes through, and no frame was dropped by anyone
        # at any point of the rotation (the install → use → remove order never leaves a member behind).
        assert await gs[2].join([f"127.0.0.1:{gs[0].port}"]) == 1
        assert all_alive(gs)
        assert [g.core.stats.get("dropped_key", 0) for g in gs] == [0, 0, 0]
        for g in gs:
            assert g.keys.lan.keyring.keys == [K2]
            saved = (tmp_path / g.core.name / "serf" / "local.keyring").read_text()
            assert saved == f'["{k2}"]'
    finally:
        for g in gs:
            await g.pool.stop()


def test_a_keyring_request_that_arrived_in_plaintext_is_refused() -> None:
    keys = keys_for("x", K1, encrypt_verify_incoming=False)
    assert keys is not None
    with pytest.raises(RequestRefused, match="must arrive encrypted"):
        keys.handle("keyring", b"\x82\xa2op\xa7install\xa3key\xc4\x20" + WRONG, sealed=False)
    assert keys.lan is not None and keys.lan.keyring.keys == [K1]


def test_the_keyring_file_wins_over_encrypt_after_the_first_start(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    first = keys_for("n", K1, tmp_path)
    assert first is not None and first.lan is not None
    first.local("install", K2)
    first.local("use", K2)
    first.local("remove", K1)
    again = keys_for("n", K1, tmp_path)  # restarted with the old `encrypt` still in its config
    assert again is not None and again.lan is not None and again.lan.keyring.keys == [K2]
    assert "LAN keyring doesn't include key provided with -encrypt, using keyring" in caplog.text
    no_flag = GossipKeys(AgentConfig(node_name="n", data_dir=str(tmp_path / "n")), wan=False)
    assert no_flag.enabled and no_flag.lan is not None and no_flag.lan.keyring.keys == [K2]
    memory = GossipKeys(AgentConfig(node_name="n", encrypt=base64.b64encode(K1).decode(), data_dir=str(tmp_path / "m"),
                                    disable_keyring_file=True), wan=False)
    assert memory.enabled and not (tmp_path / "m" / "serf").exists()


async def test_the_wan_pool_seals_its_frames_with_the_wan_keyring_and_refuses_another_key() -> None:
    async def wan(node: str, dc: str, key: bytes) -> WANPool:
        keys = GossipKeys(AgentConfig(node_name=node, datacenter=dc, encrypt=encode_key(key)), wan=True)
        port = free_port()
        g = WANPool(WANServer(node, dc, "127.0.0.1", port, 1, node), "127.0.0.1", timings=FAST,
                    rng=random.Random(node), sealer=keys.wan_sealer, on_request=keys.handle)
        await g.start()
        return g

    a, b, wrong = await wan("a", "dc1", K1), await wan("b", "dc2", K1), await wan("w", "dc3", WRONG)
    try:
        assert await b.join([f"127.0.0.1:{a.port}"]) == 1
        await until(lambda: "b.dc2" in {r.node.name for r in a.core.view}, 5, "a to know b")
        with pytest.raises(JoinError, match="no installed gossip key opens it"):
            await wrong.join([f"127.0.0.1:{a.port}"])
        assert a.core.stats.get("dropped_key", 0) >= 1 and "w.dc3" not in {r.node.name for r in a.core.view}
    finally:
        for g in (a, b, wrong):
            await g.stop(leave=False)


async def test_rolling_enablement_verify_incoming_and_outgoing_off_then_on() -> None:
    """Consul's documented path onto an encrypted pool: plaintext members, then members with the key that
    read both and send plaintext, then send sealed, then drop plaintext — the pool stays whole at each step."""
    plain = await member("old")
    rolling = await member("mid", keys=keys_for("mid", K1, encrypt_verify_incoming=False,
                                                encrypt_verify_outgoing=False))
    sending = await member("new", keys=keys_for("new", K1, encrypt_verify_incoming=False))
    strict = await member("end", K1)
    try:
        assert await rolling.join([f"127.0.0.1:{plain.port}"]) == 1  # reads plaintext, sends plaintext
        assert await sending.join([f"127.0.0.1:{rolling.port}"]) == 1  # sends sealed, reads both
        await until(lambda: all_alive([plain, rolling, sending]), 10, "plaintext and rolling members to agree")
        assert rolling.core.stats.get("dropped_plaintext", 0) == 0 and sending.core.stats.get("dropped_key", 0) == 0
        # The plaintext member cannot read what `sending` seals: it counts those frames, never obeys them.
        await until(lambda: plain.core.stats.get("dropped_encrypted", 0) > 0, 10, "the plaintext member to drop "
                                                                                  "sealed frames")
        # A strict member (verify_incoming on) joins the members that send sealed, and refuses the plaintext one.
        assert await strict.join([f"127.0.0.1:{sending.port}"]) == 1
        with pytest.raises(JoinError, match="not encrypted"):
            await strict.join([f"127.0.0.1:{plain.port}"])
    finally:
        for g in (plain, rolling, sending, strict):
            await g.pool.stop()


async def test_a_wan_pool_on_the_membership_shell_gets_keyring_operations_on_its_wan_keyrings_only(
        tmp_path: Path) -> None:
    """How the WAN pool joins in once it runs on `membership.pool.Pool`: its sealer is the WAN keyring's and its
    `on_request` the keyring's handler; an operation asks every WAN member to change its WAN keyring."""
    from proconsul.membership.core import Membership
    from proconsul.membership.pool import Pool

    servers = []
    for name, dc in (("sa", "dc1"), ("sb", "dc2")):
        keys = GossipKeys(AgentConfig(node_name=name, datacenter=dc, encrypt=encode_key(K1),
                                      data_dir=str(tmp_path / name)), wan=True)
        core = Membership(f"{name}.{dc}", "127.0.0.1", 0, {}, rng=random.Random(name), timings=FAST, label="wan")
        pool = Pool(core, "127.0.0.1", 0, on_events=lambda ev: None, sealer=keys.wan_sealer, on_request=keys.handle)
        await pool.start()
        servers.append((keys, pool))
    (ka, wan_a), (kb, wan_b) = servers
    lan_a = await member("sa", keys=ka)  # sa's LAN pool: no other member in dc1
    try:
        rows = await ka.operate(lan_a.pool, [], "install", encode_key(K2),
                                wan=(wan_a, [Target("sb.dc2", "127.0.0.1", wan_b.port)]))
        assert failures(rows) == ""
        k1, k2 = encode_key(K1), encode_key(K2)
        assert rows[0]["WAN"] and rows[0]["NumNodes"] == 2 and rows[0]["Keys"] == {k1: 2, k2: 2}
        assert rows[1] == {"WAN": False, "Datacenter": "dc1", "Segment": "", "Keys": {k1: 1, k2: 1},
                           "PrimaryKeys": {k1: 1}, "NumNodes": 1}
        assert kb.wan is not None and kb.wan.keyring.keys == [K1, K2]
        assert kb.lan is not None and kb.lan.keyring.keys == [K1]  # dc2's LAN is dc2's business
        local = await ka.operate(lan_a.pool, [], "list", local_only=True,
                                 wan=(wan_a, [Target("sb.dc2", "127.0.0.1", wan_b.port)]))
        assert local[0]["NumNodes"] == 1  # local-only: no WAN member asked
    finally:
        await lan_a.pool.stop()
        for _, pool in servers:
            await pool.stop()
