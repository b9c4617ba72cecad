"""gRPC gets what HTTP/1.1 gets in L7 mode, end to end: real grpcio servers (instances a and b of api) behind
real sidecar processes, a grpcio client on web's upstream port. Retries on a gRPC status (RetryOn
"unavailable"), a route's request timeout (DEADLINE_EXCEEDED), MaxConcurrentRequests under many concurrent
streams on one HTTP/2 connection, a rate limit, access-log lines and spans of a call, the live tap, and an L7
intention deciding per gRPC method on api's side."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from concurrent import futures
from typing import Any

import grpc
import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, OTLPReceiver, ProxyProcess, sidecar_with_metrics, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-grpc-l7")


class Servers:
    """api's two grpcio instances; how many calls each got, and the peak of calls in progress over both."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = {"a": 0, "b": 0}
        self.in_flight = self.peak = 0
        self.servers: list[grpc.Server] = []

    def start(self, name: str) -> int:
        def say(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.calls[name] += 1
            if request == b"flaky" and name == "a":
                context.abort(grpc.StatusCode.UNAVAILABLE, "a is flaky")
            if request.startswith(b"sleep:"):
                with self.lock:
                    self.in_flight += 1
                    self.peak = max(self.peak, self.in_flight)
                try:
                    time.sleep(int(request[6:]) / 1000)
                finally:
                    with self.lock:
                        self.in_flight -= 1
            if request == b"meta":
                return json.dumps(dict(context.invocation_metadata())).encode()
            return name.encode() + b":" + request

        handler = grpc.method_handlers_generic_handler("demo.Echo", {
            m: grpc.unary_unary_rpc_method_handler(say) for m in ("Say", "Flaky", "Deadline", "Admin", "Tapped")})
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), handlers=(handler,))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        self.servers.append(server)
        return port

    def stop(self) -> None:
        for s in self.servers:
            s.stop(0)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("grpc-l7")
    agent, backends, servers = AgentProcess(tmp / "agent"), Backends(), Servers()
    procs = []
    channel = None
    try:
        agent.start()
        assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"})[0] == 200
        up = free_port()
        for name in ("a", "b"):
            procs.append(sidecar_with_metrics(agent, tmp, "api", servers.start(name), service_id=f"api-{name}"))
        procs.append(sidecar_with_metrics(agent, tmp, "web", backends.http("web"), upstreams={"api": up}))
        wait_passing(agent, "api", 2)
        assert agent.put("/v1/config", {"Kind": "service-router", "Name": "api", "Routes": [
            {"Match": {"HTTP": {"PathExact": "/demo.Echo/Flaky"}},
             "Destination": {"NumRetries": 3, "RetryOn": ["unavailable"]}},
            {"Match": {"HTTP": {"PathExact": "/demo.Echo/Deadline"}}, "Destination": {"RequestTimeout": "300ms"}},
        ]})[0] == 200
        channel = grpc.insecure_channel(f"127.0.0.1:{up}")
        wait_for(lambda: call(channel, "Deadline", b"sleep:1000")[0] == grpc.StatusCode.DEADLINE_EXCEEDED, 15,
                 message="the router in web's sidecar")
        yield {"agent": agent, "channel": channel, "servers": servers, "procs": procs, "tmp": tmp,
               "backends": backends}
    finally:
        if channel is not None:
            channel.close()
        for p in procs:
            p.stop()
        servers.stop()
        agent.stop()
        backends.close()


