"""Network coordinates from probe RTTs (Serf's ping delegate), the agents' sync interval and the leader's
batching — the pure pieces, driven directly."""

from __future__ import annotations

import random

import msgpack
import pytest

from proconsul.agent.cluster.coordinate_sync import update_row
from proconsul.agent.cluster.coordinates import ProbeCoordinates, UpdateBatcher, decode, encode, sync_interval
from proconsul.agent.cluster.vivaldi import Coordinate, CoordinateError, distance
from proconsul.catalog.errors import InvalidRequest


def test_the_ack_payload_round_trips_and_anything_else_is_refused() -> None:
    c = Coordinate(vec=(0.1, -0.2, 0, 0, 0, 0, 0, 0.5), error=0.3, adjustment=-0.001, height=0.0002)
    assert decode(encode(c)) == c and len(encode(c)) < 200
    for bad in (b"", b"\xc1", msgpack.packb([2, [0.0] * 8, 1.5, 0.0, 1e-5]), msgpack.packb([1, [0.0] * 3, 1, 0, 0]),
                msgpack.packb([1, [float("nan")] * 8, 1.5, 0.0, 1e-5]), msgpack.packb({"Vec": [0.0] * 8}),
                b"\x00" * 2000):
        with pytest.raises(CoordinateError):
            decode(bad)


def test_probe_rtts_move_our_coordinate_and_remember_the_peers() -> None:
    """Three members 10, 20 and 30 ms apart converge on estimates near those RTTs, through acks only."""
    true = {("a", "b"): 0.010, ("a", "c"): 0.030, ("b", "c"): 0.020}
    rtt = {**true, **{(y, x): v for (x, y), v in true.items()}}
    members = {name: ProbeCoordinates(random.Random(name)) for name in "abc"}
    assert members["a"].coord.is_origin()
    rng = random.Random(7)
    for _ in range(300):
        me = rng.choice("abc")
        target = rng.choice([n for n in "abc" if n != me])
        assert members[me].on_rtt(target, rtt[(me, target)], members[target].payload())
    for (x, y), want in true.items():
        got = distance(members[x].coord, members[y].coord)
        assert got == pytest.approx(want, rel=0.25), (x, y)
    for name, m in members.items():
        assert set(m.peers) == set("abc") - {name} and not m.coord.is_origin()
    a = members["a"]
    before = a.coord
    assert a.on_rtt("b", 0.01, b"junk") is False and a.on_rtt("b", 60.0, members["b"].payload()) is False
    assert a.coord == before and a.rejected == 2  # no coordinate in the ack, an RTT out of range: nothing moves
    a.forget("b")
    assert "b" not in a.peers


def test_the_sync_interval_scales_with_the_pool_as_consuls_does() -> None:
    assert sync_interval(64.0, 15.0, 10, 0.0) == 15.0  # small pools: the minimum
    assert sync_interval(64.0, 15.0, 6400, 0.0) == 100.0  # 64 updates a second across the datacenter
    assert sync_interval(64.0, 15.0, 10, 0.5) == 22.5  # plus a stagger of up to as long again
    assert sync_interval(0.0, 15.0, 10**6, 0.0) == 15.0


def test_the_leader_keeps_the_newest_update_per_node_and_batches_them() -> None:
    b = UpdateBatcher(batch_size=2, max_batches=2)
    for i in range(6):
        b.add({"Node": f"N{i}", "Segment": "", "Coord": {"i": i}})
    b.add({"Node": "n0", "Segment": "", "Coord": {"i": "newer"}})
    batches, dropped = b.take()
    assert [[key for key, _ in batch] for batch in batches] == [["n0", "n1"], ["n2", "n3"]]
    assert batches[0][0][1]["Coord"] == {"i": "newer"} and dropped == 2 and b.discarded == 2
    assert b.take() == ([], 0)
    with pytest.raises(ValueError):
        UpdateBatcher(batch_size=0)


def test_update_rows_are_checked_before_they_are_queued() -> None:
    coord = Coordinate().to_json()
    assert update_row({"Node": "web", "Coord": coord}) == {"Node": "web", "Segment": "", "Coord": coord}
    for args, says in (({"Coord": coord}, "Node must name"), ({"Node": "web", "Coord": {"Vec": [1]}}, "8 numbers"),
                       ({"Node": "web", "Segment": 3, "Coord": coord}, "Segment must be a string")):
        with pytest.raises(InvalidRequest, match=says):
            update_row(args)
