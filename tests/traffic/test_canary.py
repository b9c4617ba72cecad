"""Automated canaries end to end: a dev agent (whose leader runs the canaries), api v1 and v2 behind real
sidecars, web's sidecar calling api under steady load; `proconsul canary start` (the real CLI) steps the
splitter to v2 while v2's sidecar measures it healthy and promotes it, and rolls back within one interval
when v2 starts answering 500s."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest
from support import AgentProcess, free_port, ok, run, wait_for
from support_mesh import Backends, ProxyProcess, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-canary")


class Load:
    """Steady GETs through web's upstream listener (one keep-alive connection), counting answers by backend."""

    def __init__(self, port: int) -> None:
        self.port, self.stop, self.seen = port, threading.Event(), {}  # type: ignore[var-annotated]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/load")
                resp = conn.getresponse()
                body = resp.read()
                name = json.loads(body).get("backend", "?") if resp.status in (200, 500) else f"http-{resp.status}"
                self.seen[name] = self.seen.get(name, 0) + 1
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.stop.wait(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("canary")
    agent, backends = AgentProcess(tmp / "agent"), Backends()
    procs: list[ProxyProcess] = []
    load = None
    try:
        agent.start()
        for name in ("web", "api"):
            assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": name, "Protocol": "http"})[0] == 200
        up = free_port()
        for sid, name, meta, ups in (("api-v1", "api", {"version": "v1"}, []), ("api-v2", "api", {"version": "v2"}, []),
                                     ("web", "web", {}, [{"DestinationName": "api", "LocalBindPort": up}])):
            admin = free_port()
            status, body, _ = agent.request("PUT", "/v1/agent/service/register", {
                "Name": name, "ID": sid, "Port": backends.http(sid), "Meta": meta, "Connect": {"SidecarService": {
                    "Proxy": {"Upstreams": ups, "Config": {"envoy_prometheus_bind_addr": f"127.0.0.1:{admin}"}}}}})
            assert status == 200, body
            procs.append(ProxyProcess(agent, tmp, sidecar_for=sid, registered_admin_port=admin).start())
        wait_passing(agent, "api", 2)
        assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})[0] == 200
        load = Load(up)
        wait_for(lambda: load.seen.get("api-v1", 0) > 20, 10, message="load reaching api v1")
        yield {"agent": agent, "backends": backends, "load": load}
    finally:
        if load is not None:
            load.close()
        for p in procs:
            p.stop()
        agent.stop()
        backends.close()


def state(agent: AgentProcess) -> dict[str, Any]:
    return agent.get("/v1/connect/canary/api")[1]


def test_healthy_canary_steps_up_and_is_promoted(mesh: dict[str, Any]) -> None:
    agent, load = mesh["agent"], mesh["load"]
    out = ok(agent, "canary", "start", "api", "-to-subset", "v2", "-step", "50", "-interval", "2s",
             "-max-error-rate", "1%", "-max-p99", "2s", "-min-requests", "5")
    assert "progressing, 50% to v2" in out, out
    assert agent.get("/v1/config/service-splitter/api")[1]["Splits"][1] == {"Weight": 50, "ServiceSubset": "v2"}
    wait_for(lambda: state(agent)["Phase"] == "promoted", 20, message="the canary promoted")
    s = state(agent)
    assert [e["Event"] for e in s["History"]] == ["start", "promote"] and s["Weight"] == 100
    assert s["LastHealth"]["Requests"] >= 5 and s["LastHealth"]["Errors"] == 0
    assert agent.get("/v1/config/service-splitter/api")[1]["Splits"] == [{"Weight": 100, "ServiceSubset": "v2"}]
    before = load.seen.get("api-v2", 0)
    wait_for(lambda: load.seen.get("api-v2", 0) > before + 20, 5, message="traffic on v2")
    assert "promoted" in ok(agent, "canary", "status", "api")


def test_failing_canary_rolls_back_within_one_interval(mesh: dict[str, Any]) -> None:
    agent, backends, load = mesh["agent"], mesh["backends"], mesh["load"]
    backends.status["api-v2"] = 500
    try:
        started = time.monotonic()
        status, body = agent.put("/v1/connect/canary/api", {"ToSubset": "v2", "FromSubset": "v1", "Step": 20,
                                                            "Interval": "5s", "MaxErrorRate": "1%", "MinRequests": 5})
        assert status == 200 and body["Phase"] == "progressing", body
        wait_for(lambda: state(agent)["Phase"] == "rolled-back", 5, message="the rollback within one interval")
        assert time.monotonic() - started < 5.0
        s = state(agent)
        assert "error rate" in s["Reason"] and s["Weight"] == 0
        # The splitter that was there before this canary (the promoted one's) is back.
        assert agent.get("/v1/config/service-splitter/api")[1]["Splits"] == [{"Weight": 100, "ServiceSubset": "v2"}]
    finally:
        backends.status["api-v2"] = 200
    assert load.seen.get("http-502", 0) == 0


def test_abort_restores_and_bad_requests_are_refused(mesh: dict[str, Any]) -> None:
    agent = mesh["agent"]
    assert agent.request("DELETE", "/v1/config/service-splitter/api")[0] == 200
    status, body = agent.put("/v1/connect/canary/api", {"ToSubset": "v2", "Interval": "1m"})
    assert status == 200 and body["FromSubset"] == "v1", "from the resolver's DefaultSubset"
    status, body, _ = agent.request("PUT", "/v1/connect/canary/api", {"ToSubset": "v2"})
    assert status == 409 and "already has a canary in progress" in body
    assert "aborted" in ok(agent, "canary", "abort", "api")
    assert agent.get("/v1/config/service-splitter/api")[0] == 404, "no splitter before the canary: none after"
    status, body, _ = agent.request("PUT", "/v1/connect/canary/api", {"ToSubset": "v9"})
    assert status == 400 and "does not have a subset named 'v9'" in body
    res = run(agent, "canary", "start", "api", "-to-subset", "v2", "-interval", "soon")
    assert res.returncode == 1 and "Interval" in res.stderr and len(res.stderr.strip().splitlines()) == 1
