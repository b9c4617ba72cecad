"""The real `dig` against real agents, for every name form; recursors; health changes within 1 s."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import AgentProcess, wait_for

pytestmark = pytest.mark.skipif(shutil.which("dig") is None,
                                reason="dig is not installed (Debian bind9-dnsutils; `make test` installs it as root)")


def dig(agent: AgentProcess, *args: str) -> str:
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=3", "+tries=1", *args],
                          capture_output=True, text=True, timeout=20).stdout


def short(agent: AgentProcess, *args: str) -> list[str]:
    return sorted(line for line in dig(agent, "+short", *args).splitlines() if line and not line.startswith(";"))


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    a = shared_dev_agent
    a.put("/v1/agent/service/register", {"Name": "web", "Port": 8080, "Tags": ["v1"]})
    a.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3",
                                   "Service": {"Service": "web", "Port": 9090, "Tags": ["v2"]},
                                   "Checks": [{"CheckID": "n2-web", "ServiceID": "web", "Status": "passing"}]})
    a.put("/v1/catalog/register", {"Node": "n3", "Address": "10.1.2.4",
                                   "Service": {"Service": "web", "Port": 9091},
                                   "Checks": [{"CheckID": "n3-web", "ServiceID": "web", "Status": "critical"}]})
    wait_for(lambda: len(short(a, "web.service.mesh")) == 2, message="web to resolve")
    return a


def test_service_a_and_srv(agent: AgentProcess) -> None:
    assert short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"]
    assert short(agent, "web.service.mesh", "SRV") == ["1 1 8080 dev.node.dc1.mesh.", "1 1 9090 n2.node.dc1.mesh."]
    full = dig(agent, "web.service.mesh", "SRV")
    assert "ADDITIONAL SECTION" in full and "n2.node.dc1.mesh.\t0\tIN\tA\t10.1.2.3" in full


def test_tags_rfc2782_dc_and_case(agent: AgentProcess) -> None:
    assert short(agent, "v2.web.service.mesh", "SRV") == ["1 1 9090 n2.node.dc1.mesh."]
    assert short(agent, "_web._v1.service.mesh", "SRV") == ["1 1 8080 dev.node.dc1.mesh."]
    assert len(short(agent, "_web._tcp.service.mesh", "SRV")) == 2
    assert short(agent, "web.service.dc1.mesh") == ["10.1.2.3", "127.0.0.1"]
    out = dig(agent, "WeB.SerVice.MESH")
    assert "WeB.SerVice.MESH.\t0\tIN\tA" in out


def test_node_addr_ptr_apex(agent: AgentProcess) -> None:
    assert short(agent, "n2.node.mesh") == ["10.1.2.3"]
    assert short(agent, "n2.node.dc1.mesh") == ["10.1.2.3"]
    assert short(agent, "0a010203.addr.dc1.mesh") == ["10.1.2.3"]
    assert short(agent, "-x", "10.1.2.3") == ["n2.node.dc1.mesh."]
    assert short(agent, "mesh", "SOA")[0].startswith("ns.mesh. hostmaster.mesh.")
    assert short(agent, "mesh", "NS") == ["ns.mesh."]


def test_negative_answers(agent: AgentProcess) -> None:
    out = dig(agent, "nope.service.mesh")
    assert "status: NXDOMAIN" in out and "SOA" in out.split("AUTHORITY SECTION")[1]
    out = dig(agent, "web.service.mesh", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "AUTHORITY: 1" in out
    assert "status: REFUSED" in dig(agent, "example.com")


def test_tcp_gives_full_answers(agent: AgentProcess) -> None:
    assert short(agent, "+tcp", "web.service.mesh") == ["10.1.2.3", "127.0.0.1"]


def test_health_change_visible_within_a_second(agent: AgentProcess) -> None:
    agent.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "SkipNodeUpdate": True,
                                       "Checks": [{"CheckID": "n2-web", "ServiceID": "web", "Status": "critical"}]})
    t0 = time.monotonic()
    wait_for(lambda: short(agent, "web.service.mesh") == ["127.0.0.1"], 1.0, 0.01, "n2 to drop out")
    assert time.monotonic() - t0 < 1.0
    agent.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "SkipNodeUpdate": True,
                                       "Checks": [{"CheckID": "n2-web", "ServiceID": "web", "Status": "passing"}]})
    wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"], 1.0, 0.01, "n2 back")


def test_node_maintenance_removes_instances(agent: AgentProcess) -> None:
    agent.put("/v1/agent/maintenance?enable=true&reason=test")
    try:
        wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3"], 5, message="dev out of DNS")
    finally:
        agent.put("/v1/agent/maintenance?enable=false")
    wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"], 5, message="dev back")


def test_recursors_relay_and_servfail(tmp_path: Path) -> None:
    upstream = AgentProcess(tmp_path / "up", dev=True, args=["--domain", "upstream"])
    upstream.start()
    try:
        upstream.put("/v1/agent/service/register", {"Name": "far", "Port": 7000})
        conf = tmp_path / "down.json"
        conf.write_text(json.dumps({"dns_config": {"recursor_timeout": "500ms"}}))
        down = AgentProcess(tmp_path / "down", dev=True, args=[
            "--recursor", f"127.0.0.1:{upstream.dns_port}", "--config-file", str(conf)])
        down.start()
        try:
            assert wait_for(lambda: short(down, "far.service.upstream"), 10, message="relayed answer") == ["127.0.0.1"]
            out = dig(down, "far.service.upstream")
            assert "status: NOERROR" in out
        finally:
            down.stop()
        dead = AgentProcess(tmp_path / "dead", dev=True, args=["--recursor", "127.0.0.1:9", "--config-file", str(conf)])
        dead.start()
        try:
            assert "status: SERVFAIL" in dig(dead, "far.service.upstream")
        finally:
            dead.stop()
    finally:
        upstream.stop()