def call(channel: grpc.Channel, method: str, request: bytes, **kw: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, channel.unary_unary(f"/demo.Echo/{method}")(request, timeout=10, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()


def test_retry_on_unavailable_from_one_instance(mesh: dict[str, Any]) -> None:
    ch, servers = mesh["channel"], mesh["servers"]
    before = dict(servers.calls)
    got = [call(ch, "Flaky", b"flaky") for _ in range(20)]
    assert got == [(grpc.StatusCode.OK, b"b:flaky")] * 20, "RetryOn unavailable: a's UNAVAILABLE is retried on b"
    assert servers.calls["a"] > before["a"], "a was asked (and failed) along the way"
    web = mesh["procs"][-1].log()
    assert "retrying /demo.Echo/Flaky" in web and "(grpc-status 14)" in web
    # passive health checking counts a gRPC UNAVAILABLE as a failure: 5 in a row eject a
    assert re.search(r"ejected \S*api-a", web), web[-2000:]
    assert {call(ch, "Say", b"flaky") for _ in range(6)} == {(grpc.StatusCode.OK, b"b:flaky")}, "a gets nothing"


def test_request_timeout_is_deadline_exceeded(mesh: dict[str, Any]) -> None:
    t0 = time.monotonic()
    code, details = call(mesh["channel"], "Deadline", b"sleep:3000")
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "upstream request timeout", (code, details)
    assert time.monotonic() - t0 < 2, "the route's 300ms, not the client's 10s"
    assert call(mesh["channel"], "Deadline", b"sleep:10")[0] == grpc.StatusCode.OK, "a fast call on that route"


def test_max_concurrent_requests_under_many_streams(mesh: dict[str, Any]) -> None:
    agent, ch, servers = mesh["agent"], mesh["channel"], mesh["servers"]
    web = mesh["procs"][-1]
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Overrides": [
        {"Name": "api", "Limits": {"MaxConcurrentRequests": 5}}]}})[0] == 200
    try:
        wait_for(lambda: web.admin("/stats")["CircuitBreakers"]["api"]["MaxConcurrentRequests"] == 5, 5,
                 message="the limit in web's sidecar")
        wait_for(lambda: servers.in_flight == 0, 10, message="earlier calls to end")
        servers.peak = 0
        say = ch.unary_unary("/demo.Echo/Say")
        t0 = time.monotonic()
        calls = [say.future(b"sleep:500", timeout=10) for _ in range(60)]
        outcomes = []
        for f in calls:
            try:
                f.result()
                outcomes.append("ok")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and "circuit breaker" in (e.details() or ""), e
                outcomes.append("refused")
        assert servers.peak <= 5, f"the backends saw {servers.peak} calls at once"
        assert outcomes.count("ok") >= 5 and outcomes.count("refused") >= 30, outcomes
        assert time.monotonic() - t0 < 5, "the excess is refused at once"
        stats = web.admin("/stats")["CircuitBreakers"]["api"]
        assert stats["Overflows"] >= outcomes.count("refused")
        wait_for(lambda: web.admin("/stats")["CircuitBreakers"]["api"]["Active"] == 0, 5,
                 message="every place given back")
        assert call(ch, "Say", b"after")[0] == grpc.StatusCode.OK
    finally:
        agent.put("/v1/config", {"Kind": "service-defaults", "Name": "web"})


def test_rate_limit(mesh: dict[str, Any]) -> None:
    agent, ch = mesh["agent"], mesh["channel"]
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "grpc", "RateLimits": {
        "InstanceLevel": {"RequestsPerSecond": 1, "RequestsMaxBurst": 2}}})[0] == 200
    try:
        wait_for(lambda: call(ch, "Say", b"r")[0] == grpc.StatusCode.UNAVAILABLE, 5,
                 message="the limit in api's sidecars")
        got = [call(ch, "Say", b"r") for _ in range(30)]
        limited = [g for g in got if g[0] != grpc.StatusCode.OK]
        assert len(limited) >= 12 and set(limited) == {(grpc.StatusCode.UNAVAILABLE, "local_rate_limited")}, got
        assert sum(p.admin("/stats")["RateLimited"] for p in mesh["procs"][:2]) >= len(limited)
    finally:
        agent.put("/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"})


