"""Durable Raft storage: a segmented, checksummed log, an atomic hard-state file and snapshots.

Layout of a data directory::

    LOCK                                 fcntl.flock'ed while open: one process per directory
    state.bin                            hard state (term, vote, commit), replaced atomically
    log/<first-index:020d>.seg           log segments (header + records), append-only
    snapshots/<index:020d>-<term:020d>.snap

A segment starts with a 25-byte header: b"PCLG", version, first index (u64), the term of the entry
before it (u64, chains the segment to its predecessor or to the snapshot) and a CRC32 of those
bytes. Each record is ``len u32 | crc32(payload) u32 | crc32(len, crc) u32 | payload`` with a
msgpack payload ``[term, index, type, data]``. All integers are big-endian.

Recovery: a torn tail of the newest segment (a partial record, a zeroed tail, or a bad checksum on
the very last record) is cut off, because it was never acknowledged; any other damage (a bad
checksum followed by more data, a short older segment, a gap) raises CorruptionError naming the
file and offset. Hard state and snapshots are written to a temp file, fsynced, renamed, and the
directory fsynced, so a reader sees the old or the new version, never a mix.

The storage methods block (fsync); the node shell runs them in an executor. One `save()` call
persists one Ready with a single fsync of the log however many entries it carries: since proposals
that arrive during an fsync all land in the next Ready, this is group commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgpack

from .core import InitialState
from .errors import CorruptionError, DataDirLocked, DecodeError, StorageError
from .messages import Entry, HardState, Snapshot, SnapshotMeta

SEG_MAGIC = b"PCLG"
SNAP_MAGIC = b"PCSN"
STATE_MAGIC = b"PCHS"
VERSION = 1
SEG_HEADER = struct.Struct(">4sBQQI")  # magic, version, first index, prev term, crc
REC_HEADER = struct.Struct(">III")  # payload length, payload crc, header crc
MAX_RECORD = 256 << 20
DEFAULT_SEGMENT_BYTES = 64 << 20


class Storage(Protocol):
    """What the node shell needs from storage (FileStorage on disk, MemoryStorage in dev mode)."""

    def load(self) -> InitialState: ...

    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None) -> None:
        """Persist one Ready (durable on return): install `snapshot` (replacing the log), truncate
        any suffix from `entries[0].index`, append `entries`, record `hard_state`."""

    def save_snapshot(self, snap: Snapshot) -> None:
        """Keep a snapshot the local FSM took (the log is untouched)."""

    def compact(self, index: int) -> None:
        """Drop log entries up to `index` where convenient (covered by a saved snapshot)."""

    def close(self) -> None: ...


class MemoryStorage:
    """Storage that lives in memory: dev mode and tests. Survives a simulated crash, not a real one."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.saves = 0

    def load(self) -> InitialState:
        return InitialState(self.hard_state, self.snapshot, list(self.entries))

    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None) -> None:
        self.saves += 1
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = []
        if entries:
            first = entries[0].index
            if self.entries:
                del self.entries[max(0, first - self.entries[0].index):]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, snap: Snapshot) -> None:
        if self.snapshot is None or snap.index > self.snapshot.index:
            self.snapshot = snap

    def compact(self, index: int) -> None:
        if self.entries and self.entries[0].index <= index:
            self.entries = self.entries[index - self.entries[0].index + 1:]

    def close(self) -> None:
        pass


# ---- file helpers ------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename, fsync the directory: readers see old or new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _crc(*parts: bytes) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c


