"""The real `dig` against real agents, for every name form; recursors; health changes within 1 s."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
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


def section(output: str, name: str) -> list[str]:
    """The record lines of one section of dig's full output, e.g. "ANSWER" or "ADDITIONAL"."""
    lines = output.split(f";; {name} SECTION:\n", 1)
    if len(lines) < 2:
        return []
    return [x for x in lines[1].split("\n\n", 1)[0].splitlines() if x and not x.startswith(";")]


@pytest.fixture(scope="module")
def agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    a = shared_dev_agent
    a.put("/v1/agent/service/register", {"Name": "web", "Port": 8080, "Tags": ["v1"]})
    a.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "NodeMeta": {"rack": "r2"},
                                   "Service": {"Service": "web", "Port": 9090, "Tags": ["v2"]},
                                   "Checks": [{"CheckID": "n2-web", "ServiceID": "web", "Status": "passing"}]})
    a.put("/v1/catalog/register", {"Node": "n3", "Address": "10.1.2.4",
                                   "Service": {"Service": "web", "Port": 9091},
                                   "Checks": [{"CheckID": "n3-web", "ServiceID": "web", "Status": "critical"}]})
    a.put("/v1/catalog/register", {"Node": "n4", "Address": "10.1.2.5",
                                   "Service": {"Service": "api", "Port": 7000, "Address": "10.9.0.1"}})
    a.put("/v1/catalog/register", {"Node": "n6", "Address": "fd00::6",
                                   "Service": {"Service": "six", "Port": 6000}})
    a.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "SkipNodeUpdate": True,
                                   "Service": {"ID": "web-proxy", "Service": "web-sidecar-proxy", "Port": 21000,
                                               "Kind": "connect-proxy",
                                               "Proxy": {"DestinationServiceName": "web"}}})
    for i in range(30):
        a.put("/v1/catalog/register", {"Node": f"big{i}", "Address": f"10.3.0.{i + 1}",
                                       "Service": {"Service": "big", "Port": 5000 + i}})
    wait_for(lambda: len(short(a, "web.service.mesh")) == 2, message="web to resolve")
    return a


def test_service_a_and_srv(agent: AgentProcess) -> None:
    assert short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"]
    assert short(agent, "web.service.mesh", "SRV") == ["1 1 8080 dev.node.dc1.mesh.", "1 1 9090 n2.node.dc1.mesh."]
    full = dig(agent, "web.service.mesh", "SRV")
    assert "flags: qr aa rd;" in full
    assert sorted(section(full, "ADDITIONAL")) == ["dev.node.dc1.mesh.\t0\tIN\tA\t127.0.0.1",
                                                   "n2.node.dc1.mesh.\t0\tIN\tA\t10.1.2.3"]


def test_service_address_srv_target_is_addr(agent: AgentProcess) -> None:
    assert short(agent, "api.service.mesh") == ["10.9.0.1"]
    assert short(agent, "api.service.mesh", "SRV") == ["1 1 7000 0a090001.addr.dc1.mesh."]
    assert short(agent, "six.service.mesh", "AAAA") == ["fd00::6"]
    assert short(agent, "six.service.mesh", "ANY") == ["fd00::6"]


def test_tags_rfc2782_dc_and_case(agent: AgentProcess) -> None:
    assert short(agent, "v2.web.service.mesh", "SRV") == ["1 1 9090 n2.node.dc1.mesh."]
    assert short(agent, "_web._v1.service.mesh", "SRV") == ["1 1 8080 dev.node.dc1.mesh."]
    assert len(short(agent, "_web._tcp.service.mesh", "SRV")) == 2
    assert short(agent, "web.service.dc1.mesh") == ["10.1.2.3", "127.0.0.1"]
    out = dig(agent, "WeB.SerVice.MESH")
    assert "WeB.SerVice.MESH.\t0\tIN\tA" in out
    out = dig(agent, "WeB.SerVice.MESH")  # the cached answer echoes this question's case too
    assert "WeB.SerVice.MESH.\t0\tIN\tA" in out and "WeB.SerVice.MESH.\t\tIN\tA" in out


