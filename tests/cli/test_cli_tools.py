"""The Consul CLI commands people script with: config entries, lock, maint, validate, keygen, debug, snapshot
archives — run as a user runs them, against a real agent."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

import pytest
from support import AgentProcess, ok, one_line_error, run


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> AgentProcess:
    a = AgentProcess(tmp_path_factory.mktemp("tools"), args=["-hcl", "enable_debug = true"])
    a.start()
    yield a
    a.stop()


def test_config_write_read_list_delete(agent: AgentProcess, tmp_path: Path) -> None:
    f = tmp_path / "defaults.hcl"
    f.write_text('kind = "service-defaults"\nname = "web"\nprotocol = "http"\n')
    assert "Config entry written: service-defaults/web" in ok(agent, "config", "write", str(f))
    entry = json.loads(ok(agent, "config", "read", "-kind", "service-defaults", "-name", "web"))
    assert entry["Protocol"] == "http" and entry["Kind"] == "service-defaults"
    assert "web" in ok(agent, "config", "list", "-kind", "service-defaults")
    stale = run(agent, "config", "write", "-cas", "-modify-index", "1", str(f))
    assert stale.returncode == 1 and "not updated" in stale.stderr
    ok(agent, "config", "delete", "-kind", "service-defaults", "-name", "web")
    assert "No service-defaults entries" in ok(agent, "config", "list", "-kind", "service-defaults")


def test_lock_runs_the_command_holding_the_lock(agent: AgentProcess, tmp_path: Path) -> None:
    out = tmp_path / "held"
    res = run(agent, "lock", "jobs/nightly", "sh", "-c", f"curl -s {agent.url}/v1/kv/jobs/nightly/.lock > {out}")
    assert res.returncode == 0, res.stderr
    held = json.loads(out.read_text())[0]
    assert held["Session"]  # the lock was held while the command ran
    assert not agent.get("/v1/kv/jobs/nightly/.lock")[1][0].get("Session")  # and released after
    failed = run(agent, "lock", "-child-exit-code", "jobs/nightly", "sh -c 'exit 3'")
    assert failed.returncode == 3
    assert run(agent, "lock", "-n", "2", "jobs/pool", "true").returncode == 0


def test_maint_validate_keygen(agent: AgentProcess, tmp_path: Path) -> None:
    assert "Nothing is in maintenance mode" in ok(agent, "maint")
    assert "Node maintenance is now enabled" in ok(agent, "maint", "-enable", "-reason", "kernel upgrade")
    assert "kernel upgrade" in ok(agent, "maint")
    ok(agent, "maint", "-disable")
    assert "Nothing is in maintenance mode" in ok(agent, "maint")
    good = tmp_path / "good.hcl"
    good.write_text('datacenter = "dc1"\nlimits { rpc_rate = 10 }\n')
    out = ok(None, "validate", str(good))
    assert "Configuration is valid!" in out and "limits.rpc_rate has no effect" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"ports": {"https": 8501}}')
    assert "cannot be honoured without a certificate" in one_line_error(run(None, "validate", str(bad)))
    assert len(base64.b64decode(ok(None, "keygen").strip())) == 32


def test_debug_bundle(agent: AgentProcess, tmp_path: Path) -> None:
    res = run(agent, "debug", "-duration", "2s", "-interval", "1s", "-output", str(tmp_path / "bundle"))
    assert res.returncode == 0, res.stderr
    with tarfile.open(tmp_path / "bundle.tar.gz") as tar:
        names = {n.rsplit("/", 1)[-1] for n in tar.getnames()}
        assert {"agent.json", "members.json", "host.json", "metrics.json", "proconsul.log", "profile.txt"} <= names
        profile = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("profile.txt"))).read()
        assert b"run_forever" in profile or b"(" in profile  # collapsed stacks of the agent's loop


def test_snapshot_is_consuls_archive_and_old_files_still_restore(agent: AgentProcess, tmp_path: Path) -> None:
    ok(agent, "kv", "put", "snap/a", "1")
    ok(agent, "snapshot", "save", str(tmp_path / "s.snap"))
    with tarfile.open(tmp_path / "s.snap") as tar:
        assert sorted(tar.getnames()) == ["SHA256SUMS", "meta.json", "state.bin"]
    info = json.loads(ok(agent, "snapshot", "inspect", str(tmp_path / "s.snap"), "-format", "json"))
    assert info["Counts"]["KV"] >= 1
    ok(agent, "kv", "delete", "snap/a")
    ok(agent, "snapshot", "restore", str(tmp_path / "s.snap"))
    assert ok(agent, "kv", "get", "snap/a").strip() == "1"


def test_watch_prints_or_runs_its_handler_on_each_change(agent: AgentProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    from support import CLI, wait_for

    ok(agent, "kv", "put", "watched/k", "v1")
    printed = json.loads(ok(agent, "watch", "-type", "key", "-key", "watched/k"))
    assert base64.b64decode(printed[0]["Value"]) == b"v1"
    out = tmp_path / "seen"
    proc = subprocess.Popen([*CLI, "watch", "-http-addr", agent.addr, "-type", "keyprefix", "-prefix", "watched/",
                             "sh", "-c", f"cat >> {out}; echo >> {out}"], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 1, 10, message="the first run")
        ok(agent, "kv", "put", "watched/k", "v2")
        wait_for(lambda: out.read_text().count("\n") >= 2, 10, message="a run after the change")
        values = [base64.b64decode(json.loads(ln)[0]["Value"]) for ln in out.read_text().splitlines() if ln]
        assert values[:2] == [b"v1", b"v2"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in proc.stderr.read().decode()
    assert sys.executable
