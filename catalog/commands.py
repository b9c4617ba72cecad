"""Typed FSM commands: every mutation of the catalog is one of these.

Each command is a small dataclass with an explicit type tag. `encode` turns it into msgpack bytes
for the Raft log and `decode` turns them back. Times and IDs are stamped by the leader before a
command is proposed, so applying the same command to the same state gives the same result everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from .errors import UnknownCommand


@dataclass(slots=True)
class Command:
    TYPE: ClassVar[str] = ""


@dataclass(slots=True)
class Register(Command):
    """Catalog.Register: a node, optionally one service and any number of checks on it."""

    TYPE: ClassVar[str] = "register"
    node: dict[str, Any]
    service: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    skip_node_update: bool = False
    now: float = 0.0


@dataclass(slots=True)
class Deregister(Command):
    """Catalog.Deregister: a whole node, or one service (with its checks), or one check."""

    TYPE: ClassVar[str] = "deregister"
    node: str
    service_id: str = ""
    check_id: str = ""
    now: float = 0.0


@dataclass(slots=True)
class KVOp(Command):
    """One KV operation. verb: set, cas, lock, unlock, delete, delete-cas, delete-tree."""

    TYPE: ClassVar[str] = "kv"
    verb: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""
    now: float = 0.0


@dataclass(slots=True)
class Txn(Command):
    """An atomic list of /v1/txn operations: KV ops, and Node/Service/Check/Session ops (those carry a "Kind")."""

    TYPE: ClassVar[str] = "txn"
    ops: list[dict[str, Any]]
    now: float = 0.0


@dataclass(slots=True)
class SessionCreate(Command):
    TYPE: ClassVar[str] = "session-create"
    session: dict[str, Any]
    now: float = 0.0


@dataclass(slots=True)
class SessionDestroy(Command):
    TYPE: ClassVar[str] = "session-destroy"
    id: str
    now: float = 0.0


@dataclass(slots=True)
class TombstoneReap(Command):
    """Drop KV tombstones at or below `index` (the leader decides when they are old enough)."""

    TYPE: ClassVar[str] = "tombstone-reap"
    index: int


@dataclass(slots=True)
class TableSet(Command):
    """Upsert a row of a simple keyed table (intentions, CA roots, CA config, config entries)."""

    TYPE: ClassVar[str] = "table-set"
    table: str
    key: str
    row: dict[str, Any]
    cas: int | None = None
    validate: bool = True  # False: another datacenter's rows, already checked there (replication)


@dataclass(slots=True)
class TableDelete(Command):
    TYPE: ClassVar[str] = "table-delete"
    table: str
    key: str
    cas: int | None = None
    validate: bool = True


@dataclass(slots=True)
class Restore(Command):
    """Replace the whole state with a snapshot (operator restore), applied identically everywhere."""

    TYPE: ClassVar[str] = "restore"
    state: bytes


@dataclass(slots=True)
class Batch(Command):
    """Several commands applied as one log entry (e.g. the CA's roots and config together)."""

    TYPE: ClassVar[str] = "batch"
    commands: list[Command]


COMMAND_TYPES: dict[str, type[Command]] = {
    c.TYPE: c
    for c in (Register, Deregister, KVOp, Txn, SessionCreate, SessionDestroy, TombstoneReap, TableSet,
              TableDelete, Restore, Batch)
}


# Field names per command type, and the types that carry the leader's clock (`now`): looked up once
# here rather than through dataclasses.fields() on every write.
_FIELDS: dict[type[Command], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in COMMAND_TYPES.values()}
_STAMPED: frozenset[type[Command]] = frozenset(cls for cls, names in _FIELDS.items() if "now" in names)


def stamp(cmd: Command, now: float) -> Command:
    """The command with the leader's wall-clock time in its `now` field (unchanged if it has none)."""
    return dataclasses.replace(cmd, now=now) if type(cmd) in _STAMPED else cmd  # type: ignore[call-arg]


def _to_plain(cmd: Command) -> list[Any]:
    if type(cmd) is Batch:
        return [cmd.TYPE, {"commands": [_to_plain(sub) for sub in cmd.commands]}]
    names = _FIELDS.get(type(cmd)) or tuple(f.name for f in dataclasses.fields(cmd))
    return [cmd.TYPE, {name: getattr(cmd, name) for name in names}]


def _from_plain(obj: Any) -> Command:
    if not isinstance(obj, list | tuple) or len(obj) != 2 or not isinstance(obj[1], dict):
        raise UnknownCommand("command is not a [type, fields] pair")
    tag, fields = obj
    cls = COMMAND_TYPES.get(tag)
    if cls is None:
        raise UnknownCommand(f"unknown command type {tag!r}")
    if cls is Batch:
        fields = dict(fields, commands=[_from_plain(c) for c in fields.get("commands", [])])
    try:
        return cls(**fields)
    except TypeError as e:
        raise UnknownCommand(f"bad fields for {tag!r}: {e}") from None


def encode(cmd: Command) -> bytes:
    """Encode a command as msgpack bytes for the Raft log."""
    return msgpack.packb(_to_plain(cmd), use_bin_type=True)


def decode(data: bytes) -> Command:
    """Decode bytes produced by `encode`; raises UnknownCommand for anything else."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise UnknownCommand(f"undecodable command: {e}") from None
    return _from_plain(obj)
