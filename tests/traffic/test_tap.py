"""Live tap end to end: `proconsul connect tap api` (a real CLI process) and `/v1/agent/connect/tap/api` stream
the requests passing api's sidecar (a real proxy process), through the agent, filtered; when the watcher goes
the proxy holds no tap any more."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from typing import Any

import pytest
from support import CLI, AgentProcess, free_port, wait_for
from support_mesh import Backends, http_get, sidecar_with_metrics, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-tap")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("tap")
    agent, backends = AgentProcess(tmp / "agent"), Backends()
    procs = []
    try:
        agent.start()
        for name in ("web", "api"):
            assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": name, "Protocol": "http"})[0] == 200
        up = free_port()
        procs.append(sidecar_with_metrics(agent, tmp, "api", backends.http("api")))
        procs.append(sidecar_with_metrics(agent, tmp, "web", backends.http("web"), upstreams={"api": up}))
        wait_passing(agent, "api")
        wait_for(lambda: http_get(up, "/warm")[0] == 200, 10, message="web → api")
        yield {"agent": agent, "api": procs[0], "up": up, "backends": backends}
    finally:
        for p in procs:
            p.stop()
        agent.stop()
        backends.close()


def watchers(mesh: dict[str, Any]) -> int:
    return int(mesh["api"].admin("/stats")["TapWatchers"])


def send(port: int, paths: list[str]) -> None:
    for p in paths:
        try:
            http_get(port, p)
        except OSError:  # a 500 raises in urllib
            pass


def test_cli_streams_filtered_requests_and_leaves_nothing_behind(mesh: dict[str, Any]) -> None:
    assert watchers(mesh) == 0, "nobody taps: no tap in the proxy"
    proc = subprocess.Popen([*CLI, "connect", "tap", "api", "-status", "5xx", "-format", "json", "-count", "3",
                             "-http-addr", mesh["agent"].addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: watchers(mesh) == 1, 10, message="the CLI's watcher in api's sidecar")
        mesh["backends"].status["api"] = 500
        send(mesh["up"], ["/bad/1", "/bad/2", "/bad/3"])
        mesh["backends"].status["api"] = 200
        send(mesh["up"], ["/good/1", "/good/2"])
        mesh["backends"].status["api"] = 500
        send(mesh["up"], ["/bad/4"])
        out, err = proc.communicate(timeout=15)
    finally:
        mesh["backends"].status["api"] = 200
        proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert [e["path"] for e in events] == ["/bad/1", "/bad/2", "/bad/3"]
    for e in events:
        assert e["status"] == 500 and e["method"] == "GET" and e["direction"] == "inbound"
        assert e["source"] == "web" and e["service"] == "api" and e["latency_ms"] > 0 and e["proxy"]
    wait_for(lambda: watchers(mesh) == 0, 15, message="the watcher gone once the CLI left")


def test_http_endpoint_with_path_prefix(mesh: dict[str, Any]) -> None:
    url = f"{mesh['agent'].url}/v1/agent/connect/tap/api?path_prefix=/orders"
    got: list[dict[str, Any]] = []

    def read() -> None:
        with urllib.request.urlopen(url, timeout=20) as resp:
            assert resp.headers["Content-Type"].startswith("application/x-ndjson")
            for line in resp:
                if line.strip():
                    got.append(json.loads(line))
                    if len(got) == 2:
                        return

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: watchers(mesh) == 1, 10, message="the endpoint's watcher")
    send(mesh["up"], ["/other", "/orders/1", "/x", "/orders/2"])
    reader.join(20)
    assert [e["path"] for e in got] == ["/orders/1", "/orders/2"] and got[0]["upstream"] == "api"
    wait_for(lambda: watchers(mesh) == 0, 15, message="the watcher gone once the reader left")


def test_bad_parameters_and_unknown_services(mesh: dict[str, Any]) -> None:
    status, body, _ = mesh["agent"].request("GET", "/v1/agent/connect/tap/api?status=9xx")
    assert status == 400 and "status '9xx'" in body
    status, body, _ = mesh["agent"].request("GET", "/v1/agent/connect/tap/nosuch")
    assert status == 404 and "has no sidecar proxy" in body
    res = subprocess.run([*CLI, "connect", "tap", "api", "-direction", "up", "-http-addr", mesh["agent"].addr],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "direction" in res.stderr
