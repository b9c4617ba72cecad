"""Operator snapshots: a consistent, checksummed copy of the state store in one file.

Two formats, both read (the checksum is verified before anything trusts the state):

- **Consul's archive** (what `/v1/snapshot` and `proconsul snapshot save` write): a gzipped tar holding
  `meta.json` (ID, Size, Index, Term, Version, and our Datacenter and Created), `state.bin` (the state
  exactly as `StateStore.snapshot()` produced it) and `SHA256SUMS` — the layout Consul's tools and
  snapshot agents expect (the state inside is Proconsul's, so Consul itself cannot restore it).
- **Proconsul's original file**: the magic line `PROCONSUL-SNAPSHOT 1\\n`, a 4-byte big-endian length,
  a msgpack header (Version, Index, Datacenter, Created, Size, SHA256), then the state bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

MAGIC = b"PROCONSUL-SNAPSHOT 1\n"
MAX_HEADER = 1 << 16
MAX_ARCHIVE = 4 << 30  # refuse to inflate more than this (a gzip bomb)


class SnapshotError(ValueError):
    """A snapshot file is truncated, corrupt, or not a snapshot; the message says which."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    header: dict[str, Any]
    state: bytes


def write_archive(state: bytes, index: int, datacenter: str, now: float | None = None) -> bytes:
    """Consul's snapshot archive (gzipped tar: meta.json, state.bin, SHA256SUMS)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    meta = json.dumps({"ID": f"0-{index}-{int((now if now is not None else time.time()) * 1000)}",
                       "Size": len(state), "Index": index, "Term": 0, "Version": 1,
                       "Datacenter": datacenter, "Created": created, "Proconsul": True}).encode()
    sums = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n"
                   for name, body in (("meta.json", meta), ("state.bin", state))).encode()
    buf = io.BytesIO()
    mtime = int(now if now is not None else time.time())
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=mtime) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, body in (("meta.json", meta), ("state.bin", state), ("SHA256SUMS", sums)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(body), mtime, 0o600
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _read_archive(data: bytes) -> Snapshot:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            raw = gz.read(MAX_ARCHIVE)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            files = {}
            for member in tar.getmembers():
                f = tar.extractfile(member)
                if f is not None and member.name in ("meta.json", "state.bin", "SHA256SUMS"):
                    files[member.name] = f.read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise SnapshotError(f"snapshot archive is truncated or corrupt: {e}") from None
    missing = {"meta.json", "state.bin", "SHA256SUMS"} - set(files)
    if missing:
        raise SnapshotError(f"snapshot archive lacks {', '.join(sorted(missing))}")
    sums = {}
    for line in files["SHA256SUMS"].decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip()] = digest.strip()
    for name in ("meta.json", "state.bin"):
        if sums.get(name) != hashlib.sha256(files[name]).hexdigest():
            raise SnapshotError(f"snapshot checksum mismatch for {name}: the file is corrupt")
    try:
        meta = json.loads(files["meta.json"])
    except ValueError:
        raise SnapshotError("snapshot meta.json is not JSON") from None
    if not meta.get("Proconsul"):
        raise SnapshotError("this is a Consul snapshot: its state.bin is Consul's and cannot be restored here")
    state = files["state.bin"]
    header = {"Version": meta.get("Version", 1), "Index": meta.get("Index", 0), "Datacenter": meta.get("Datacenter"),
              "Created": meta.get("Created"), "Size": len(state), "SHA256": hashlib.sha256(state).hexdigest(),
              "Format": "consul-archive"}
    return Snapshot(header, state)


def write(state: bytes, index: int, datacenter: str, now: float | None = None) -> bytes:
    header = {"Version": 1, "Index": index, "Datacenter": datacenter,
              "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "Size": len(state),
              "SHA256": hashlib.sha256(state).hexdigest()}
    packed = msgpack.packb(header, use_bin_type=True)
    return MAGIC + struct.pack(">I", len(packed)) + packed + state


def read(data: bytes) -> Snapshot:
    """Either format, verified."""
    if data[:2] == b"\x1f\x8b":  # gzip: Consul's archive
        return _read_archive(data)
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