def test_access_log_lines_and_spans_of_a_call(mesh: dict[str, Any]) -> None:
    agent, ch = mesh["agent"], mesh["channel"]
    path = mesh["tmp"] / "access.log"
    otlp = OTLPReceiver(mesh["backends"])
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global",
                                    "AccessLogs": {"Enabled": True, "Type": "file", "Path": str(path)},
                                    "Config": {"tracing": {"otlp_endpoint": f"http://127.0.0.1:{otlp.port}/v1/traces",
                                                           "sampling_percent": 100}}})[0] == 200
    try:
        for p in mesh["procs"]:
            wait_for(lambda p=p: p.admin("/stats").get("TracingSpans") is not None and
                     "access logs: file" in p.log(), 5, message="tracing and access logs on in every sidecar")
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        code, body = call(ch, "Say", b"meta", metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),))
        assert code == grpc.StatusCode.OK
        seen = json.loads(body)
        assert seen["traceparent"].split("-")[1] == trace_id, "the trace reaches the application"
        assert seen["x-forwarded-client-cert"].endswith("/svc/web"), "api's sidecar names the caller"
        code, _ = call(ch, "Deadline", b"sleep:2000")
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED

        def lines() -> list[dict[str, Any]]:
            try:
                return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            except FileNotFoundError:
                return []

        wait_for(lambda: len([x for x in lines() if x.get("path") == "/demo.Echo/Say"]) >= 2, 5,
                 message="both sidecars' lines")
        say = [x for x in lines() if x["path"] == "/demo.Echo/Say"]
        out = next(x for x in say if x["upstream_cluster"] != "local_app")
        inn = next(x for x in say if x["upstream_cluster"] == "local_app")
        assert out["method"] == "POST" and out["protocol"] == "HTTP/2" and out["response_code"] == 200
        assert out["grpc_status"] == 0 and out["response_flags"] == "-" and out["route_name"] == "api/2"
        assert out["upstream_service"] == "api" and "/api-" in out["upstream_instance"] and out["bytes_sent"] > 0
        assert inn["downstream_peer_uri_san"].endswith("/svc/web") and inn["grpc_status"] == 0
        wait_for(lambda: any(x["path"] == "/demo.Echo/Deadline" and x["response_flags"] == "UT" and
                             x["grpc_status"] == 4 for x in lines()), 5, message="the timeout's line")

        wait_for(lambda: len(otlp.of_trace(bytes.fromhex(trace_id))) == 2, 5, message="both spans")
        spans = {svc: s for svc, s in otlp.of_trace(bytes.fromhex(trace_id))}
        client, server = spans["web"], spans["api"]
        assert client.kind == 3 and client.parent_span_id.hex() == parent
        assert server.kind == 2 and server.parent_span_id == client.span_id
        assert server.span_id.hex() == seen["traceparent"].split("-")[2]
        attrs = {a.key: a.value for a in client.attributes}
        assert attrs["url.path"].string_value == "/demo.Echo/Say" and attrs["rpc.grpc.status_code"].int_value == 0
    finally:
        agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_tap_shows_grpc_calls(mesh: dict[str, Any]) -> None:
    url = f"{mesh['agent'].url}/v1/agent/connect/tap/api?path_prefix=/demo.Echo/Tapped"
    got: list[dict[str, Any]] = []

    def read() -> None:
        with urllib.request.urlopen(url, timeout=20) as resp:
            for line in resp:
                if line.strip():
                    got.append(json.loads(line))
                    if len(got) == 2:
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: all(p.admin("/stats")["TapWatchers"] == 1 for p in mesh["procs"][:2]), 10,
             message="the watcher in both api sidecars")
    assert call(mesh["channel"], "Say", b"not tapped")[0] == grpc.StatusCode.OK
    for _ in range(2):
        assert call(mesh["channel"], "Tapped", b"t")[0] == grpc.StatusCode.OK
    reader.join(15)
    assert len(got) == 2, got
    for e in got:
        assert e["path"] == "/demo.Echo/Tapped" and e["method"] == "POST" and e["status"] == 200
        assert e["direction"] == "inbound" and e["source"] == "web" and e["service"] == "api"


def test_ingress_gateway_grpc_listener(mesh: dict[str, Any]) -> None:
    agent, port = mesh["agent"], free_port()
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "igw", "Listeners": [
        {"Port": port, "Protocol": "grpc", "Services": [{"Name": "api", "Hosts": ["api.example.com"]}]}]})[0] == 200
    gw = ProxyProcess(agent, mesh["tmp"], proxy_id="igw")
    gw.args = ["-gateway", "ingress", "-service", "igw", "-register", "-address", f"127.0.0.1:{free_port()}"]
    try:
        gw.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "api.example.com")]) as ch:
            wait_for(lambda: call(ch, "Say", b"in")[0] == grpc.StatusCode.OK, 10, message="gRPC through the gateway")
            assert call(ch, "Say", b"in")[1] in (b"a:in", b"b:in")
            assert call(ch, "Flaky", b"flaky") == (grpc.StatusCode.OK, b"b:flaky"), "api's chain: its retry policy"
            assert call(ch, "Deadline", b"sleep:2000")[0] == grpc.StatusCode.DEADLINE_EXCEEDED, "and its timeout"
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "nope.example.com")]) as ch:
            assert call(ch, "Say", b"x") == (grpc.StatusCode.UNIMPLEMENTED, "no service for authority "
                                                                            "'nope.example.com'")
    finally:
        gw.stop()
        agent.request("DELETE", "/v1/config/ingress-gateway/igw")


