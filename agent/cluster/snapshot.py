"""Operator snapshots: a consistent, checksummed copy of the state store in one file.

Format: the magic line `PROCONSUL-SNAPSHOT 1\\n`, a 4-byte big-endian length, a msgpack header
(Version, Index, Datacenter, Created, Size, SHA256 of the state), then the state bytes exactly as
`StateStore.snapshot()` produced them. `read` verifies the checksum before anything trusts the state.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass
from typing import Any

import msgpack

MAGIC = b"PROCONSUL-SNAPSHOT 1\n"
MAX_HEADER = 1 << 16


class SnapshotError(ValueError):
    """A snapshot file is truncated, corrupt, or not a snapshot; the message says which."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    header: dict[str, Any]
    state: bytes


def write(state: bytes, index: int, datacenter: str, now: float | None = None) -> bytes:
    header = {"Version": 1, "Index": index, "Datacenter": datacenter,
              "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "Size": len(state),
              "SHA256": hashlib.sha256(state).hexdigest()}
    packed = msgpack.packb(header, use_bin_type=True)
    return MAGIC + struct.pack(">I", len(packed)) + packed + state


def read(data: bytes) -> Snapshot:
    if not data.startswith(MAGIC):
        raise SnapshotError("not a Proconsul snapshot (bad magic line)")
    pos = len(MAGIC)
    if len(data) < pos + 4:
        raise SnapshotError("snapshot is truncated (no header)")
    (hlen,) = struct.unpack(">I", data[pos:pos + 4])
    if hlen > MAX_HEADER or len(data) < pos + 4 + hlen:
        raise SnapshotError("snapshot is truncated or its header length is corrupt")
    try:
        header = msgpack.unpackb(data[pos + 4:pos + 4 + hlen], raw=False)
    except Exception:  # msgpack raises several types for garbage
        raise SnapshotError("snapshot header is corrupt") from None
    if not isinstance(header, dict) or header.get("Version") != 1:
        raise SnapshotError("snapshot header is not a version 1 header")
    state = data[pos + 4 + hlen:]
    if len(state) != header.get("Size"):
        raise SnapshotError(f"snapshot is truncated: {len(state)} of {header.get('Size')} state bytes")
    if hashlib.sha256(state).hexdigest() != header.get("SHA256"):
        raise SnapshotError("snapshot checksum mismatch: the file is corrupt")
    return Snapshot(header, state)


def inspect(snap: Snapshot) -> dict[str, Any]:
    """The header plus row counts per table (what `proconsul snapshot inspect` prints)."""
    state = msgpack.unpackb(snap.state, raw=False, strict_map_key=False)
    counts = {
        "Nodes": len(state["nodes"]),
        "Services": sum(len(v) for v in state["services"].values()),
        "Checks": sum(len(v) for v in state["checks"].values()),
        "KV": len(state["kv"]),
        "Tombstones": len(state["tombstones"]),
        "Sessions": len(state["sessions"]),
    }
    counts.update({t: len(rows) for t, rows in state["tables"].items()})
    return dict(snap.header, Counts=counts)