def test_connect_answers_with_sidecars(agent: AgentProcess) -> None:
    assert short(agent, "web.connect.mesh", "SRV") == ["1 1 21000 n2.node.dc1.mesh."]
    assert short(agent, "web.connect.mesh") == ["10.1.2.3"]


def test_node_addr_ptr(agent: AgentProcess) -> None:
    assert short(agent, "n2.node.mesh") == ["10.1.2.3"]
    assert short(agent, "n2.node.dc1.mesh") == ["10.1.2.3"]
    assert short(agent, "n2.node.mesh", "TXT") == ['"rack=r2"']
    assert section(dig(agent, "n2.node.mesh"), "ADDITIONAL") == ['n2.node.mesh.\t\t0\tIN\tTXT\t"rack=r2"']
    assert short(agent, "n6.node.mesh", "AAAA") == ["fd00::6"]
    assert short(agent, "0a010203.addr.dc1.mesh") == ["10.1.2.3"]
    assert short(agent, "-x", "10.1.2.3") == ["n2.node.dc1.mesh."]
    assert short(agent, "-x", "10.9.0.1") == ["api.service.dc1.mesh."]
    assert short(agent, "-x", "fd00::6") == ["n6.node.dc1.mesh."]


def test_soa_and_ns(agent: AgentProcess) -> None:
    assert short(agent, "mesh", "SOA")[0].startswith("ns.mesh. hostmaster.mesh. ")
    assert short(agent, "mesh", "NS") == ["dev.node.dc1.mesh."]
    assert section(dig(agent, "mesh", "NS"), "ADDITIONAL") == ["dev.node.dc1.mesh.\t0\tIN\tA\t127.0.0.1"]


def test_negative_answers(agent: AgentProcess) -> None:
    out = dig(agent, "nope.service.mesh")
    assert "status: NXDOMAIN" in out and section(out, "AUTHORITY")[0].startswith("mesh.\t\t\t0\tIN\tSOA\tns.mesh.")
    assert "status: NXDOMAIN" in dig(agent, "web.service.dc9.mesh")
    out = dig(agent, "web.service.mesh", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "AUTHORITY: 1" in out
    out = dig(agent, "example.com")
    assert "status: REFUSED" in out and "flags: qr rd;" in out


def test_udp_limits_and_tcp(agent: AgentProcess) -> None:
    assert len(short(agent, "+noedns", "+ignore", "big.service.mesh")) == 3  # udp_answer_limit
    assert len(short(agent, "+bufsize=4096", "big.service.mesh")) == 30
    out = dig(agent, "+noedns", "+ignore", "big.service.mesh", "SRV")
    assert len(section(out, "ANSWER")) == 3 and len(section(out, "ADDITIONAL")) == 3
    assert len(short(agent, "+tcp", "big.service.mesh", "SRV")) == 30
    assert len(short(agent, "+tcp", "+noedns", "big.service.mesh")) == 30


def test_health_change_visible_within_a_second(agent: AgentProcess) -> None:
    agent.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "SkipNodeUpdate": True,
                                       "Checks": [{"CheckID": "n2-web", "ServiceID": "web", "Status": "critical"}]})
    t0 = time.monotonic()
    wait_for(lambda: short(agent, "web.service.mesh") == ["127.0.0.1"], 1.0, 0.01, "n2 to drop out")
    assert time.monotonic() - t0 < 1.0
    agent.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "SkipNodeUpdate": True,
                                       "Checks": [{"CheckID": "n2-web", "ServiceID": "web", "Status": "passing"}]})
    wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"], 1.0, 0.01, "n2 back")


