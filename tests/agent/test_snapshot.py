"""Operator snapshots: the file format refuses damage, and save → change → restore round-trips
through a real agent without indexes going backwards."""

from __future__ import annotations

import random
import urllib.request

import pytest

from proconsul.agent.cluster import snapshot
from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore


def _store() -> StateStore:
    s = StateStore()
    s.apply(1, c.Register(node={"Node": "n1", "Address": "10.0.0.1"}, service={"Service": "web", "Port": 80}))
    s.apply(2, c.KVOp(verb="set", key="a/b", value=b"1"))
    return s


def test_round_trip_keeps_state_and_header() -> None:
    s = _store()
    data = snapshot.write(s.snapshot(), s.last_index, "dc1", now=0)
    snap = snapshot.read(data)
    assert snap.header["Index"] == 2 and snap.header["Datacenter"] == "dc1"
    info = snapshot.inspect(snap)
    assert info["Counts"]["Nodes"] == 1 and info["Counts"]["Services"] == 1 and info["Counts"]["KV"] == 1


def test_every_truncation_and_flip_is_refused() -> None:
    data = snapshot.write(_store().snapshot(), 2, "dc1", now=0)
    for cut in range(len(data)):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.read(data[:cut])
    rng = random.Random(7)
    for _ in range(300):
        i = rng.randrange(len(data))
        damaged = bytearray(data)
        damaged[i] ^= 1 << rng.randrange(8)
        try:
            snap = snapshot.read(bytes(damaged))
        except snapshot.SnapshotError:
            continue
        # A flip that still reads can only be in header bytes that carry no meaning for the state.
        assert snap.state == snapshot.read(data).state


def test_restore_command_replaces_state_and_raises_indexes() -> None:
    s = _store()
    saved = s.snapshot()
    s.apply(3, c.KVOp(verb="set", key="a/c", value=b"2"))
    before = s.kv_list("a/")[0]
    s.apply(4, c.Restore(state=saved))
    idx, rows = s.kv_list("a/")
    assert [r["Key"] for r in rows] == ["a/b"]
    assert idx > before, "a restore must never move a blocking query's index backwards"
    assert s.last_index == 4


def _http(agent, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(agent.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_save_and_restore_through_the_api(dev_agent) -> None:
    assert dev_agent.put("/v1/kv/snap/one", raw=b"1")[0] == 200
    status, saved = _http(dev_agent, "GET", "/v1/snapshot")
    assert status == 200 and saved[:2] == b"\x1f\x8b"  # Consul's archive: a gzipped tar
    dev_agent.put("/v1/kv/snap/two", raw=b"2")
    assert _http(dev_agent, "PUT", "/v1/snapshot", saved)[0] == 200
    status, keys = dev_agent.get("/v1/kv/snap/?keys")
    assert keys == ["snap/one"]
    status, body = _http(dev_agent, "PUT", "/v1/snapshot", saved[:-10])
    assert status == 400 and b"truncated" in body
    status, body = _http(dev_agent, "PUT", "/v1/snapshot", b"not a snapshot")
    assert status == 400 and b"not a Proconsul snapshot" in body
    assert "Traceback" not in dev_agent.log()


def test_consul_archive_round_trips_and_real_tar_reads_it(tmp_path) -> None:  # noqa: ANN001
    import shutil
    import subprocess

    s = _store()
    data = snapshot.write_archive(s.snapshot(), s.last_index, "dc1", now=0)
    snap = snapshot.read(data)
    assert snap.state == s.snapshot() and snap.header["Index"] == s.last_index
    assert snap.header["Format"] == "consul-archive"
    if shutil.which("tar"):
        (tmp_path / "snap.tgz").write_bytes(data)
        listing = subprocess.run(["tar", "tzf", str(tmp_path / "snap.tgz")], capture_output=True, text=True)
        assert listing.stdout.split() == ["meta.json", "state.bin", "SHA256SUMS"]
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(snapshot.SnapshotError):
        snapshot.read(bytes(damaged))
    with pytest.raises(snapshot.SnapshotError, match="truncated|corrupt"):
        snapshot.read(data[: len(data) // 2])