def test_l7_intention_per_grpc_method(mesh: dict[str, Any]) -> None:
    agent, ch = mesh["agent"], mesh["channel"]
    status, body = agent.request("POST", "/v1/connect/intentions", {
        "SourceName": "web", "DestinationName": "api", "Permissions": [
            {"Action": "allow", "HTTP": {"PathExact": "/demo.Echo/Say"}}]})[:2]
    assert status == 200, body
    try:
        wait_for(lambda: call(ch, "Admin", b"x")[0] == grpc.StatusCode.PERMISSION_DENIED, 5,
                 message="the intention in api's sidecars")
        assert call(ch, "Admin", b"x") == (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied")
        assert {call(ch, "Say", b"y")[0] for _ in range(10)} == {grpc.StatusCode.OK}, "the allowed method passes"
        assert any("/demo.Echo/Admin" in p.log() for p in mesh["procs"][:2]), "the refusal names the method"
    finally:
        agent.request("DELETE", "/v1/connect/intentions/exact?source=web&destination=api")


def test_ingress_grpc_listener_over_tls_alpn_h2(mesh: dict[str, Any]) -> None:
    """A grpc listener with TLS offers ALPN h2: curl --http2 (nghttp2) negotiates HTTP/2 over TLS, verifies the
    gateway's Connect CA leaf for the entry's host and gets the gRPC answer through the mesh; a grpcio client
    over TLS does the same; a client that offers only http/1.1 gets no answer in HTTP/1.1."""
    import subprocess

    agent, port, tmp = mesh["agent"], free_port(), mesh["tmp"]
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "igs", "Listeners": [
        {"Port": port, "Protocol": "grpc", "TLS": {"Enabled": True},
         "Services": [{"Name": "api", "Hosts": ["api.example.com"]}]}]})[0] == 200
    gw = ProxyProcess(agent, tmp, proxy_id="igs")
    gw.args = ["-gateway", "ingress", "-service", "igs", "-register", "-address", f"127.0.0.1:{free_port()}"]
    ca = tmp / "igs-ca.pem"
    ca.write_text("\n".join(r["RootCert"] for r in agent.get("/v1/connect/ca/roots")[1]["Roots"]))
    (tmp / "grpc-frame").write_bytes(b"\x00" + len(b"curl").to_bytes(4, "big") + b"curl")

    def curl(*flags: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["curl", "-s", "-m", "5", "--cacert", str(ca), "--resolve",
                               f"api.example.com:{port}:127.0.0.1", *flags, "-H", "content-type: application/grpc",
                               "-H", "te: trailers", "--data-binary", f"@{tmp / 'grpc-frame'}", "-w",
                               "\n%{http_version} %{http_code}", f"https://api.example.com:{port}/demo.Echo/Say"],
                              capture_output=True, timeout=10)

    try:
        gw.start()
        wait_for(lambda: curl("--http2").stdout.endswith(b"\n2 200"), 15, message="curl --http2 over TLS")
        out = curl("--http2").stdout
        assert out.endswith(b"\n2 200") and (b"a:curl" in out or b"b:curl" in out), out
        assert not curl("--http1.1").stdout.endswith(b" 200"), "ALPN h2 only: no HTTP/1.1 answer"
        creds = grpc.ssl_channel_credentials(ca.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                 options=[("grpc.ssl_target_name_override", "api.example.com")]) as ch:
            wait_for(lambda: call(ch, "Say", b"tls")[0] == grpc.StatusCode.OK, 10, message="grpcio over TLS")
            assert call(ch, "Say", b"tls")[1] in (b"a:tls", b"b:tls")
    finally:
        gw.stop()
        agent.request("DELETE", "/v1/config/ingress-gateway/igs")
