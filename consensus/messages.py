"""Raft's data: entries, messages, configurations, snapshots and hard state.

Small dataclasses, each with `to_wire()` (plain msgpack-able lists) and `from_wire()` (strict
validation, raises DecodeError) so that bytes from a socket or a disk never reach the core unchecked.
Every message carries an explicit type tag (`MsgType`), every entry an `EntryType`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from .errors import ConfigurationError, DecodeError

WIRE_VERSION = 1


class MsgType(IntEnum):
    """The type tag of a Raft message."""

    APP = 1  # AppendEntries (also the probe and the commit-index carrier)
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9  # InstallSnapshot
    TIMEOUT_NOW = 10  # leadership transfer: campaign now, skipping pre-vote and the leader lease


class EntryType(IntEnum):
    """What a log entry carries."""

    NORMAL = 1  # an application command, handed to the FSM
    NOOP = 2  # the entry a new leader appends to commit entries of earlier terms
    CONF = 3  # a membership change: carries the change and the whole resulting configuration


class Role(IntEnum):
    FOLLOWER = 1
    PRE_CANDIDATE = 2
    CANDIDATE = 3
    LEADER = 4


class ConfChangeType(IntEnum):
    ADD_VOTER = 1
    ADD_LEARNER = 2  # a non-voter: receives the log, does not vote or count toward quorum
    PROMOTE = 3  # learner -> voter
    REMOVE = 4


def _fail(what: str, value: Any) -> DecodeError:
    return DecodeError(f"invalid {what}: {value!r:.80}")


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise _fail(what, v)
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise _fail(what, v)
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise _fail(what, v)
    return v


def _list(v: Any, what: str, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise _fail(what, v)
    return v


def _enum(cls: type[IntEnum], v: Any, what: str) -> Any:
    try:
        return cls(_int(v, what))
    except ValueError:
        raise _fail(what, v) from None


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. `data` is opaque to Raft (an FSM command for NORMAL entries)."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.term, self.index, int(self.type), self.data]

    @classmethod
    def from_wire(cls, w: Any) -> Entry:
        w = _list(w, "entry", 4)
        return cls(_int(w[0], "entry term"), _int(w[1], "entry index"), _enum(EntryType, w[2], "entry type"),
                   _bytes(w[3], "entry data"))

    def size(self) -> int:
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class Configuration:
    """Cluster membership: server id -> address, for voters and learners (non-voters)."""

    voters: dict[str, str] = field(default_factory=dict)
    learners: dict[str, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.voters and not self.learners

    def members(self) -> dict[str, str]:
        return {**self.voters, **self.learners}

    def address(self, server_id: str) -> str:
        return self.voters.get(server_id) or self.learners.get(server_id) or ""

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def to_wire(self) -> list[Any]:
        return [sorted([k, v] for k, v in self.voters.items()), sorted([k, v] for k, v in self.learners.items())]

    @classmethod
    def from_wire(cls, w: Any) -> Configuration:
        w = _list(w, "configuration", 2)
        voters = {_str(p[0], "server id"): _str(p[1], "server address")
                  for p in (_list(x, "server", 2) for x in _list(w[0], "voters"))}
        learners = {_str(p[0], "server id"): _str(p[1], "server address")
                    for p in (_list(x, "server", 2) for x in _list(w[1], "learners"))}
        if set(voters) & set(learners):
            raise _fail("configuration (a server is both voter and learner)", w)
        return cls(voters, learners)

    def apply(self, cc: ConfChange) -> Configuration:
        """The configuration after `cc`; raises ConfigurationError when the change makes no sense."""
        voters, learners = dict(self.voters), dict(self.learners)
        sid = cc.node_id
        if not sid:
            raise ConfigurationError("the server id of a membership change must not be empty")
        if cc.type == ConfChangeType.ADD_VOTER:
            if sid in voters:
                raise ConfigurationError(f"server {sid!r} is already a voter")
            learners.pop(sid, None)
            voters[sid] = cc.address or self.address(sid)
            if not voters[sid]:
                raise ConfigurationError(f"adding server {sid!r} needs its address")
        elif cc.type == ConfChangeType.ADD_LEARNER:
            if sid in voters:
                raise ConfigurationError(f"server {sid!r} is a voter; remove it first to make it a non-voter")
            if sid in learners:
                raise ConfigurationError(f"server {sid!r} is already a non-voter")
            if not cc.address:
                raise ConfigurationError(f"adding server {sid!r} needs its address")
            learners[sid] = cc.address
        elif cc.type == ConfChangeType.PROMOTE:
            if sid not in learners:
                raise ConfigurationError(f"server {sid!r} is not a non-voter, so it cannot be promoted")
            voters[sid] = learners.pop(sid)
        elif cc.type == ConfChangeType.REMOVE:
            if sid not in voters and sid not in learners:
                raise ConfigurationError(f"server {sid!r} is not in the configuration")
            if sid in voters and len(voters) == 1:
                raise ConfigurationError(f"server {sid!r} is the last voter and cannot be removed")
            voters.pop(sid, None)
            learners.pop(sid, None)
        return Configuration(voters, learners)


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change."""

    type: ConfChangeType
    node_id: str
    address: str = ""

    def to_wire(self) -> list[Any]:
        return [int(self.type), self.node_id, self.address]

    @classmethod
    def from_wire(cls, w: Any) -> ConfChange:
        w = _list(w, "conf change", 3)
        return cls(_enum(ConfChangeType, w[0], "conf change type"), _str(w[1], "server id"),
                   _str(w[2], "server address"))