def encode_record(e: Entry) -> bytes:
    payload = msgpack.packb([e.term, e.index, int(e.type), e.data], use_bin_type=True)
    n, pc = len(payload), zlib.crc32(payload)
    head = struct.pack(">II", n, pc)
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def _decode_payload(payload: bytes) -> Entry:
    try:
        return Entry.from_wire(msgpack.unpackb(payload, raw=False))
    except (DecodeError, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(str(exc)) from None


def encode_segment_header(first_index: int, prev_term: int) -> bytes:
    body = struct.pack(">4sBQQ", SEG_MAGIC, VERSION, first_index, prev_term)
    return body + struct.pack(">I", zlib.crc32(body))


def encode_snapshot_file(snap: Snapshot) -> bytes:
    meta = msgpack.packb(snap.meta.to_wire(), use_bin_type=True)
    rest = struct.pack(">I", len(meta)) + meta + snap.data
    return SNAP_MAGIC + struct.pack(">BI", VERSION, zlib.crc32(rest)) + rest


def decode_snapshot_file(raw: bytes, name: str) -> Snapshot:
    if len(raw) < 13 or raw[:4] != SNAP_MAGIC or raw[4] != VERSION:
        raise CorruptionError(f"snapshot {name}: bad header (not a Proconsul snapshot, or truncated)")
    (crc,) = struct.unpack_from(">I", raw, 5)
    rest = raw[9:]
    if zlib.crc32(rest) != crc:
        raise CorruptionError(f"snapshot {name}: checksum mismatch; the file is damaged (remove it to fall back "
                              "to an older snapshot only if the log still covers it)")
    (mlen,) = struct.unpack_from(">I", rest, 0)
    try:
        meta = SnapshotMeta.from_wire(msgpack.unpackb(rest[4:4 + mlen], raw=False))
    except Exception as exc:
        raise CorruptionError(f"snapshot {name}: bad metadata: {exc}") from None
    return Snapshot(meta, bytes(rest[4 + mlen:]))


@dataclass
class _Segment:
    path: Path
    first: int
    prev_term: int
    offsets: array = field(default_factory=lambda: array("Q"))  # byte offset of each record
    terms: array = field(default_factory=lambda: array("Q"))
    size: int = SEG_HEADER.size

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    @property
    def last_term(self) -> int:
        return self.terms[-1] if self.terms else self.prev_term


class FileStorage:
    """The durable storage of a server: see the module docstring for the format and the guarantees."""

    def __init__(self, data_dir: str | os.PathLike[str], segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 keep_snapshots: int = 2) -> None:
        self.dir = Path(data_dir)
        self.segment_bytes = segment_bytes
        self.keep_snapshots = max(1, keep_snapshots)
        self.stats = {"log_fsyncs": 0, "state_writes": 0, "saves": 0, "entries": 0}
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the active (last) segment, open for appending
        self._hs = HardState()
        self._snapshot_index = 0
        self._lock_fd: int | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        (self.dir / "log").mkdir(exist_ok=True)
        (self.dir / "snapshots").mkdir(exist_ok=True)

    # ---- lock --------------------------------------------------------------------------------

    def _lock(self) -> None:
        path = self.dir / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLocked(f"data directory {self.dir} is in use by another Proconsul server (lock {path} is "
                                "held); stop it or choose another data_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- load ----------------------------------------------------------------------------------

    def load(self) -> InitialState:
        """Recover the durable state (cutting a torn tail); on failure the lock is released."""
        try:
            return self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> InitialState:
        for leftover in list(self.dir.glob("*.tmp")) + list((self.dir / "snapshots").glob("*.tmp")) + list(
                (self.dir / "log").glob("*.tmp")):
            leftover.unlink()
        hs = self._load_state()
        snap = self._load_snapshot()
        entries = self._load_segments()
        snap_index = snap.index if snap else 0
        if snap is not None and self._segments:
            entries = self._chain_to_snapshot(snap, entries)
        if entries:
            if entries[0].index > snap_index + 1:
                raise CorruptionError(f"log in {self.dir / 'log'} starts at index {entries[0].index} but the "
                                      f"newest snapshot ends at {snap_index}: entries are missing")
        self._hs = hs
        self._snapshot_index = snap_index
        if not self._segments:
            self._new_segment(snap_index + 1, snap.term if snap else 0)
        else:
            self._open_active()
        return InitialState(hs, snap, [e for e in entries if e.index > snap_index])

    def _load_state(self) -> HardState:
        path = self.dir / "state.bin"
        if not path.exists():
            return HardState()
        raw = path.read_bytes()
        if len(raw) < 8 or raw[:4] != STATE_MAGIC or struct.unpack_from(">I", raw, 4)[0] != zlib.crc32(raw[8:]):
            raise CorruptionError(f"hard state file {path} is damaged (checksum mismatch); it holds the current "
                                  "term and vote, so the server must not start without it")
        try:
            return HardState.from_wire(msgpack.unpackb(raw[8:], raw=False))
        except Exception as exc:
            raise CorruptionError(f"hard state file {path}: {exc}") from None

    def _snapshot_files(self) -> list[Path]:
        return sorted((self.dir / "snapshots").glob("*.snap"))

    def _load_snapshot(self) -> Snapshot | None:
        files = self._snapshot_files()
        if not files:
            return None
        newest = files[-1]
        snap = decode_snapshot_file(newest.read_bytes(), str(newest))
        if newest.name != f"{snap.index:020d}-{snap.term:020d}.snap":
            raise CorruptionError(f"snapshot {newest}: its metadata says index {snap.index} term {snap.term}")
        return snap

    def _load_segments(self) -> list[Entry]:
        paths = sorted((self.dir / "log").glob("*.seg"))
        entries: list[Entry] = []
        self._segments = []
        for i, path in enumerate(paths):
            last_segment = i == len(paths) - 1
            seg, seg_entries = self._read_segment(path, last_segment)
            if self._segments:
                prev = self._segments[-1]
                if seg.first != prev.last + 1 or seg.prev_term != prev.last_term:
                    raise CorruptionError(
                        f"log segment {path} starts at {seg.first} (after term {seg.prev_term}) but the previous "
                        f"segment ends at {prev.last} (term {prev.last_term}): records are missing")
            self._segments.append(seg)
            entries.extend(seg_entries)
        return entries

    def _read_segment(self, path: Path, last_segment: bool) -> tuple[_Segment, list[Entry]]:
        raw = path.read_bytes()
        if len(raw) < SEG_HEADER.size:
            raise CorruptionError(f"log segment {path}: header truncated ({len(raw)} bytes)")
        magic, version, first, prev_term, crc = SEG_HEADER.unpack_from(raw, 0)
        if magic != SEG_MAGIC or version != VERSION or zlib.crc32(raw[:SEG_HEADER.size - 4]) != crc:
            raise CorruptionError(f"log segment {path}: bad header")
        if path.name != f"{first:020d}.seg":
            raise CorruptionError(f"log segment {path}: header says it starts at {first}")
        seg = _Segment(path, first, prev_term)
        entries: list[Entry] = []
        pos = SEG_HEADER.size
        n = len(raw)
        while pos < n:
            torn = self._check_record(raw, pos, path)
            if torn is not None:
                if not last_segment:
                    raise CorruptionError(f"log segment {path}: {torn} at offset {pos} in a sealed segment")
                # The tail of the newest segment was being written when we crashed: cut it off.
                with open(path, "r+b") as f:
                    f.truncate(pos)
                    f.flush()
                    os.fsync(f.fileno())
                break
            length = struct.unpack_from(">I", raw, pos)[0]
            payload = raw[pos + REC_HEADER.size:pos + REC_HEADER.size + length]
            try:
                e = _decode_payload(payload)
            except DecodeError as exc:
                raise CorruptionError(f"log segment {path}: record at offset {pos} passed its checksum but does "
                                      f"not decode: {exc}") from None
            expect = first + len(seg.offsets)
            if e.index != expect:
                raise CorruptionError(f"log segment {path}: record at offset {pos} has index {e.index}, "
                                      f"expected {expect}")
            seg.offsets.append(pos)
            seg.terms.append(e.term)
            entries.append(e)
            pos += REC_HEADER.size + length
        seg.size = min(pos, n)
        return seg, entries

    @staticmethod
    def _check_record(raw: bytes, pos: int, path: Path) -> str | None:
        """None if the record at `pos` is whole and intact; a reason if it is a torn tail.
        Raises CorruptionError for damage that a crash cannot explain (more data follows)."""
        n = len(raw)
        if n - pos < REC_HEADER.size:
            return "partial record header"
        length, pcrc, hcrc = REC_HEADER.unpack_from(raw, pos)
        if zlib.crc32(raw[pos:pos + 8]) != hcrc:
            if not any(raw[pos:]):
                return "zero-filled tail"
            raise CorruptionError(f"log segment {path}: record header checksum mismatch at offset {pos}")
        if length > MAX_RECORD:
            raise CorruptionError(f"log segment {path}: record at offset {pos} claims {length} bytes")
        end = pos + REC_HEADER.size + length
        if end > n:
            return "partial record"
        if zlib.crc32(raw[pos + REC_HEADER.size:end]) != pcrc:
            if end == n:
                return "bad checksum on the last record"
            raise CorruptionError(f"log segment {path}: record checksum mismatch at offset {pos} "
                                  f"(and {n - end} more bytes follow, so this is not a torn write)")
        return None

    def _chain_to_snapshot(self, snap: Snapshot, entries: list[Entry]) -> list[Entry]:
        """Keep log entries after the snapshot only if they provably continue its history."""
        after = [e for e in entries if e.index > snap.index]
        at = [e for e in entries if e.index == snap.index]
        if not after:
            ok = bool(at) and at[0].term == snap.term  # keep the segments only if appends can continue them
        elif at:
            ok = at[0].term == snap.term
        else:
            seg = next((s for s in self._segments if s.first == snap.index + 1), None)
            ok = seg is not None and seg.prev_term == snap.term
        if ok:
            return entries
        # The old log ends before the snapshot, or a crash interrupted installing a snapshot from the
        # leader and the old log diverges from it: everything it holds is covered or superseded.
        for seg in reversed(self._segments):
            seg.path.unlink()
        _fsync_dir(self.dir / "log")
        self._segments = []
        return []

    # ---- writing ----------------------------------------------------------------------------

    def _new_segment(self, first: int, prev_term: int) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        path = self.dir / "log" / f"{first:020d}.seg"
        _atomic_write(path, encode_segment_header(first, prev_term))
        self._segments.append(_Segment(path, first, prev_term))
        self._open_active()

    def _open_active(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._segments[-1].path, os.O_RDWR | os.O_APPEND)

    @property
    def first_index(self) -> int:
        return self._segments[0].first if self._segments else self._snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self._segments[-1].last if self._segments else self._snapshot_index

    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None) -> None:
        if self._fd is None:
            raise StorageError("storage is not loaded (call load() first) or was closed")
        self.stats["saves"] += 1
        if snapshot is not None:
            self._install_snapshot(snapshot)
        if entries:
            self._append(entries)
        if hard_state is not None and (hard_state.term, hard_state.vote) != (self._hs.term, self._hs.vote):
            # The commit index rides along but alone never costs a write: it is recomputed after a restart.
            body = msgpack.packb(hard_state.to_wire(), use_bin_type=True)
            _atomic_write(self.dir / "state.bin", STATE_MAGIC + struct.pack(">I", zlib.crc32(body)) + body)
            self.stats["state_writes"] += 1
            self._hs = hard_state

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self.last_index:
            self._truncate_from(first)
        if first != self.last_index + 1:
            raise StorageError(f"append at {first} leaves a gap after {self.last_index}")
        buf = bytearray()
        seg = self._segments[-1]
        for e in entries:
            if seg.offsets and seg.size + len(buf) >= self.segment_bytes:
                self._write(buf)
                buf = bytearray()
                self._new_segment(e.index, seg.last_term)
                seg = self._segments[-1]
            seg.offsets.append(seg.size + len(buf))
            seg.terms.append(e.term)
            buf += encode_record(e)
        self._write(buf)
        assert self._fd is not None
        os.fsync(self._fd)
        self.stats["log_fsyncs"] += 1
        self.stats["entries"] += len(entries)

    def _write(self, buf: bytes | bytearray) -> None:
        assert self._fd is not None
        view = memoryview(buf)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._segments[-1].size += len(buf)

    def _truncate_from(self, index: int) -> None:
        """Remove entries >= index: newest segments first, so a crash leaves a prefix of the old log."""
        removed = False
        while len(self._segments) > 1 and self._segments[-1].first >= index:
            seg = self._segments.pop()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            seg.path.unlink()
            removed = True
        if removed:
            _fsync_dir(self.dir / "log")
            self._open_active()
        seg = self._segments[-1]
        if index <= seg.last:
            k = index - seg.first
            cut = seg.offsets[k] if k >= 0 else SEG_HEADER.size
            assert self._fd is not None
            os.ftruncate(self._fd, cut)
            os.fsync(self._fd)
            del seg.offsets[max(k, 0):]
            del seg.terms[max(k, 0):]
            seg.size = cut

    def _install_snapshot(self, snap: Snapshot) -> None:
        """A snapshot from the leader replaces the whole log: write it, then reset the log after it."""
        self.save_snapshot(snap)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for seg in reversed(self._segments):
            seg.path.unlink()
        _fsync_dir(self.dir / "log")
        self._segments = []
        self._new_segment(snap.index + 1, snap.term)

    def save_snapshot(self, snap: Snapshot) -> None:
        if snap.index <= self._snapshot_index and self._snapshot_files():
            return
        path = self.dir / "snapshots" / f"{snap.index:020d}-{snap.term:020d}.snap"
        _atomic_write(path, encode_snapshot_file(snap))
        self._snapshot_index = snap.index
        files = self._snapshot_files()
        for old in files[:-self.keep_snapshots]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def compact(self, index: int) -> None:
        """Delete whole segments that end at or before `index` (never the active one), oldest first."""
        index = min(index, self._snapshot_index)
        dropped = False
        while len(self._segments) > 1 and self._segments[0].last <= index:
            self._segments.pop(0).path.unlink()
            dropped = True
        if dropped:
            _fsync_dir(self.dir / "log")
