"""The gossip wire format: frames, every message type, and what is refused (and counted under which reason)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.membership import codec as c
from proconsul.membership.codec import Codec
from proconsul.membership.errors import ConfigError, Malformed

LAN = Codec("lan:dc1")


@pytest.mark.parametrize("msg", [
    c.ping(7, "b", "a", "10.0.0.1", 8301),
    c.ping(7, "", "a", "10.0.0.1", 8301),  # a ping for whoever answers (a join probe)
    c.indirect_ping(9, "c", "10.0.0.3", 8301, True, "a", "10.0.0.1", 8301),
    c.ack(7), c.ack(7, b"\x01\x02coordinate"), c.nack(9),
    c.suspect(3, "b", "a"), c.dead(3, "b", "a"),
    c.alive(4, "b", "10.0.0.2", 8301, {"role": "node", "dc": "dc1"}),
])
def test_every_datagram_message_round_trips_and_validates(msg: bytes) -> None:
    packet = LAN.packet([msg, c.suspect(1, "x", "y")])
    decoded = LAN.decode(packet)
    assert decoded == [msgpack.unpackb(msg), [c.SUSPECT, 1, "x", "y"]]
    assert all(c.valid(m) for m in decoded)


def test_stream_messages_round_trip() -> None:
    for msg in (c.pp_summary(True, 3, 2, [1, 2, 3, 4]), c.pp_digest(2, [0, 3], [["a", 1, 0], ["b", 2, 2]]),
                c.pp_records([["a", "10.0.0.1", 8301, {"k": "v"}, 1, 0]], ["b"]), c.pp_done(), c.pp_error("no")):
        body = LAN.body(msg)
        [m] = LAN.decode(body)
        assert c.valid(m) and m == msgpack.unpackb(msg)
    [m] = LAN.decode(LAN.body(c.pp_summary(False, 1, 1, [5, 6])))
    assert c.hashes_from_blob(m[4]) == [5, 6]


def test_header_layout_leaves_room_for_the_keyring_and_labels() -> None:
    assert LAN.prefix == bytes([1, c.FLAG_LABEL, 7]) + b"lan:dc1"
    assert Codec("").prefix == bytes([1, 0])
    with pytest.raises(ConfigError):
        Codec("x" * 256)


@pytest.mark.parametrize("data, reason", [
    (b"", "truncated"), (b"\x01", "truncated"),
    (b"\x02\x00\x91\x91\x04", "version"),
    (b"\x01\x80\x91\x91\x04", "flags"),
    (bytes([1, 1, 9]) + b"lan", "truncated"),  # label cut short
    (bytes([1, 3, 7]) + b"lan:dc1" + b"sealed", "encrypted"),
    (bytes([1, 1, 7]) + b"lan:dc2" + c.array_header(1) + c.nack(1), "foreign"),
    (bytes([1, 0]) + c.array_header(1) + c.nack(1), "foreign"),  # no label at all
    (LAN.prefix + b"\xc1", "malformed"),
    (LAN.prefix + b"\x93\x01", "malformed"),  # truncated msgpack
    (LAN.prefix + msgpack.packb({"a": 1}), "malformed"),
    (LAN.prefix + msgpack.packb([]), "malformed"),
    (LAN.prefix + msgpack.packb([1]) + b"extra", "malformed"),
])
def test_frames_that_are_not_ours_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as e:
        LAN.decode(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("m", [
    [c.PING, -1, "b", "a", "h", 1], [c.PING, 1, "b", "a", "h", 0], [c.PING, 1, "b", "", "h", 1],
    [c.PING, 1, "b", "a", "h", 70000], [c.PING, True, "b", "a", "h", 1], [c.PING, 1, "b", "a", "h"],
    [c.ACK, 1, "not-bytes"], [c.ALIVE, 1, "n", "h", 1, {"k": 1}], [c.ALIVE, 1, "n", "h", 1, {1: "v"}],
    [c.ALIVE, 1, "n", "h", 1, {"k": "v" * 5000}], [c.ALIVE, 1, "x" * 300, "h", 1, {}],
    [c.SUSPECT, 1, "n", ""], [c.DEAD, 1, "", "n"], [c.DEAD, 1 << 64, "n", "m"],
    [c.INDIRECT_PING, 1, "t", "h", 1, 1, "a", "h", 1],  # want_nack must be a bool
    [c.PP_SUMMARY, True, 1, 9, b"", b""], [c.PP_SUMMARY, True, 1, 1, b"\x00" * 15, b""],
    [c.PP_DIGEST, 1, [2], []], [c.PP_DIGEST, 1, [0], [["a", 1, 4]]],
    [c.PP_RECORDS, [["a", "h", 1, {}, 1]], []], [c.PP_RECORDS, [], [""]],
    [99, 1], [c.USER_EVENT, "reserved"], [], "ping", None,
])
def test_messages_with_wrong_fields_are_invalid(m: object) -> None:
    assert not c.valid(m)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_either_decode_or_raise_malformed(data: bytes) -> None:
    for frame in (data, LAN.prefix + data):
        try:
            msgs = LAN.decode(frame)
        except Malformed:
            continue
        assert isinstance(msgs, list)
        for m in msgs:
            c.valid(m)  # never raises, whatever the shape


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8), st.binary(max_size=8))
_values = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=4), kids,
                                                                                          max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.lists(_values, max_size=8), st.integers(0, 20))
def test_valid_never_raises_on_any_decoded_shape(fields: list, t: int) -> None:
    c.valid([t, *fields])
