"""The real `proconsul` CLI against real dev agents: output for people and scripts, errors as one line."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
from support import AgentProcess, ok, one_line_error, run, wait_for


def test_version_and_help() -> None:
    assert "Proconsul v" in ok(None, "version")
    out = ok(None, "--help")
    for cmd in ("agent", "members", "kv", "catalog", "services", "snapshot", "reload"):
        assert cmd in out
    assert "--cas" in ok(None, "kv", "put", "--help")


def test_kv_round_trip(shared_dev_agent: AgentProcess, tmp_path: Path) -> None:
    a = shared_dev_agent
    assert "Success! Data written to: cli/one" in ok(a, "kv", "put", "cli/one", "1")
    (tmp_path / "v.txt").write_text("from a file")
    ok(a, "kv", "put", "cli/two", f"@{tmp_path / 'v.txt'}")
    ok(a, "kv", "put", "cli/three", "-", stdin="from stdin")
    assert ok(a, "kv", "get", "cli/two") == "from a file\n"
    assert ok(a, "kv", "get", "--recurse", "cli/").splitlines() == [
        "cli/one:1", "cli/three:from stdin", "cli/two:from a file"]
    assert json.loads(ok(a, "kv", "get", "--keys", "cli/", "--format", "json")) == ["cli/one", "cli/three", "cli/two"]
    detailed = ok(a, "kv", "get", "--detailed", "cli/one")
    index = int(next(line.split()[1] for line in detailed.splitlines() if line.startswith("ModifyIndex")))
    # CAS: the wrong index fails with exit 1, the right one writes.
    assert "CAS failed" in one_line_error(run(a, "kv", "put", "--cas", "--modify-index", str(index + 100), "cli/one", "x"))
    ok(a, "kv", "put", "--cas", "--modify-index", str(index), "cli/one", "2")
    assert ok(a, "kv", "get", "cli/one") == "2\n"
    exported = ok(a, "kv", "export", "cli/")
    assert [e["key"] for e in json.loads(exported)] == ["cli/one", "cli/three", "cli/two"]
    assert "Deleted keys with prefix" in ok(a, "kv", "delete", "--recurse", "cli/")
    assert "No key exists at: cli/one" in one_line_error(run(a, "kv", "get", "cli/one"))
    out = ok(a, "kv", "import", "--prefix", "restored/", "-", stdin=exported)
    assert out.count("Imported:") == 3
    assert ok(a, "kv", "get", "restored/cli/three") == "from stdin\n"


def test_services_register_hcl_and_json(shared_dev_agent: AgentProcess, tmp_path: Path) -> None:
    a = shared_dev_agent
    (tmp_path / "api.hcl").write_text('service {\n  name = "cli-api"\n  port = 9090\n  tags = ["v2"]\n'
                                      '  check {\n    ttl = "30s"\n  }\n}\n')
    (tmp_path / "db.json").write_text(json.dumps({"services": [{"name": "cli-db", "port": 5432}]}))
    assert "Registered service: cli-api" in ok(a, "services", "register", str(tmp_path / "api.hcl"))
    assert "Registered service: cli-db" in ok(a, "services", "register", str(tmp_path / "db.json"))
    services = json.loads(ok(a, "catalog", "services", "--format", "json"))
    assert services["cli-api"] == ["v2"] and "cli-db" in services
    checks = a.get("/v1/agent/checks")[1]
    assert checks["service:cli-api"]["Type"] == "ttl"
    ok(a, "services", "deregister", "cli-db")
    assert "cli-db" not in json.loads(ok(a, "catalog", "services", "--format", "json"))
    (tmp_path / "bad.json").write_text(json.dumps({"service": {"port": 1}}))
    assert "Name is missing" in one_line_error(run(a, "services", "register", str(tmp_path / "bad.json")))


def test_catalog_and_members_tables(shared_dev_agent: AgentProcess) -> None:
    a = shared_dev_agent
    nodes = json.loads(ok(a, "catalog", "nodes", "--format", "json"))
    assert [n["Node"] for n in nodes] == ["dev"]
    table = ok(a, "catalog", "nodes")
    assert "Node" in table and "dev" in table
    assert "alive" in ok(a, "members")
    assert json.loads(ok(a, "members", "--format", "json"))[0]["Status"] == 1
    assert ok(a, "catalog", "datacenters").strip() == "dc1"


def test_errors_are_one_line(shared_dev_agent: AgentProcess, tmp_path: Path) -> None:
    refused = run(None, "kv", "get", "x", env={"PROCONSUL_HTTP_ADDR": "127.0.0.1:1"})
    assert "connection refused" in one_line_error(refused)
    assert "--format" in one_line_error(run(shared_dev_agent, "catalog", "nodes", "--format", "yaml"))
    assert "cannot read" in one_line_error(run(shared_dev_agent, "services", "register", str(tmp_path / "nope.json")))
    assert "Unknown service ID" in one_line_error(run(shared_dev_agent, "services", "deregister", "nope"))
    # What the parser refuses is one line and status 1 too, as Consul's CLI (not a boxed usage text, 2).
    assert "No such option: --bogus" in one_line_error(run(None, "kv", "get", "x", "-bogus"))
    assert "Missing argument" in one_line_error(run(None, "intention", "check", "web"))
    assert "does not take a value" in one_line_error(run(None, "kv", "get", "-recurse=yes"))
    assert "No such command" in one_line_error(run(None, "kv", "gett"))
    assert run(None, "kv", "get", "--help").returncode == 0
    # CONSUL_HTTP_ADDR is honoured too.
    assert ok(None, "catalog", "datacenters", env={"CONSUL_HTTP_ADDR": shared_dev_agent.addr}).strip() == "dc1"


def test_agent_flags_it_cannot_honour_fail_clearly(tmp_path: Path) -> None:
    res = run(None, "agent", "--bootstrap-expect", "3", "--data-dir", str(tmp_path))
    assert "--bootstrap-expect only applies to servers" in one_line_error(res)
    assert "--dev agents run alone" in one_line_error(run(None, "agent", "--dev", "--retry-join", "127.0.0.1"))
    assert "data_dir is required" in one_line_error(run(None, "agent", "--server"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:  # a port in use: one line, no traceback
        taken.bind(("127.0.0.1", 0))
        msg = one_line_error(run(None, "agent", "--dev", "--http-port", "0", "--server-port", "0",
                                 "--serf-lan-port", "0", "--dns-port", str(taken.getsockname()[1])))
        assert "cannot listen for DNS" in msg and "already in use" in msg
    (tmp_path / "bad.json").write_text('{"no_such_key": 1}')
    assert "unknown config key 'no_such_key'" in one_line_error(
        run(None, "agent", "--dev", "--config-file", str(tmp_path / "bad.json")))


def test_snapshot_save_inspect_restore(shared_dev_agent: AgentProcess, tmp_path: Path) -> None:
    a = shared_dev_agent
    ok(a, "kv", "put", "snapcli/k", "v1")
    path = tmp_path / "s.snap"
    assert "Saved and verified snapshot" in ok(a, "snapshot", "save", str(path))
    info = json.loads(ok(None, "snapshot", "inspect", str(path), "--format", "json"))
    assert info["Counts"]["KV"] >= 1 and info["Datacenter"] == "dc1"
    ok(a, "kv", "put", "snapcli/k", "v2")
    assert "Restored snapshot" in ok(a, "snapshot", "restore", str(path))
    assert ok(a, "kv", "get", "snapcli/k") == "v1\n"
    path.write_bytes(path.read_bytes()[:-5])
    assert "truncated" in one_line_error(run(None, "snapshot", "inspect", str(path)))


@pytest.mark.parametrize("how", ["cli", "sighup"])
def test_reload_picks_up_config_dir_changes(tmp_path: Path, how: str) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.json").write_text(json.dumps({"service": {"name": "from-config-a", "port": 1}}))
    agent = AgentProcess(tmp_path, dev=True, args=["--config-dir", str(conf)])
    agent.start()
    try:
        def services() -> set[str]:
            return set(agent.get("/v1/agent/services")[1])

        assert "from-config-a" in wait_for(services, message="config service registered")
        (conf / "b.hcl").write_text('service {\n  name = "from-config-b"\n  port = 2\n}\n')
        (conf / "a.json").unlink()
        if how == "cli":
            assert "reload triggered" in ok(agent, "reload")
        else:
            assert agent.proc is not None
            os.kill(agent.proc.pid, signal.SIGHUP)
        wait_for(lambda: services() == {"from-config-b"}, message="reload to swap a for b")
    finally:
        agent.stop()


def test_a_malformed_gossip_key_stops_the_agent_with_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "enc.hcl").write_text('encrypt = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7C"\n')
    line = one_line_error(run(None, "agent", "--dev", "--config-file", str(tmp_path / "enc.hcl")))
    assert "encrypt: decodes to 30 bytes; a gossip key must be 16, 24 or 32 bytes" in line


def test_retry_max_gives_up_with_one_line_and_status_1(tmp_path: Path) -> None:
    """Consul's -retry-max: a client whose retry-join never answers exits after that many rounds."""
    from support import free_port

    nobody = free_port()  # nothing listens there
    res = run(None, "agent", "--node", "lonely", "--data-dir", str(tmp_path / "d"), "--http-port", "0",
              "--dns-port", "-1", "--serf-lan-port", "0", "--retry-join", f"127.0.0.1:{nobody}",
              "--retry-interval", "100ms", "--retry-max", "2")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]  # after the agent's own log lines, the error it exits with
    assert line.startswith("Error: ") and "could not join the LAN pool after 2 attempts (retry_max = 2)" in line and str(nobody) in line
