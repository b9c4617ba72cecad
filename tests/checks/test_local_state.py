"""Anti-entropy, persistence, reaping and the check_update_interval, with real agent processes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from support import AgentProcess, wait_for

from proconsul.agent.local.state import MIN_REAP_AFTER, LocalState


def catalog_services(agent: AgentProcess) -> set[str]:
    body = agent.get("/v1/catalog/node-services/dev")[1]
    return {s["ID"] for s in body["Services"]}


def test_anti_entropy_repairs_both_ways(tmp_path: Path) -> None:
    conf = tmp_path / "ae.json"
    conf.write_text(json.dumps({"ae_interval": "1s"}))
    agent = AgentProcess(tmp_path, dev=True, args=["--config-file", str(conf)])
    agent.start()
    try:
        agent.put("/v1/agent/service/register", {"Name": "owned", "Port": 1})
        wait_for(lambda: "owned" in catalog_services(agent), message="owned in the catalog")
        # Removed behind the agent's back: re-registered.
        agent.put("/v1/catalog/deregister", {"Node": "dev", "ServiceID": "owned"})
        assert "owned" not in catalog_services(agent)
        wait_for(lambda: "owned" in catalog_services(agent), 5, message="anti-entropy to re-register owned")
        # Added behind the agent's back for its node: removed.
        agent.put("/v1/catalog/register", {"Node": "dev", "Address": "127.0.0.1", "SkipNodeUpdate": True,
                                           "Service": {"Service": "stray", "Port": 2}})
        assert "stray" in catalog_services(agent)
        wait_for(lambda: "stray" not in catalog_services(agent), 5, message="anti-entropy to remove stray")
        assert "consul" in catalog_services(agent), "the server's own consul service is left alone"
    finally:
        agent.stop()


def test_services_and_checks_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["--server", "--bootstrap-expect", "1", "--data-dir", str(data), "--node", "dev"]
    agent = AgentProcess(tmp_path / "a", dev=False, args=args)
    agent.start()
    agent.put("/v1/agent/service/register", {"Name": "keep", "Port": 7, "Check": {"TTL": "60s"}})
    agent.put("/v1/agent/check/pass/service:keep")
    assert list((data / "local" / "services").glob("*.json")) and list((data / "local" / "checks").glob("*.json"))
    agent.stop(signal.SIGKILL)
    again = AgentProcess(tmp_path / "b", dev=False, args=args)
    again.http_port, again.dns_port, again.server_port = agent.http_port, agent.dns_port, agent.server_port
    again.start()
    try:
        assert "keep" in again.get("/v1/agent/services")[1]
        assert again.get("/v1/agent/checks")[1]["service:keep"]["Status"] == "passing"
        wait_for(lambda: "keep" in catalog_services(again), message="keep re-synced to the catalog")
    finally:
        again.stop()


def _state() -> LocalState:
    node = {"ID": "", "Node": "n", "Address": "127.0.0.1", "Datacenter": "dc1", "TaggedAddresses": {}, "Meta": {}}

    async def apply(cmd):
        return True

    async def read():
        return None, [], []

    return LocalState(node, apply, read)


def _add(state: LocalState, sid: str, after: float | None, status: str) -> None:
    state.add_service({"ID": sid, "Service": sid, "Tags": []})
    row = {"CheckID": f"c-{sid}", "Name": "c", "Status": status, "Output": "", "ServiceID": sid, "Notes": "",
           "Type": "ttl"}
    state.add_check(row, {"Kind": "ttl", "DeregisterAfterSeconds": after} if after else {"Kind": "ttl"})


def test_reaper_picks_services_critical_past_their_limit() -> None:
    import asyncio

    async def scenario() -> None:
        state = _state()
        _add(state, "doomed", 90, "critical")
        _add(state, "healthy", 90, "passing")
        _add(state, "no-limit", None, "critical")
        _add(state, "short", 5, "critical")  # below Consul's one-minute floor
        now = time.monotonic()
        assert state.services_to_reap(now + 30) == []
        assert state.services_to_reap(now + MIN_REAP_AFTER + 1) == ["short"]
        assert state.services_to_reap(now + 91) == ["doomed", "short"]
        state.update_check("c-doomed", "passing", "")
        assert state.services_to_reap(now + 91) == ["short"]

    asyncio.run(scenario())


def test_output_only_changes_are_deferred() -> None:
    import asyncio

    async def scenario() -> None:
        state = _state()
        _add(state, "s", None, "passing")
        await state.sync_changes()
        entry = state._checks["c-s"]
        assert entry.in_sync
        state.update_check("c-s", "passing", "new output")
        assert not entry.in_sync and entry.deferred_until > time.monotonic() + 100, "waits ~check_update_interval"
        state.update_check("c-s", "critical", "down")
        assert entry.deferred_until == 0.0, "a status change is pushed at once"

    asyncio.run(scenario())
