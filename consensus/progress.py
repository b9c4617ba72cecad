"""The leader's view of each follower: how far its log matches, and the flow control to it."""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 1  # one AppendEntries at a time until we find where the logs match
    REPLICATE = 2  # pipelined: send optimistically, up to `max_inflight` unacknowledged messages
    SNAPSHOT = 3  # an InstallSnapshot is in flight; send nothing else until it is acknowledged


class Progress:
    """Replication state of one peer as seen by the leader."""

    __slots__ = ("match", "next", "state", "probe_sent", "pending_snapshot", "recent_active", "inflights",
                 "max_inflight", "is_learner", "snapshot_ticks", "commit_sent")

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.inflights: deque[int] = deque()  # last index of each unacknowledged AppendEntries
        self.max_inflight = max_inflight
        self.is_learner = is_learner
        self.snapshot_ticks = 0
        self.commit_sent = 0  # the highest commit index an AppendEntries to this peer carried

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
                f"inflight={len(self.inflights)}, probe_sent={self.probe_sent})")

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
            self.pending_snapshot = 0
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.inflights.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_ticks = 0
        self.inflights.clear()

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to `index`: True if it moved the match index."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append at `rejected`: back off `next`. False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def sent(self, last_index: int, n_entries: int) -> None:
        """Record an AppendEntries just sent (optimistic `next` in REPLICATE, pause in PROBE)."""
        if self.state == ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflights.append(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def free_inflights_le(self, index: int) -> None:
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()
