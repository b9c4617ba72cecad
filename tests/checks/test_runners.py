"""Every kind of check against real servers that flip state, through a real agent process."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest
from support import AgentProcess, free_port, wait_for

from proconsul.agent.checks.manager import StatusFilter


def status_of(agent: AgentProcess, check_id: str) -> str:
    return agent.get("/v1/agent/checks")[1][check_id]["Status"]


def expect(agent: AgentProcess, check_id: str, status: str, timeout: float = 6.0) -> dict:
    wait_for(lambda: status_of(agent, check_id) == status, timeout, 0.05, f"{check_id} to be {status}")
    return agent.get("/v1/agent/checks")[1][check_id]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path_factory.mktemp("checks"), dev=True, args=["--enable-script-checks"])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


class FlipHTTP:
    def __init__(self) -> None:
        self.code = 200
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(outer.code)
                self.end_headers()
                self.wfile.write(b"state=%d" % outer.code + b"x" * 10_000)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"


def test_http_check_follows_status(agent: AgentProcess) -> None:
    srv = FlipHTTP()
    try:
        assert agent.put("/v1/agent/check/register", {"Name": "h", "CheckID": "http-1", "HTTP": srv.url,
                                                      "Interval": "1s", "Timeout": "1s"})[0] == 200
        chk = expect(agent, "http-1", "passing")
        assert chk["Output"].startswith(f"HTTP GET {srv.url}: 200 OK Output: state=200")
        assert len(chk["Output"]) < 4096 + 200, "output is cut to 4 KiB"
        srv.code = 429
        expect(agent, "http-1", "warning")
        srv.code = 503
        expect(agent, "http-1", "critical")
        srv.code = 201
        expect(agent, "http-1", "passing")
    finally:
        srv.server.shutdown()
    expect(agent, "http-1", "critical")  # server gone: connection refused
    agent.put("/v1/agent/check/deregister/http-1")


def test_tcp_check(agent: AgentProcess) -> None:
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    agent.put("/v1/agent/check/register", {"Name": "t", "CheckID": "tcp-1", "TCP": f"127.0.0.1:{port}",
                                           "Interval": "1s", "Timeout": "1s"})
    assert "Success" in expect(agent, "tcp-1", "passing")["Output"]
    listener.close()
    expect(agent, "tcp-1", "critical")
    agent.put("/v1/agent/check/deregister/tcp-1")


def test_udp_check(agent: AgentProcess) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = threading.Event()

    def echo() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(512)
                sock.sendto(data, addr)
            except OSError:
                continue

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    agent.put("/v1/agent/check/register", {"Name": "u", "CheckID": "udp-1", "UDP": f"127.0.0.1:{port}",
                                           "Interval": "1s", "Timeout": "1s"})
    assert "reply" in expect(agent, "udp-1", "passing")["Output"]
    stop.set()
    t.join()
    sock.close()  # now the port is closed: the kernel answers with ICMP port unreachable
    expect(agent, "udp-1", "critical")
    agent.put("/v1/agent/check/deregister/udp-1")


def test_script_check_exit_codes_and_timeout(agent: AgentProcess, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.write_text("0")
    script = ["sh", "-c", f'echo "out $(cat {code})"; exit $(cat {code})']
    agent.put("/v1/agent/check/register", {"Name": "s", "CheckID": "script-1", "Args": script, "Interval": "1s"})
    assert expect(agent, "script-1", "passing")["Output"].strip() == "out 0"
    code.write_text("1")
    expect(agent, "script-1", "warning")
    code.write_text("2")
    expect(agent, "script-1", "critical")
    agent.put("/v1/agent/check/deregister/script-1")
    agent.put("/v1/agent/check/register", {"Name": "slow", "CheckID": "script-slow",
                                           "Args": ["sleep", "30"], "Interval": "1s", "Timeout": "1s"})
    wait_for(lambda: "Timed out" in agent.get("/v1/agent/checks")[1]["script-slow"]["Output"], 8,
             message="the slow script to be killed at its timeout")
    assert status_of(agent, "script-slow") == "critical"
    agent.put("/v1/agent/check/deregister/script-slow")


def test_script_checks_need_the_flag(dev_agent: AgentProcess) -> None:
    status, text = dev_agent.put("/v1/agent/check/register", {"Name": "s", "Args": ["true"], "Interval": "1s"})
    assert status == 400 and "enable_script_checks" in text


@pytest.fixture
def grpc_health() -> Iterator[tuple[int, object]]:
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("billing", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield port, (servicer, health_pb2)
    finally:
        server.stop(0)


def test_grpc_and_h2ping_checks(agent: AgentProcess, grpc_health: tuple[int, object]) -> None:
    port, (servicer, pb2) = grpc_health
    agent.put("/v1/agent/check/register", {"Name": "g", "CheckID": "grpc-1", "GRPC": f"127.0.0.1:{port}/billing",
                                           "Interval": "1s", "Timeout": "2s"})
    agent.put("/v1/agent/check/register", {"Name": "g0", "CheckID": "grpc-0", "GRPC": f"127.0.0.1:{port}",
                                           "Interval": "1s", "Timeout": "2s"})
    agent.put("/v1/agent/check/register", {"Name": "p", "CheckID": "h2ping-1", "H2PING": f"127.0.0.1:{port}",
                                           "H2PingUseTLS": False, "Interval": "1s", "Timeout": "2s"})
    assert "success" in expect(agent, "grpc-1", "passing")["Output"]
    expect(agent, "grpc-0", "passing")
    assert "successful" in expect(agent, "h2ping-1", "passing")["Output"]
    servicer.set("billing", pb2.HealthCheckResponse.NOT_SERVING)
    expect(agent, "grpc-1", "critical")
    servicer.set("billing", pb2.HealthCheckResponse.SERVING)
    expect(agent, "grpc-1", "passing")
    agent.put("/v1/agent/check/register", {"Name": "g2", "CheckID": "grpc-unknown",
                                           "GRPC": f"127.0.0.1:{port}/nope", "Interval": "1s"})
    wait_for(lambda: "NOT_FOUND" in agent.get("/v1/agent/checks")[1]["grpc-unknown"]["Output"], 6,
             message="NOT_FOUND for an unknown gRPC service")
    for cid in ("grpc-1", "grpc-0", "h2ping-1", "grpc-unknown"):
        agent.put(f"/v1/agent/check/deregister/{cid}")


def test_alias_check_mirrors_a_service(agent: AgentProcess) -> None:
    agent.put("/v1/agent/service/register", {"Name": "backend", "Check": {"TTL": "60s", "CheckID": "backend-ttl"}})
    agent.put("/v1/agent/check/register", {"Name": "mirror", "CheckID": "alias-1", "AliasService": "backend"})
    wait_for(lambda: "backend" in agent.get("/v1/agent/checks")[1]["alias-1"]["Output"], 6,
             message="the alias to report on backend")
    assert status_of(agent, "alias-1") == "critical"
    agent.put("/v1/agent/check/pass/backend-ttl")
    expect(agent, "alias-1", "passing")
    agent.put("/v1/agent/check/warn/backend-ttl")
    expect(agent, "alias-1", "warning")
    agent.put("/v1/agent/service/deregister/backend")
    assert "could not be found" in expect(agent, "alias-1", "critical")["Output"]
    agent.put("/v1/agent/check/deregister/alias-1")


def test_registration_rejects_bad_definitions(agent: AgentProcess) -> None:
    cases = [({"Name": "x"}, "no check type"), ({"Name": "x", "HTTP": "http://a", "TCP": "a:1", "Interval": "1s"},
                                                "more than one check type"),
             ({"Name": "x", "HTTP": "http://a"}, "Interval is required"),
             ({"Name": "x", "TCP": "nohost", "Interval": "1s"}, "host:port"),
             ({"Name": "x", "HTTP": "ftp://a", "Interval": "1s"}, "http:// or https://"),
             ({"Name": "x", "TTL": "soon"}, "TTL"), ({"Name": "x", "UDP": "a:99999", "Interval": "1s"}, "host:port")]
    for body, message in cases:
        status, text = agent.put("/v1/agent/check/register", body)
        assert status == 400 and message in text, (body, text)


def test_a_hanging_target_does_not_block_others(agent: AgentProcess) -> None:
    hang = socket.create_server(("127.0.0.1", 0))  # accepts, never answers HTTP
    port = hang.getsockname()[1]
    srv = FlipHTTP()
    try:
        agent.put("/v1/agent/check/register", {"Name": "hang", "CheckID": "hang-1",
                                               "HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s",
                                               "Timeout": "5s"})
        agent.put("/v1/agent/check/register", {"Name": "ok", "CheckID": "ok-1", "HTTP": srv.url, "Interval": "1s"})
        expect(agent, "ok-1", "passing", 4)
        assert agent.get("/v1/agent/self")[0] == 200
    finally:
        agent.put("/v1/agent/check/deregister/hang-1")
        agent.put("/v1/agent/check/deregister/ok-1")
        srv.server.shutdown()
        hang.close()


def test_status_filter_thresholds() -> None:
    # Consul's StatusHandler: counters start at the thresholds (the first result after registration is
    # recorded as it is); a warning counts as a success; a held-back result records nothing (None).
    f = StatusFilter({"SuccessBeforePassing": 2, "FailuresBeforeWarning": 1, "FailuresBeforeCritical": 3})
    assert [f.feed(s) for s in ["passing", "passing", "critical", "critical", "critical", "passing", "passing"]] == [
        "passing", "passing", "warning", "warning", "critical", None, "passing"]
    only_critical = StatusFilter({"FailuresBeforeCritical": 2})  # warning threshold defaults to it
    assert [only_critical.feed(s) for s in ["passing", "critical", "critical", "warning"]] == [
        "passing", None, "critical", "warning"]
    plain = StatusFilter({})
    assert [plain.feed(s) for s in ["passing", "warning", "critical"]] == ["passing", "warning", "critical"]
