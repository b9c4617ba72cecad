"""Consul's config keys: honoured, accepted with one warning, or refused with one line — never unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import AgentProcess, ok, one_line_error, run, wait_for

from proconsul.agent.config.keys import merge_file_data
from proconsul.agent.config.load import finalize, load_config
from proconsul.agent.config.model import AgentConfig, ConfigError

# A config file as Consul users write them (keys from Consul's documentation), none of them exotic.
CONSUL_STYLE = {
    "datacenter": "dc1", "addresses": {"http": "127.0.0.1", "dns": "127.0.0.1"}, "advertise_addr_wan": "127.0.0.1",
    "log_json": False, "disable_update_check": True, "performance": {"raft_multiplier": 1, "leave_drain_time": "5s"},
    "limits": {"http_max_conns_per_client": 200, "rpc_rate": 100}, "autopilot": {"cleanup_dead_servers": True},
    "reconnect_timeout": "72h", "rejoin_after_leave": True, "raft_protocol": 3, "server_name": "server.dc1.mesh",
    "telemetry": {"prometheus_retention_time": "60s", "statsd_address": "127.0.0.1:8125"},
    "translate_wan_addrs": False, "ports": {"grpc": -1, "grpc_tls": -1, "https": -1},
    "enable_central_service_config": True, "primary_datacenter": "dc1", "session_ttl_min": "5s",
    "check_output_max_size": 8192, "dns_config": {"use_cache": True, "node_ttl": "10s"},
    "gossip_lan": {"probe_interval": "1s"}, "acl": {"enabled": False},
}


def load(data: dict, hcl: list[str] | None = None) -> AgentConfig:
    cfg = AgentConfig(dev=True)
    merge_file_data(cfg, data, "test.json")
    for text in hcl or []:
        from proconsul.agent.config.files import parse_text

        merge_file_data(cfg, parse_text(text, "hcl", "-hcl"), "-hcl")
    return finalize(cfg)


def test_a_consul_style_config_loads_with_warnings_for_what_has_no_effect() -> None:
    cfg = load(CONSUL_STYLE)
    assert (cfg.http_bind, cfg.advertise_addr_wan, cfg.reconnect_timeout, cfg.session_ttl_min) == \
        ("127.0.0.1", "127.0.0.1", 72 * 3600.0, 5.0)
    assert cfg.check_output_max_size == 8192 and cfg.rejoin_after_leave and cfg.autopilot["cleanup_dead_servers"]
    warned = " | ".join(cfg.warnings)
    for key in ("limits.rpc_rate", "performance.leave_drain_time", "server_name", "telemetry.statsd_address",
                "dns_config.use_cache"):
        assert f"{key} has no effect in Proconsul" in warned, key
    assert "disable_update_check" not in warned  # already true here: nothing to say
    assert "prometheus_retention_time" not in warned  # honoured


@pytest.mark.parametrize(("data", "says"), [
    ({"ports": {"https": 8501}}, "ports.https = 8501 cannot be honoured without a certificate"),
    ({"ports": {"grpc_tls": 8503}}, "ports.grpc_tls = 8503 cannot be honoured"),
    ({"encrypt": "not-base64!"}, "encrypt: not valid base64"),
    ({"encrypt": "c2hvcnQ="}, "encrypt: decodes to 5 bytes; a gossip key must be 16, 24 or 32 bytes"),
    ({"encrypt_verify_incoming": "maybe"}, "encrypt_verify_incoming"),
    ({"acl": {"enabled": True, "default_policy": "maybe"}}, "acl.default_policy must be one of allow, deny"),
    ({"acl": {"tokens": {"master_key": "x"}}}, "unknown key acl.tokens.master_key"),
    ({"auto_encrypt": {"tls": True, "verify": True}}, "unknown key auto_encrypt.verify"),
    ({"tls": {"rpc": {"cert_file": "c.pem"}}}, "unknown key tls.rpc"),
    ({"serf_wan_allowed_cidrs": ["10.0.0.0/88"]}, "serf_wan_allowed_cidrs: '10.0.0.0/88' is not a CIDR"),
    ({"primary_datacenter": "dc9", "ports": {"serf_wan": -1}}, "primary_datacenter 'dc9' cannot be honoured"),
    ({"raft_protocol": 2}, "raft_protocol 2 is not supported"),
    ({"reconnect_timeout": "1h"}, "reconnect_timeout must be at least 8h"),
    ({"watches": [{"type": "key", "key": "x", "handler": "true"}]}, "watches cannot be honoured"),
    ({"no_such_key": 1}, "unknown config key 'no_such_key'"),
    ({"ports": {"htttp": 1}}, "unknown key ports.htttp"),
    ({"autopilot": {"last_contact_threshold": "soon"}}, "LastContactThreshold must be a duration"),
    ({"autopilot": {"min_quorum": -1}}, "MinQuorum must be a whole number"),
    ({"autopilot": {"cleanup_dead_server": False}}, "unknown autopilot field(s): CleanupDeadServer"),
    ({"sync_coordinate_interval_min": "0s"}, "sync_coordinate_interval_min must be positive"),
    ({"sync_coordinate_rate_target": "fast"}, "sync_coordinate_rate_target must be a number"),
    ({"consul": {"coordinate": {"update_period": "soon"}}}, "consul.coordinate.update_period"),
    ({"consul": {"coordinate": {"batch_size": 1}}}, "unknown key consul.coordinate.batch_size"),
])
def test_what_cannot_be_honoured_stops_with_one_line(data: dict, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(data)
    assert says in str(e.value)


def test_inline_hcl_comes_after_files_and_blocks_unwrap() -> None:
    cfg = load({"node_meta": {"a": "1"}}, hcl=['node_meta { b = "2" }',
                                                'ports { sidecar_min_port = 30000 sidecar_max_port = 30010 }',
                                                'performance { raft_multiplier = 3 }'])
    assert cfg.node_meta == {"a": "1", "b": "2"}
    assert (cfg.sidecar_min_port, cfg.sidecar_max_port, cfg.raft_multiplier) == (30000, 30010, 3)


def test_config_format_forces_the_parser(tmp_path: Path) -> None:
    (tmp_path / "agent.conf").write_text('node_name = "from-hcl"\n')
    cfg = load_config([str(tmp_path / "agent.conf")], [], AgentConfig(dev=True), fmt="hcl")
    assert cfg.node_name == "from-hcl"
    with pytest.raises(ConfigError, match="-config-format json\\|hcl"):
        load_config([str(tmp_path / "agent.conf")], [], AgentConfig(dev=True))


# ---------------------------------------------------------------------- the CLI, as Consul users type it
def test_single_dash_flags_work_everywhere(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a", args=["-log-level=warn"])
    agent.start()
    try:
        assert ok(None, "kv", "put", f"-http-addr={agent.addr}", "app/one", "1").strip()
        ok(None, "kv", "put", "-http-addr", agent.addr, "app/two", "2")
        out = ok(None, "kv", "get", "-recurse", f"-http-addr={agent.addr}", "app/")
        assert "app/one:1" in out and "app/two:2" in out
        assert "Error" not in run(agent, "members", "-format=json").stderr
    finally:
        agent.stop()


def test_dev_agent_with_inline_hcl_as_consul_users_start_it(tmp_path: Path) -> None:
    line = one_line_error(run(None, "agent", "-dev", "-hcl", 'acl { enabled = true default_policy = "nope" }'))
    assert "acl.default_policy must be one of allow, deny" in line
    line = one_line_error(run(None, "agent", "-dev", "-hcl", "ports { https = 8501 }"))
    assert "ports.https = 8501 cannot be honoured without a certificate" in line


def test_honoured_keys_take_effect(tmp_path: Path) -> None:
    pid, log_file = tmp_path / "agent.pid", tmp_path / "logs" / "agent.log"
    conf = tmp_path / "extra.json"
    conf.write_text(json.dumps({"pid_file": str(pid), "log_file": str(log_file), "log_json": True,
                                "limits": {"http_max_conns_per_client": 10, "rpc_max_burst": 5},
                                "config_entries": {"bootstrap": [
                                    {"kind": "proxy-defaults", "name": "global", "config": {"protocol": "http"}}]},
                                "tagged_addresses": {"lan_custom": "10.1.2.3"}}))
    agent = AgentProcess(tmp_path / "a", args=["-config-file", str(conf)])
    agent.start()
    try:
        assert int(pid.read_text()) == agent.proc.pid
        entry = wait_for(lambda: agent.get("/v1/config/proxy-defaults/global")[1], message="bootstrap entry")
        assert entry["Config"] == {"protocol": "http"}
        node = agent.get("/v1/catalog/node/dev")[1]["Node"]
        assert node["TaggedAddresses"]["lan_custom"] == "10.1.2.3"
        lines = [json.loads(ln) for ln in log_file.read_text().splitlines() if ln.strip()]
        assert all({"@level", "@message", "@module", "@timestamp"} <= set(ln) for ln in lines)
        assert any("limits.rpc_max_burst has no effect" in ln["@message"] for ln in lines)
    finally:
        agent.stop()
    assert not pid.exists()


def test_coordinate_keys_are_honoured_and_the_rest_of_consuls_internal_block_warns() -> None:
    cfg = load({"sync_coordinate_interval_min": "2s", "sync_coordinate_rate_target": 32, "disable_coordinates": True,
                "consul": {"coordinate": {"update_period": "1s", "update_batch_size": 10, "update_max_batches": 2},
                           "raft": {"election_timeout": "5s"}}})
    assert (cfg.sync_coordinate_interval_min, cfg.sync_coordinate_rate_target, cfg.disable_coordinates) == (2.0, 32.0, True)
    assert (cfg.coordinate_update_period, cfg.coordinate_update_batch_size, cfg.coordinate_update_max_batches) == \
        (1.0, 10, 2)
    warned = " | ".join(cfg.warnings)
    assert "consul.raft has no effect in Proconsul" in warned and "coordinate" not in warned