def encode_conf_entry(cc: ConfChange | None, config: Configuration) -> bytes:
    """The data of a CONF entry: the change (None for bootstrap) and the whole resulting configuration."""
    return msgpack.packb([cc.to_wire() if cc else None, config.to_wire()], use_bin_type=True)


def decode_conf_entry(data: bytes) -> tuple[ConfChange | None, Configuration]:
    try:
        w = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise DecodeError(f"invalid configuration entry: {exc}") from None
    w = _list(w, "configuration entry", 2)
    return (ConfChange.from_wire(w[0]) if w[0] is not None else None), Configuration.from_wire(w[1])


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    config: Configuration

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, self.config.to_wire()]

    @classmethod
    def from_wire(cls, w: Any) -> SnapshotMeta:
        w = _list(w, "snapshot metadata", 3)
        return cls(_int(w[0], "snapshot index"), _int(w[1], "snapshot term"), Configuration.from_wire(w[2]))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The FSM's state as of `meta.index` (inclusive), with the configuration at that index."""

    meta: SnapshotMeta
    data: bytes

    @property
    def index(self) -> int:
        return self.meta.index

    @property
    def term(self) -> int:
        return self.meta.term

    def to_wire(self) -> list[Any]:
        return [self.meta.to_wire(), self.data]

    @classmethod
    def from_wire(cls, w: Any) -> Snapshot:
        w = _list(w, "snapshot", 2)
        return cls(SnapshotMeta.from_wire(w[0]), _bytes(w[1], "snapshot data"))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log: the current term, the vote in it, and the commit index."""

    term: int = 0
    vote: str = ""
    commit: int = 0

    def to_wire(self) -> list[Any]:
        return [self.term, self.vote, self.commit]

    @classmethod
    def from_wire(cls, w: Any) -> HardState:
        w = _list(w, "hard state", 3)
        return cls(_int(w[0], "term"), _str(w[1], "vote"), _int(w[2], "commit"))


@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message between two servers (one shape for all types, like etcd's raftpb.Message)."""

    type: MsgType
    to: str
    frm: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""

    def to_wire(self) -> list[Any]:
        return [WIRE_VERSION, int(self.type), self.to, self.frm, self.term, self.log_term, self.index,
                [e.to_wire() for e in self.entries], self.commit, self.reject, self.reject_hint,
                self.snapshot.to_wire() if self.snapshot is not None else None, self.context]

    @classmethod
    def from_wire(cls, w: Any) -> Message:
        w = _list(w, "message", 13)
        if w[0] != WIRE_VERSION:
            raise _fail("message wire version", w[0])
        if type(w[9]) is not bool:
            raise _fail("message reject flag", w[9])
        return cls(
            type=_enum(MsgType, w[1], "message type"), to=_str(w[2], "message to"), frm=_str(w[3], "message from"),
            term=_int(w[4], "message term"), log_term=_int(w[5], "message log term"),
            index=_int(w[6], "message index"),
            entries=tuple(Entry.from_wire(e) for e in _list(w[7], "message entries")),
            commit=_int(w[8], "message commit"), reject=w[9], reject_hint=_int(w[10], "reject hint"),
            snapshot=Snapshot.from_wire(w[11]) if w[11] is not None else None,
            context=_bytes(w[12], "message context"),
        )

    def encode(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Message:
        try:
            w = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:
            raise DecodeError(f"invalid message bytes: {exc}") from None
        return cls.from_wire(w)

    def replace(self, **changes: Any) -> Message:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once the FSM has applied `index`, a read tagged `context` is linearizable."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the shell about when it changes."""

    leader: str
    role: Role