def test_node_level_check_and_maintenance_remove_instances(agent: AgentProcess) -> None:
    agent.put("/v1/catalog/register", {"Node": "n2", "Address": "10.1.2.3", "SkipNodeUpdate": True,
                                       "Checks": [{"CheckID": "n2-node", "Status": "critical"}]})
    try:
        wait_for(lambda: short(agent, "web.service.mesh") == ["127.0.0.1"], 5, message="n2 out of DNS")
    finally:
        agent.put("/v1/catalog/deregister", {"Node": "n2", "CheckID": "n2-node"})
    wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"], 5, message="n2 back")
    agent.put("/v1/agent/maintenance?enable=true&reason=test")
    try:
        wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3"], 5, message="dev out of DNS")
    finally:
        agent.put("/v1/agent/maintenance?enable=false")
    wait_for(lambda: short(agent, "web.service.mesh") == ["10.1.2.3", "127.0.0.1"], 5, message="dev back")


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[AgentProcess]:
    conf = tmp_path / "dns.json"
    conf.write_text(json.dumps({"alt_domain": "consul", "dns_config": {
        "node_ttl": "30s", "service_ttl": {"*": "5s", "we*": "10s"}, "only_passing": True,
        "enable_truncate": True, "udp_answer_limit": 2, "soa": {"min_ttl": 60}}}))
    a = AgentProcess(tmp_path / "agent", dev=True, args=["--config-file", str(conf)])
    a.start()
    try:
        yield a
    finally:
        a.stop()


def test_configured_ttls_limits_and_alt_domain(configured: AgentProcess) -> None:
    a = configured
    for i, status in enumerate(["passing", "passing", "passing", "warning"]):
        a.put("/v1/catalog/register", {"Node": f"w{i}", "Address": f"10.4.0.{i + 1}",
                                       "Service": {"Service": "web", "Port": 80},
                                       "Checks": [{"CheckID": f"w{i}", "ServiceID": "web", "Status": status}]})
    out = dig(a, "+noedns", "+ignore", "web.service.consul")
    answers = section(out, "ANSWER")
    assert len(answers) == 2 and all("\t10\tIN\tA\t" in x for x in answers)
    assert "flags: qr aa tc rd;" in out  # enable_truncate: TC when udp_answer_limit cut answers
    assert short(a, "+tcp", "web.service.mesh") == ["10.4.0.1", "10.4.0.2", "10.4.0.3"]  # only_passing
    assert "\t30\tIN\tA\t127.0.0.1" in dig(a, "dev.node.consul")
    assert "\t5\tIN\tSRV\t" in dig(a, "consul.service.mesh", "SRV")
    auth = section(dig(a, "nope.service.consul"), "AUTHORITY")
    assert auth[0].startswith("consul.\t\t\t60\tIN\tSOA\tns.consul. hostmaster.consul.")


def test_recursors_relay_and_servfail(tmp_path: Path) -> None:
    upstream = AgentProcess(tmp_path / "up", dev=True, args=["--domain", "upstream"])
    upstream.start()
    conf = tmp_path / "down.json"
    conf.write_text(json.dumps({"dns_config": {"recursor_timeout": "300ms"}}))
    down = AgentProcess(tmp_path / "down", dev=True, args=[
        "--recursor", f"127.0.0.1:{upstream.dns_port}", "--config-file", str(conf)])
    try:
        upstream.put("/v1/agent/service/register", {"Name": "far", "Port": 7000})
        down.start()
        assert wait_for(lambda: short(down, "far.service.upstream"), 10, message="relayed answer") == ["127.0.0.1"]
        out = dig(down, "far.service.upstream")
        assert "status: NOERROR" in out and "flags: qr aa rd;" in out  # upstream's own answer, relayed as is
        assert short(down, "+tcp", "far.service.upstream") == ["127.0.0.1"]
        assert "ra;" in dig(down, "dev.node.mesh")  # recursion available
        upstream.stop()
        assert "status: SERVFAIL" in dig(down, "far.service.upstream")
    finally:
        down.stop()
        upstream.stop()
