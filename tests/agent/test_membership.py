"""The agent's view of the LAN pool over the SWIM core: Serf's statuses, force-leave, our own tags."""

from __future__ import annotations

import random

from proconsul.agent.cluster.membership import ALIVE, FAILED, LEFT, STATUS_CODES, MemberList
from proconsul.membership import codec as c
from proconsul.membership.core import Membership

CODEC = c.Codec("lan:dc1")


def tags(name: str, role: str = "node") -> dict[str, str]:
    return {"role": role, "dc": "dc1", "id": name, "port": "8300"}


def members() -> tuple[Membership, MemberList]:
    core = Membership("a", "127.0.0.1", 8301, tags("a"), rng=random.Random(1), label="lan:dc1")
    core.running = True
    core.on_packet(0.0, CODEC.packet([c.alive(3, "b", "127.0.0.2", 8301, tags("b", "consul")),
                                      c.alive(1, "c", "127.0.0.3", 8301, tags("c")),
                                      c.alive(1, "d", "127.0.0.4", 8301, tags("d"))]))
    return core, MemberList(core, lambda: 1.0)


def test_statuses_are_serfs_suspect_counts_as_alive_dead_as_failed() -> None:
    core, ml = members()
    core.on_packet(1.0, CODEC.packet([c.suspect(1, "c", "b"), c.dead(1, "d", "b")]))
    assert [(m.name, st) for m, st in ml.members()] == [("a", ALIVE), ("b", ALIVE), ("c", ALIVE), ("d", FAILED)]
    assert [m.name for m in ml.alive(servers_only=True)] == ["b"] and ml.alive(servers_only=True)[0].is_server
    assert ml.status("nobody") == LEFT and STATUS_CODES[ml.status("d")] == 4
    assert {m.name for m in ml.peers()} == {"b", "c"}
    assert next(m for m, _ in ml.members() if m.name == "b").rpc_address == "127.0.0.2:8300"


def test_force_leave_turns_a_failed_member_left_and_tells_the_pool_but_leaves_alive_ones_alone() -> None:
    core, ml = members()
    core.on_packet(1.0, CODEC.packet([c.dead(1, "d", "b")]))
    assert not ml.force_leave("b", 2.0) and ml.status("b") == ALIVE  # alive: nothing happens
    assert not ml.force_leave("a", 2.0)  # never ourselves
    assert ml.force_leave("d", 2.0) and ml.status("d") == LEFT
    assert core.queue.pending("d")  # the leave on its behalf is news for everyone


def test_our_new_tags_and_port_are_a_newer_incarnation_of_us() -> None:
    core, ml = members()
    before = ml.me.incarnation
    ml.update_me(9999, {**tags("a"), "port": "8311"})
    assert ml.me.port == 9999 and ml.me.tags["port"] == "8311" and ml.me.incarnation == before + 1
    assert core.queue.pending("a")
