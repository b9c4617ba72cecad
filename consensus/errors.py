"""The consensus component's errors: one small tree, translated to HTTP statuses by the agent."""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error the consensus component raises on purpose."""


class NotLeader(RaftError):
    """The request needs the leader and this server is not it; names the leader when one is known."""

    def __init__(self, leader_id: str = "", leader_addr: str = "") -> None:
        self.leader_id = leader_id
        self.leader_addr = leader_addr
        if leader_id:
            msg = f"not the leader: the leader is {leader_id!r} at {leader_addr or 'an unknown address'}"
        else:
            msg = "not the leader and no leader is known (an election may be in progress): retry shortly"
        super().__init__(msg)


class ProposalDropped(RaftError):
    """The proposal was not appended (e.g. a leadership transfer is in progress): retry it."""


class LeadershipLost(RaftError):
    """Leadership was lost while the request waited; its outcome is unknown (it may still commit)."""


class ConfChangeInProgress(RaftError):
    """A membership change is still uncommitted; only one change may be in flight at a time."""


class ConfigurationError(RaftError):
    """A membership change that makes no sense for the current configuration (names the server)."""


class BootstrapError(RaftError):
    """Bootstrap was refused: the storage already holds state, or the configuration is invalid."""


class SafetyViolation(RaftError):
    """An internal Raft invariant broke (a committed entry would be overwritten): a bug, never retry."""


class DecodeError(RaftError):
    """Bytes from the network or disk do not decode to a valid message, entry or record."""


class StorageError(RaftError):
    """The durable log or its files could not be read or written."""


class CorruptionError(StorageError):
    """A checksum failed or records are missing in the middle of the log: refuse to start silently."""


class DataDirLocked(StorageError):
    """Another process (or another storage object) holds the data directory's lock."""


class NodeStopped(RaftError):
    """The node was stopped while the request waited."""
