"""gRPC through the sidecars (`protocol = "grpc"`): real grpcio servers (v1 and v2) behind real sidecar
processes, a grpcio client on web's upstream port; each call is routed on its own by the discovery chain —
by method path, by metadata header, by split — and gRPC's trailers (status, message), streams and large
messages pass."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, ProxyProcess, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-grpc")


def grpc_server(version: str) -> tuple[grpc.Server, int]:
    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request.startswith(b"big:"):
            return b"y" * int(request[4:])
        if request == b"fail":
            context.abort(grpc.StatusCode.NOT_FOUND, f"{version} has no such thing")
        return version.encode() + b":" + request[:64] + b":" + str(len(request)).encode()

    def count(request: bytes, context: grpc.ServicerContext) -> Any:
        for i in range(int(request)):
            yield f"{version}-{i}".encode()

    handler = grpc.method_handlers_generic_handler("demo.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say), "Admin": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("grpc")
    agent, backends = AgentProcess(tmp / "agent"), Backends()
    servers: list[grpc.Server] = []
    procs: list[ProxyProcess] = []
    channel = None
    try:
        agent.start()
        assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"})[0] == 200
        up = free_port()
        for version in ("v1", "v2"):
            server, port = grpc_server(version)
            servers.append(server)
            assert agent.put("/v1/agent/service/register", {"Name": "api", "ID": f"api-{version}", "Port": port,
                                                            "Meta": {"version": version},
                                                            "Connect": {"SidecarService": {}}})[0] == 200
            procs.append(ProxyProcess(agent, tmp, sidecar_for=f"api-{version}").start())
        assert agent.put("/v1/agent/service/register", {"Name": "web", "Port": backends.http("web"), "Connect": {
            "SidecarService": {"Proxy": {"Upstreams": [{"DestinationName": "api", "LocalBindPort": up}]}}}})[0] == 200
        procs.append(ProxyProcess(agent, tmp, sidecar_for="web").start())
        wait_passing(agent, "api", 2)
        for entry in (
            {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "Subsets": {
                "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}},
            {"Kind": "service-router", "Name": "api", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/demo.Echo/Admin"}}, "Destination": {"ServiceSubset": "v2"}},
                {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
                 "Destination": {"ServiceSubset": "v2"}}]},
        ):
            assert agent.put("/v1/config", entry)[0] == 200, entry
        channel = grpc.insecure_channel(f"127.0.0.1:{up}")
        say = channel.unary_unary("/demo.Echo/Say")
        wait_for(lambda: say(b"hi", timeout=2) == b"v1:hi:2", 15, message="gRPC through the sidecars")
        yield {"agent": agent, "channel": channel, "procs": procs}
    finally:
        if channel is not None:
            channel.close()
        for p in procs:
            p.stop()
        for s in servers:
            s.stop(0)
        agent.stop()
        backends.close()


def test_routes_by_method_and_metadata(mesh: dict[str, Any]) -> None:
    ch = mesh["channel"]
    assert ch.unary_unary("/demo.Echo/Say")(b"a", timeout=5) == b"v1:a:1"
    assert ch.unary_unary("/demo.Echo/Admin")(b"b", timeout=5) == b"v2:b:1", "the method's path routes"
    assert ch.unary_unary("/demo.Echo/Say")(b"c", metadata=(("x-canary", "1"),), timeout=5) == b"v2:c:1"


def test_status_in_trailers_streams_and_large_messages(mesh: dict[str, Any]) -> None:
    ch = mesh["channel"]
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/demo.Echo/Say")(b"fail", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "v1 has no such thing"
    assert list(ch.unary_stream("/demo.Echo/Count")(b"50", timeout=5)) == [f"v1-{i}".encode() for i in range(50)]
    big = b"x" * (1 << 20)  # 16× HTTP/2's initial windows: flow control both ways
    for _ in range(2):  # again on the same connections: every byte relayed opens its window again
        assert ch.unary_unary("/demo.Echo/Say")(big, timeout=10).endswith(b":" + str(len(big)).encode())
        assert len(ch.unary_unary("/demo.Echo/Say")(b"big:%d" % (1 << 20), timeout=10)) == 1 << 20


def test_split_between_subsets(mesh: dict[str, Any]) -> None:
    agent, ch = mesh["agent"], mesh["channel"]
    assert agent.put("/v1/config", {"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}]})[0] == 200
    try:
        say = ch.unary_unary("/demo.Echo/Say")
        wait_for(lambda: any(say(b"s", timeout=5).startswith(b"v2") for _ in range(20)), 5, message="the split")
        got = [say(b"s", timeout=5)[:2] for _ in range(400)]
        assert 150 <= got.count(b"v2") <= 250, got.count(b"v2")
    finally:
        agent.request("DELETE", "/v1/config/service-splitter/api")


def test_no_healthy_instance_is_unavailable(mesh: dict[str, Any]) -> None:
    agent, ch = mesh["agent"], mesh["channel"]
    assert agent.put("/v1/agent/service/maintenance/api-v1-sidecar-proxy?enable=true")[0] == 200
    try:
        def unavailable() -> bool:
            try:
                ch.unary_unary("/demo.Echo/Say")(b"u", timeout=5)
                return False
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAVAILABLE and "no healthy upstream" in (e.details() or "")
        wait_for(unavailable, 10, message="UNAVAILABLE with no v1 instance")
    finally:
        agent.put("/v1/agent/service/maintenance/api-v1-sidecar-proxy?enable=false")
