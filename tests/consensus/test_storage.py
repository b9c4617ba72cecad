"""Durable storage: round-trips, group commit, truncation, compaction, snapshots, the data-dir lock,
and crash recovery — files cut at every byte offset recover a prefix; damage in the middle is reported."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from proconsul.consensus.errors import CorruptionError, DataDirLocked
from proconsul.consensus.messages import Configuration, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from proconsul.consensus.storage import FileStorage, MemoryStorage

CONF = Configuration({"a": "127.0.0.1:1"})


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, f"e{i}-t{term}".encode().ljust(size, b".")) for i in range(lo, hi + 1)]


def snap(index: int, term: int, data: bytes = b"fsm") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONF), data)


def reopen(path: Path, **kw: int) -> tuple[FileStorage, list[Entry], HardState, Snapshot | None]:
    st = FileStorage(path, **kw)
    state = st.load()
    return st, state.entries, state.hard_state, state.snapshot


def test_round_trip_and_group_commit(tmp_path: Path) -> None:
    st, got, hs, sn = reopen(tmp_path)
    assert got == [] and hs == HardState() and sn is None
    st.save(HardState(2, "a", 0), ents(1, 100), None)
    assert st.stats["log_fsyncs"] == 1, "one fsync for the whole batch"
    st.save(HardState(2, "a", 50), ents(101, 120), None)
    assert st.stats["state_writes"] == 1, "a commit-only change does not rewrite the hard state"
    st.close()
    st, got, hs, _ = reopen(tmp_path)
    assert got == ents(1, 120) and hs == HardState(2, "a", 0)
    st.close()


def test_segments_roll_and_compaction_drops_whole_segments(tmp_path: Path) -> None:
    st, _, _, _ = reopen(tmp_path, segment_bytes=400)
    st.save(None, ents(1, 60), None)
    segs = sorted((tmp_path / "log").glob("*.seg"))
    assert len(segs) > 3
    st.save_snapshot(snap(45, 1))
    st.compact(45)
    left = sorted((tmp_path / "log").glob("*.seg"))
    assert len(left) < len(segs)
    first = int(left[0].name.split(".")[0])
    assert first <= 46
    st.close()
    st, got, _, sn = reopen(tmp_path, segment_bytes=400)
    assert sn is not None and sn.index == 45
    assert got == ents(46, 60)
    st.save(None, ents(61, 62), None)
    st.close()


def test_truncate_conflicting_suffix_across_segments(tmp_path: Path) -> None:
    st, _, _, _ = reopen(tmp_path, segment_bytes=300)
    st.save(None, ents(1, 40, term=1), None)
    st.save(HardState(2, "", 0), ents(12, 15, term=2), None)
    st.close()
    st, got, _, _ = reopen(tmp_path, segment_bytes=300)
    assert got == ents(1, 11, term=1) + ents(12, 15, term=2)
    st.save(None, ents(16, 18, term=2), None)
    st.close()
    _, got, _, _ = reopen(tmp_path)
    assert got[-1] == ents(18, 18, term=2)[0] and len(got) == 18


def test_install_snapshot_replaces_the_log(tmp_path: Path) -> None:
    st, _, _, _ = reopen(tmp_path)
    st.save(None, ents(1, 10), None)
    st.save(HardState(3, "", 0), ents(51, 52, term=3), snap(50, 3, b"state"))
    st.close()
    st, got, _, sn = reopen(tmp_path)
    assert sn == snap(50, 3, b"state") and got == ents(51, 52, term=3)
    st.close()


def test_snapshots_are_pruned_and_kept_whole(tmp_path: Path) -> None:
    st, _, _, _ = reopen(tmp_path)
    st.save(None, ents(1, 30), None)
    for i in (10, 20, 30):
        st.save_snapshot(snap(i, 1, bytes([i]) * 1000))
    assert len(list((tmp_path / "snapshots").glob("*.snap"))) == 2
    st.close()
    st, got, _, sn = reopen(tmp_path)
    assert sn is not None and sn.index == 30 and sn.data == bytes([30]) * 1000
    assert got == []  # the whole log is covered by the snapshot
    st.save(None, ents(31, 31), None)
    st.close()


def test_lock_refuses_a_second_user(tmp_path: Path) -> None:
    st = FileStorage(tmp_path)
    with pytest.raises(DataDirLocked, match="in use"):
        FileStorage(tmp_path)
    st.close()
    FileStorage(tmp_path).close()


def _build_log(path: Path) -> list[Entry]:
    st, _, _, _ = reopen(path, segment_bytes=250)
    written = ents(1, 20, size=20)
    for i in range(0, 20, 3):
        st.save(None, written[i:i + 3], None)
    st.close()
    return written


def test_cut_at_every_byte_of_the_last_segment_recovers_a_prefix(tmp_path: Path) -> None:
    base = tmp_path / "base"
    written = _build_log(base)
    segs = sorted((base / "log").glob("*.seg"))
    last = segs[-1]
    raw = last.read_bytes()
    for cut in range(len(raw) + 1):
        d = tmp_path / f"cut{cut}"
        (d / "log").mkdir(parents=True)
        for s in segs[:-1]:
            (d / "log" / s.name).write_bytes(s.read_bytes())
        if cut < 25:  # a segment header is written atomically (temp + rename): never torn
            continue
        (d / "log" / last.name).write_bytes(raw[:cut])
        st, got, _, _ = reopen(d)
        assert got == written[:len(got)], f"cut at {cut}: not a prefix"
        assert len(got) >= int(last.name.split(".")[0]) - 1
        # and the recovered log accepts appends right after the prefix
        st.save(None, ents(len(got) + 1, len(got) + 1, term=2), None)
        st.close()
        _, again, _, _ = reopen(d)
        assert again == got + ents(len(got) + 1, len(got) + 1, term=2)


def test_zero_filled_tail_is_a_torn_write(tmp_path: Path) -> None:
    written = _build_log(tmp_path)
    last = sorted((tmp_path / "log").glob("*.seg"))[-1]
    with open(last, "ab") as f:
        f.write(bytes(100))
    _, got, _, _ = reopen(tmp_path)
    assert got == written


def test_damage_in_a_sealed_segment_is_reported(tmp_path: Path) -> None:
    _build_log(tmp_path)
    first = sorted((tmp_path / "log").glob("*.seg"))[0]
    raw = bytearray(first.read_bytes())
    raw[40] ^= 0x01
    first.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=first.name):
        reopen(tmp_path)


def test_truncated_sealed_segment_is_reported(tmp_path: Path) -> None:
    _build_log(tmp_path)
    first = sorted((tmp_path / "log").glob("*.seg"))[0]
    first.write_bytes(first.read_bytes()[:-5])
    with pytest.raises(CorruptionError):
        reopen(tmp_path)


def test_missing_middle_segment_is_reported(tmp_path: Path) -> None:
    _build_log(tmp_path)
    segs = sorted((tmp_path / "log").glob("*.seg"))
    segs[1].unlink()
    with pytest.raises(CorruptionError, match="missing"):
        reopen(tmp_path)


def test_random_byte_flips_never_yield_wrong_entries(tmp_path: Path) -> None:
    base = tmp_path / "base"
    written = _build_log(base)
    segs = sorted((base / "log").glob("*.seg"))
    rng = random.Random(7)
    outcomes = {"error": 0, "prefix": 0}
    for trial in range(150):
        d = tmp_path / f"t{trial}"
        (d / "log").mkdir(parents=True)
        victim = rng.randrange(len(segs))
        for i, s in enumerate(segs):
            raw = bytearray(s.read_bytes())
            if i == victim:
                pos = rng.randrange(len(raw))
                raw[pos] ^= 1 << rng.randrange(8)
            (d / "log" / s.name).write_bytes(bytes(raw))
        try:
            st, got, _, _ = reopen(d)
        except CorruptionError:
            outcomes["error"] += 1
            continue
        # Accepted only as a torn tail: a strict prefix of what was written, never altered data.
        assert got == written[:len(got)]
        assert victim == len(segs) - 1 and len(got) < len(written)
        outcomes["prefix"] += 1
        st.close()
    assert outcomes["error"] > 100


def test_flip_in_the_middle_of_the_last_segment_is_reported(tmp_path: Path) -> None:
    _build_log(tmp_path)
    last = sorted((tmp_path / "log").glob("*.seg"))[-1]
    raw = bytearray(last.read_bytes())
    assert len(raw) > 80
    raw[30] ^= 0xFF  # inside the first record's payload, with more records after it
    last.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="not a torn write|checksum"):
        reopen(tmp_path)


def test_damaged_hard_state_and_snapshot_are_reported_and_temp_files_ignored(tmp_path: Path) -> None:
    st, _, _, _ = reopen(tmp_path)
    st.save(HardState(5, "b", 0), ents(1, 5), None)
    st.save_snapshot(snap(5, 1, b"x" * 100))
    st.close()
    (tmp_path / "state.bin.tmp").write_bytes(b"half-written")
    (tmp_path / "snapshots" / "00000000000000000009-00000000000000000001.snap.tmp").write_bytes(b"junk")
    st, _, hs, sn = reopen(tmp_path)
    assert hs == HardState(5, "b", 0) and sn is not None and sn.index == 5
    st.close()
    assert not list(tmp_path.rglob("*.tmp"))
    state = tmp_path / "state.bin"
    good = state.read_bytes()
    state.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CorruptionError, match="hard state"):
        reopen(tmp_path)
    state.write_bytes(good)
    (snapf,) = (tmp_path / "snapshots").glob("*.snap")
    raw = bytearray(snapf.read_bytes())
    raw[-3] ^= 1
    snapf.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="snapshot"):
        reopen(tmp_path)


def test_crash_between_snapshot_install_and_log_reset(tmp_path: Path) -> None:
    """The snapshot landed but the old (divergent) log was not yet removed: recovery drops the old log."""
    st, _, _, _ = reopen(tmp_path)
    st.save(None, ents(1, 60, term=1), None)
    st.save_snapshot(snap(50, 3))  # as if _install_snapshot crashed right after writing the snapshot
    st.close()
    st, got, _, sn = reopen(tmp_path)
    assert sn is not None and sn.index == 50 and got == []
    st.save(None, ents(51, 51, term=3), None)
    st.close()
    _, got, _, _ = reopen(tmp_path)
    assert got == ents(51, 51, term=3)


def test_snapshot_consistent_with_the_log_keeps_later_entries(tmp_path: Path) -> None:
    st, _, _, _ = reopen(tmp_path)
    st.save(None, ents(1, 60, term=1), None)
    st.save_snapshot(snap(50, 1))
    st.close()
    _, got, _, _ = reopen(tmp_path)
    assert got == ents(51, 60, term=1)


def test_memory_storage_semantics() -> None:
    m = MemoryStorage()
    m.save(HardState(1, "", 0), ents(1, 10), None)
    m.save(None, ents(5, 6, term=2), None)
    assert m.load().entries == ents(1, 4) + ents(5, 6, term=2)
    m.save_snapshot(snap(4, 1))
    m.compact(4)
    assert m.load().entries == ents(5, 6, term=2)
    m.save(None, ents(8, 8, term=3), snap(7, 3))
    st = m.load()
    assert st.snapshot is not None and st.snapshot.index == 7 and st.entries == ents(8, 8, term=3)
