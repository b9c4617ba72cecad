"""What a gossip pool remembers across restarts — Serf's snapshot (`<data_dir>/serf/local.snapshot` for the
LAN, `remote.snapshot` for the servers' WAN pool).

An append-only text log, one fact a line: `alive: NAME HOST:PORT` when a member joins or comes back,
`not-alive: NAME` when it fails, leaves or is reaped, `event-clock: N` for the user events' Lamport clock,
and `leave` when this agent leaves gracefully. On start the log is replayed: the members still alive in
it are who the agent re-joins (one at a time, in random order, until one answers — Serf's rejoin), so a
restarted agent finds its pool again without `retry_join`. After a graceful leave it does not, unless
`rejoin_after_leave` (Consul's rule). When the log outgrows its live content it is rewritten (compacted)
through a temporary file and a rename, so a crash mid-rewrite keeps the old one.

`replay` is pure (lines in, state out); `SnapshotFile` is the thin file shell. A line it cannot read is
skipped and counted, never fatal: a torn last line after a crash is expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

COMPACT_MIN_BYTES = 128 * 1024  # Serf's snapshotSizeLimit: below this the log is never rewritten
COMPACT_FACTOR = 2  # rewrite when the log is this many times the size of its live content (and over the minimum)


class SnapshotError(Exception):
    """The snapshot file cannot be opened or written (the directory is not writable, …)."""


@dataclass
class Remembered:
    """A replayed snapshot: the members alive at the end, the event clock, and whether we had left."""

    alive: dict[str, str] = field(default_factory=dict)  # name -> "host:port"
    event_clock: int = 0
    left: bool = False
    unreadable: int = 0

    def rejoin_addresses(self, me: str, rejoin_after_leave: bool) -> list[str]:
        """Whom to re-join: every member still alive in the log but us — none after a graceful leave,
        unless `rejoin_after_leave`."""
        if self.left and not rejoin_after_leave:
            return []
        return [addr for name, addr in self.alive.items() if name != me]


def replay(lines: Iterable[str]) -> Remembered:
    """The state a snapshot log ends in. A `leave` marks that we left; any later line (a restart that
    re-joined after all) clears the mark."""
    out = Remembered()
    for raw in lines:
        line = raw.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        if line == "leave":
            out.left = True
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            out.unreadable += 1
            continue
        if key == "alive":
            name, _, addr = value.rpartition(" ")
            if not name or ":" not in addr:
                out.unreadable += 1
                continue
            out.alive[name] = addr
        elif key == "not-alive":
            out.alive.pop(value, None)
        elif key == "event-clock":
            try:
                out.event_clock = max(out.event_clock, int(value))
            except ValueError:
                out.unreadable += 1
                continue
        else:
            out.unreadable += 1
            continue
        out.left = False
    return out


def render(state: Remembered) -> str:
    """The shortest log that replays to `state` (what a compaction writes)."""
    lines = [f"alive: {name} {addr}" for name, addr in state.alive.items()]
    if state.event_clock:
        lines.append(f"event-clock: {state.event_clock}")
    if state.left:
        lines.append("leave")
    return "".join(line + "\n" for line in lines)


class SnapshotFile:
    """The log on disk: `load` once at start, then `alive` / `gone` / `event_clock` / `leave` as the pool
    changes; every call appends and flushes (a line is tens of bytes, membership changes are rare)."""

    def __init__(self, path: Path, *, compact_min: int = COMPACT_MIN_BYTES) -> None:
        self.path = path
        self.compact_min = compact_min
        self.state = Remembered()
        self._size = 0  # bytes in the file
        self._live = 0  # bytes of its alive lines in compact form (kept as they change: no render per append)
        self._file: TextIO | None = None

    def load(self) -> Remembered:
        """Replay what is on disk (nothing if there is no file) and open it for appending. Raises
        SnapshotError when the directory or file cannot be used."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self.state = replay(f)
            remembered = Remembered(dict(self.state.alive), self.state.event_clock, self.state.left,
                                    self.state.unreadable)
            self._rewrite()  # start from the compact form: torn lines and history gone
        except OSError as e:
            raise SnapshotError(f"cannot use the gossip snapshot {self.path}: {e.strerror or e}") from None
        return remembered

    def alive(self, name: str, addr: str) -> None:
        old = self.state.alive.get(name)
        if old != addr:
            self.state.alive[name] = addr
            line = f"alive: {name} {addr}"
            self._live += len(line) + 1 - (len(f"alive: {name} {old}\n") if old is not None else 0)
            self._append(line)

    def gone(self, name: str) -> None:
        old = self.state.alive.pop(name, None)
        if old is not None:
            self._live -= len(f"alive: {name} {old}\n")
            self._append(f"not-alive: {name}")

    def event_clock(self, ltime: int) -> None:
        if ltime > self.state.event_clock:
            self.state.event_clock = ltime
            self._append(f"event-clock: {ltime}")

    def leave(self) -> None:
        self.state.left = True
        self._append("leave")

    def close(self) -> None:
        f = self._file
        self._file = None
        if f is not None:
            f.close()

    def _append(self, line: str) -> None:
        f = self._file
        if f is None:
            return
        if line != "leave":
            self.state.left = False
        data = line + "\n"
        try:
            f.write(data)
            f.flush()
        except OSError:
            return  # a full disk costs us the rejoin list, never the pool
        self._size += len(data)
        if self._size > max(self.compact_min, COMPACT_FACTOR * (self._live + 64)):  # 64: the clock and leave lines
            try:
                self._rewrite()
            except OSError:
                pass

    def _rewrite(self) -> None:
        self.close()
        tmp = self.path.with_name(self.path.name + ".compact")
        text = render(self.state)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # kept open for appends
        self._size = len(text)
        self._live = sum(len(f"alive: {name} {addr}\n") for name, addr in self.state.alive.items())
