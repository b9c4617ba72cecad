"""Wire encoding of Raft messages and entries: round-trips, and garbage never gets past decode."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.consensus.errors import ConfigurationError, DecodeError
from proconsul.consensus.messages import (
    ConfChange,
    ConfChangeType,
    Configuration,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
    decode_conf_entry,
    encode_conf_entry,
)

ids = st.text(min_size=1, max_size=8)
u64 = st.integers(min_value=0, max_value=2**63)
entries = st.builds(Entry, u64, u64, st.sampled_from(list(EntryType)), st.binary(max_size=64))
configs = st.builds(lambda v, lr: Configuration(v, {k: a for k, a in lr.items() if k not in v}),
                    st.dictionaries(ids, st.text(max_size=20), max_size=4),
                    st.dictionaries(ids, st.text(max_size=20), max_size=3))
snapshots = st.builds(lambda i, t, c, d: Snapshot(SnapshotMeta(i, t, c), d), u64, u64, configs, st.binary(max_size=64))
messages = st.builds(
    Message, st.sampled_from(list(MsgType)), ids, ids, u64, log_term=u64, index=u64,
    entries=st.lists(entries, max_size=4).map(tuple), commit=u64, reject=st.booleans(), reject_hint=u64,
    snapshot=st.none() | snapshots, context=st.binary(max_size=16))


@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert Message.decode(m.encode()) == m


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_random_bytes_raise_decode_error_only(data: bytes) -> None:
    try:
        Message.decode(data)
    except DecodeError:
        pass


@given(messages, st.data())
@settings(max_examples=200)
def test_mutated_wire_lists_raise_decode_error_only(m: Message, data: st.DataObject) -> None:
    w = m.to_wire()
    i = data.draw(st.integers(0, len(w) - 1))
    w[i] = data.draw(st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.binary(max_size=3),
                               st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3)))  # msgpack ints are 64-bit
    try:
        Message.decode(msgpack.packb(w, use_bin_type=True))
    except DecodeError:
        pass


def test_decode_rejects_wrong_version_and_types() -> None:
    good = Message(MsgType.APP, "a", "b", 1).to_wire()
    with pytest.raises(DecodeError):
        Message.from_wire([99] + good[1:])
    with pytest.raises(DecodeError):
        Message.from_wire(good[:-1])
    bad = list(good)
    bad[4] = -1
    with pytest.raises(DecodeError):
        Message.from_wire(bad)
    bad = list(good)
    bad[1] = 77
    with pytest.raises(DecodeError, match="message type"):
        Message.from_wire(bad)


@given(configs)
def test_conf_entry_round_trip(c: Configuration) -> None:
    cc = ConfChange(ConfChangeType.ADD_VOTER, "x", "addr")
    assert decode_conf_entry(encode_conf_entry(cc, c)) == (cc, c)
    assert decode_conf_entry(encode_conf_entry(None, c)) == (None, c)


def test_hard_state_round_trip() -> None:
    hs = HardState(3, "n1", 7)
    assert HardState.from_wire(hs.to_wire()) == hs


def test_configuration_changes() -> None:
    c = Configuration({"a": "1"})
    c = c.apply(ConfChange(ConfChangeType.ADD_LEARNER, "b", "2"))
    assert c.learners == {"b": "2"} and c.quorum() == 1
    c = c.apply(ConfChange(ConfChangeType.PROMOTE, "b"))
    assert c.voters == {"a": "1", "b": "2"} and c.quorum() == 2
    with pytest.raises(ConfigurationError, match="already a voter"):
        c.apply(ConfChange(ConfChangeType.ADD_VOTER, "b", "2"))
    with pytest.raises(ConfigurationError, match="needs its address"):
        c.apply(ConfChange(ConfChangeType.ADD_VOTER, "z"))
    c = c.apply(ConfChange(ConfChangeType.REMOVE, "a"))
    with pytest.raises(ConfigurationError, match="last voter"):
        c.apply(ConfChange(ConfChangeType.REMOVE, "b"))
    c = Configuration({"a": "1"}, {"l": "9"}).apply(ConfChange(ConfChangeType.ADD_VOTER, "l"))
    assert c.voters == {"a": "1", "l": "9"} and not c.learners
