"""The core's in-memory view of the Raft log: entries after the last compaction, with markers for
what is persisted (`unstable_from`), committed, handed out for applying, and applied."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SafetyViolation
from .messages import Entry, EntryType, Snapshot


class RaftLog:
    """Entries `offset+1 .. last_index` in memory; `offset`/`offset_term` describe the compaction point."""

    def __init__(self, offset: int = 0, offset_term: int = 0, entries: Sequence[Entry] = (),
                 committed: int = 0) -> None:
        self.offset = offset
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        for i, e in enumerate(self.entries):
            if e.index != offset + 1 + i:
                raise SafetyViolation(f"log entries are not contiguous at index {e.index}")
        self.committed = min(max(committed, offset), self.last_index)
        self.applying = offset  # highest index handed out for applying (Ready.committed_entries)
        self.applied = offset  # highest index the shell confirmed applied (advance)
        self.unstable_from = self.last_index + 1  # entries from here on are not yet persisted
        self.pending_snapshot: Snapshot | None = None  # received from a leader, not yet persisted
        self.conf_indexes: list[int] = [e.index for e in self.entries if e.type == EntryType.CONF]

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    @property
    def stable_index(self) -> int:
        return min(self.unstable_from - 1, self.last_index)

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index:
            return self.entries[index - self.offset - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is a candidate's log at least as up to date as ours?"""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    def slice(self, lo: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries from `lo`, at most `max_entries` and about `max_bytes` (always one if any exist)."""
        start = lo - self.offset - 1
        if start < 0:
            raise IndexError(f"index {lo} is compacted (log starts at {self.first_index})")
        out: list[Entry] = []
        size = 0
        for e in self.entries[start:start + max_entries]:
            size += e.size()
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, truncating any suffix from the first new index (never below the commit index)."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise SafetyViolation(f"appending at {first} would overwrite committed entries (commit {self.committed})")
        if first > self.last_index + 1:
            raise SafetyViolation(f"gap: appending {first} after {self.last_index}")
        if first <= self.last_index:
            del self.entries[first - self.offset - 1:]
            while self.conf_indexes and self.conf_indexes[-1] >= first:
                self.conf_indexes.pop()
            self.unstable_from = min(self.unstable_from, first)
        self.entries.extend(entries)
        self.conf_indexes.extend(e.index for e in entries if e.type == EntryType.CONF)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """The index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, with that term (fast log backtracking)."""
        while index > self.offset:
            t = self.term(index)
            if t is None or t <= term:
                return index, (t or 0)
            index -= 1
        return index, (self.offset_term if index == self.offset else 0)

    def maybe_append(self, index: int, log_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """The follower half of AppendEntries: None if (index, log_term) does not match our log."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            if ci <= self.committed:
                raise SafetyViolation(f"entry {ci} conflicts with the committed log (commit {self.committed})")
            self.append(entries[ci - index - 1:])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index:
                raise SafetyViolation(f"commit {index} is beyond the last index {self.last_index}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: advance the commit index to `index` only if that entry is from the current term."""
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    def unstable_entries(self) -> list[Entry]:
        if self.unstable_from > self.last_index:
            return []
        return self.entries[max(self.unstable_from, self.first_index) - self.offset - 1:]

    def stable_to(self, index: int, term: int) -> None:
        if index >= self.unstable_from - 1 and self.term(index) == term:
            self.unstable_from = index + 1

    def next_committed(self, max_entries: int) -> list[Entry]:
        lo = max(self.applying + 1, self.first_index)
        hi = min(self.committed, lo + max_entries - 1)
        if hi < lo:
            return []
        return self.entries[lo - self.offset - 1:hi - self.offset]

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.offset, self.offset_term = snap.index, snap.term
        self.entries = []
        self.conf_indexes = []
        self.committed = snap.index
        self.applying = max(self.applying, snap.index)
        self.unstable_from = snap.index + 1
        self.pending_snapshot = snap

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index` (the FSM's snapshot covers them)."""
        if index <= self.offset:
            return
        if index > self.applied or index >= self.unstable_from:
            raise ValueError(f"cannot compact to {index}: applied {self.applied}, persisted {self.stable_index}")
        term = self.term(index)
        assert term is not None
        del self.entries[:index - self.offset]
        self.offset, self.offset_term = index, term
        while self.conf_indexes and self.conf_indexes[0] <= index:
            self.conf_indexes.pop(0)
