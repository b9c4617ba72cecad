"""The ingress gateway end to end: `proconsul connect gateway -ingress -service ig -register` as a real
process, HTTP listeners routed by Host into the mesh (over mTLS, with the gateway's identity, through the
services' discovery chains), a TCP listener, and curl as the outside client."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, GatewayProcess, ProxyProcess, exchange, mesh_service, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-ingress")


def curl(port: int, host: str, path: str = "/") -> tuple[int, Any]:
    out = subprocess.run(["curl", "-s", "-m", "5", "-H", f"Host: {host}", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=10).stdout
    body, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code or 0), body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ingress")
    agent, backends = AgentProcess(tmp / "agent"), Backends()
    procs: list[ProxyProcess] = []
    try:
        agent.start()
        for name in ("web", "api"):
            procs.append(mesh_service(agent, tmp, name, backends.http(name), "http"))
        procs.append(mesh_service(agent, tmp, "db", backends.tcp_echo()))
        for sid in ("web", "api", "db"):
            wait_passing(agent, sid)
        http_port, tcp_port, gw_port = free_port(), free_port(), free_port()
        gw = GatewayProcess(agent, tmp, "ingress", "ig", f"127.0.0.1:{gw_port}")
        gw.log_path.parent.mkdir(parents=True, exist_ok=True)
        proc_start = gw.start
        import threading

        started = threading.Thread(target=proc_start, kwargs={"timeout": 30})
        started.start()  # the gateway starts before its config entry exists: it must wait, and say so
        wait_for(lambda: "no ingress-gateway config entry named 'ig' yet" in gw.log(), 15,
                 message="the gateway to say it waits for its entry")
        assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
            {"Port": http_port, "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["web.example.com"]},
                                                                 {"Name": "api"}]},
            {"Port": tcp_port, "Protocol": "tcp", "Services": [{"Name": "db"}]}]})[0] == 200
        started.join()
        procs.append(gw)
        wait_for(lambda: curl(http_port, "web.example.com")[0] == 200, 10, message="HTTP through the gateway")
        yield {"agent": agent, "gw": gw, "http": http_port, "tcp": tcp_port, "backends": backends, "gw_port": gw_port}
    finally:
        for p in procs:
            p.stop()
        agent.stop()
        backends.close()


def test_http_by_host_into_the_mesh(mesh: dict[str, Any]) -> None:
    status, body = curl(mesh["http"], "web.example.com", "/hello")
    assert status == 200 and body["backend"] == "web" and body["path"] == "/hello"
    assert body["headers"]["x-forwarded-client-cert"].endswith("/svc/ig"), "the gateway's identity over mTLS"
    status, body = curl(mesh["http"], f"api.ingress.mesh:{mesh['http']}")
    assert status == 200 and body["backend"] == "api", "Consul's default host <service>.ingress.*"
    status, body = curl(mesh["http"], "nobody.example.com")
    assert status == 404 and "no service for host" in body


def test_tcp_listener(mesh: dict[str, Any]) -> None:
    assert exchange(mesh["tcp"], b"ping through the gateway") == b"ping through the gateway"


def test_chain_and_intentions_apply_at_the_gateway(mesh: dict[str, Any]) -> None:
    agent = mesh["agent"]
    assert agent.put("/v1/config", {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/to-web"}}, "Destination": {"Service": "web", "PrefixRewrite": "/"}}]}
                     )[0] == 200
    wait_for(lambda: curl(mesh["http"], "api.ingress.mesh", "/to-web/x")[1].get("backend") == "web", 5,
             message="api's router applied by the gateway")
    assert agent.put("/v1/config", {"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "ig", "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/secret"}},
                                        {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]})[0] == 200
    try:
        wait_for(lambda: curl(mesh["http"], "api.ingress.mesh", "/secret")[0] == 403, 5,
                 message="the L7 intention naming the gateway as the source")
        assert curl(mesh["http"], "api.ingress.mesh", "/public")[0] == 200
        assert curl(mesh["http"], "web.example.com")[0] == 200
    finally:
        agent.request("DELETE", "/v1/config/service-intentions/api")
        agent.request("DELETE", "/v1/config/service-router/api")


def dig_a(agent: AgentProcess, name: str) -> list[str]:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+time=3", "+tries=1", "+short", name, "A"],
                         capture_output=True, text=True, timeout=20).stdout
    return sorted(x for x in out.splitlines() if x and not x.startswith(";"))


def test_catalog_views_and_live_entry_changes(mesh: dict[str, Any]) -> None:
    import shutil

    agent, gw = mesh["agent"], mesh["gw"]
    names = {g["Service"]["Name"] for g in agent.get("/v1/catalog/gateway-services/ig")[1]}
    assert names == {"web", "api", "db"}
    assert [e["Service"]["Service"] for e in agent.get("/v1/health/ingress/api")[1]] == ["ig"]
    if shutil.which("dig"):
        wait_for(lambda: dig_a(agent, "api.ingress.mesh") == ["127.0.0.1"], 10,
                 message="DNS <service>.ingress.<domain>: the gateway's address")
        assert dig_a(agent, "nobody.ingress.mesh") == []
    pid = gw.proc.pid
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": mesh["http"], "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["www.example.org"]},
                                                                {"Name": "api"}]},
        {"Port": mesh["tcp"], "Protocol": "tcp", "Services": [{"Name": "db"}]}]})[0] == 200
    wait_for(lambda: curl(mesh["http"], "www.example.org")[0] == 200, 10, message="the new host")
    assert curl(mesh["http"], "web.example.com")[0] == 404
    if shutil.which("dig"):
        assert dig_a(agent, "web.ingress.mesh") == ["127.0.0.1"]
        assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
            {"Port": mesh["http"], "Protocol": "http", "Services": [{"Name": "api"}]},
            {"Port": mesh["tcp"], "Protocol": "tcp", "Services": [{"Name": "db"}]}]})[0] == 200
        wait_for(lambda: dig_a(agent, "web.ingress.mesh") == [], 5,
                 message="the entry's change to reach DNS (web no longer exposed)")
    assert gw.proc.pid == pid and gw.proc.poll() is None


def test_ingress_entries_are_validated(mesh: dict[str, Any]) -> None:
    agent = mesh["agent"]
    for listener, words in (
            ({"Port": 1, "Protocol": "tcp", "Services": [{"Name": "api"}]}, "does not match the listener"),
            ({"Port": 1, "Protocol": "tcp", "Services": [{"Name": "db"}, {"Name": "db2"}]}, "exactly one service"),
            ({"Port": 1, "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["a b"]}]}, "not a host name"),
            ({"Port": 1, "Protocol": "tcp", "Services": [{"Name": "db", "Hosts": ["x.example"]}]}, "Hosts can only")):
        status, body, _ = agent.request("PUT", "/v1/config", {"Kind": "ingress-gateway", "Name": "bad",
                                                              "Listeners": [listener]})
        assert status == 400 and words in body and "Listeners[0]" in body, body


def test_tcp_follows_the_resolver_and_logs_connections(mesh: dict[str, Any]) -> None:
    agent, gw = mesh["agent"], mesh["gw"]
    log_path = Path(gw.log_path).parent / "access-l4.log"
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200
    try:
        wait_for(lambda: "access logs: file" in gw.log(), 5, message="access logs on in the gateway")
        assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "db", "DefaultSubset": "v9",
                                        "Subsets": {"v9": {"Filter": "Service.Meta.version == v9"}}})[0] == 200
        wait_for(lambda: exchange(mesh["tcp"], b"x", timeout=2) == b"", 5,
                 message="the TCP listener to follow db's resolver (a subset with no instance)")
        assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "db", "DefaultSubset": "v9",
                                        "Subsets": {"v9": {"Filter": "Service.Meta.version == v9"}},
                                        "Failover": {"v9": {"Service": "db"}}})[0] == 200
        wait_for(lambda: exchange(mesh["tcp"], b"failover", timeout=2) == b"failover", 5,
                 message="the failover target")

        def lines() -> list[dict[str, Any]]:
            return [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []

        wait_for(lambda: any(x.get("protocol") == "TCP" and x.get("upstream_cluster") == "db.default.default.dc1"
                             and x.get("bytes_sent") == 8 for x in lines()), 5, message="the connection's line")
        wait_for(lambda: any(x.get("protocol") == "TCP" and x.get("response_flags") == "UH" for x in lines()), 5,
                 message="the refused connection's line (flag UH)")
        wait_for(lambda: any(x.get("upstream_cluster") == "local_app" and x.get("protocol") == "TCP"
                             and x.get("downstream_peer_uri_san", "").endswith("/svc/ig") for x in lines()), 5,
                 message="db's sidecar's line for the inbound connection, with the caller's identity")
    finally:
        agent.request("DELETE", "/v1/config/service-resolver/db")
        agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_tcp_max_connections_at_the_gateway(mesh: dict[str, Any]) -> None:
    """Limits.MaxConnections on an L4 listener: past it a connection is closed at once (Envoy's TCP proxy)."""
    import socket

    agent = mesh["agent"]
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": mesh["http"], "Protocol": "http", "Services": [{"Name": "api"}]},
        {"Port": mesh["tcp"], "Protocol": "tcp", "Services": [{"Name": "db", "MaxConnections": 1}]}]})[0] == 200
    wait_for(lambda: mesh["gw"].admin("/stats")["CircuitBreakers"]["db"]["MaxConnections"] == 1, 10,
             message="the limit in the gateway")
    wait_for(lambda: exchange(mesh["tcp"], b"ready", timeout=3) == b"ready", 10, message="the re-opened listener")
    held = socket.create_connection(("127.0.0.1", mesh["tcp"]), timeout=5)
    try:
        held.sendall(b"first")
        assert held.recv(16) == b"first"
        try:
            second = exchange(mesh["tcp"], b"second", timeout=3)
        except ConnectionResetError:
            second = b""
        assert second == b"", "the second connection is closed at once"
        assert mesh["gw"].admin("/stats")["CircuitBreakers"]["db"]["Overflows"] >= 1
    finally:
        held.close()
    wait_for(lambda: exchange(mesh["tcp"], b"third", timeout=3) == b"third", 5, message="the place given back")


def test_wildcard_listener_exposes_every_http_service_and_logs_requests(mesh: dict[str, Any]) -> None:
    """Consul's `Services = [{ Name = "*" }]`: every service with the listener's protocol by Host
    `<service>.ingress.*` (a tcp service is not on an http listener), services registered later included;
    gateway-services lists what the wildcard links; the gateway writes an access-log line per request."""
    import shutil

    agent, gw, port = mesh["agent"], mesh["gw"], mesh["http"]
    log_path = Path(gw.log_path).parent / "access-l7.log"
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": port, "Protocol": "http", "Services": [{"Name": "*"}]},
        {"Port": mesh["tcp"], "Protocol": "tcp", "Services": [{"Name": "db"}]}]})[0] == 200
    extra = None
    try:
        rows = agent.get("/v1/catalog/gateway-services/ig")[1]
        assert {(r["Service"]["Name"], r["Port"], r["FromWildcard"]) for r in rows} == {
            ("web", port, True), ("api", port, True), ("db", port, True), ("db", mesh["tcp"], False)}
        wait_for(lambda: curl(port, "web.ingress.mesh")[1].get("backend") == "web", 10,
                 message="web through the wildcard")
        assert curl(port, f"api.ingress.mesh:{port}")[1]["backend"] == "api"
        assert curl(port, "db.ingress.mesh")[0] == 404, "db is tcp: not on an http listener"
        assert [e["Service"]["Service"] for e in agent.get("/v1/health/ingress/web")[1]] == ["ig"]
        assert agent.get("/v1/health/ingress/web-sidecar-proxy")[1] == [], "the wildcard links no proxy"
        if shutil.which("dig"):
            wait_for(lambda: dig_a(agent, "web.ingress.mesh") == ["127.0.0.1"], 10, message="DNS through the wildcard")
            assert dig_a(agent, "nobody.ingress.mesh") == [], "the wildcard stands for the catalog's services only"
        assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "extra", "Protocol": "http"})[0] == 200
        assert agent.put("/v1/agent/service/register", {"Name": "extra", "Port": mesh["backends"].http("extra"),
                                                        "Connect": {"SidecarService": {}}})[0] == 200
        extra = ProxyProcess(agent, Path(gw.log_path).parent, sidecar_for="extra").start()
        wait_for(lambda: curl(port, "extra.ingress.mesh", "/new")[1].get("backend") == "extra", 15,
                 message="a service registered later, exposed by the wildcard")

        def gateway_lines() -> list[dict[str, Any]]:
            text = log_path.read_text() if log_path.exists() else ""
            return [x for x in map(json.loads, text.splitlines()) if x.get("upstream_cluster") != "local_app"]

        wait_for(lambda: any(x.get("authority") == "extra.ingress.mesh" and x.get("path") == "/new"
                             and x.get("response_code") == 200 and x.get("upstream_service") == "extra"
                             for x in gateway_lines()), 5, message="the gateway's line for the request")
        wait_for(lambda: any(x.get("authority") == "db.ingress.mesh" and x.get("response_code") == 404
                             and x.get("response_flags") == "NR" for x in gateway_lines()), 5,
                 message="the gateway's line for the unrouted Host (NR)")
    finally:
        if extra is not None:
            extra.stop()
        agent.request("PUT", "/v1/agent/service/deregister/extra")
        agent.request("DELETE", "/v1/config/service-defaults/extra")
        agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_wildcard_links_a_service_registered_later_within_a_second(mesh: dict[str, Any]) -> None:
    """The gateway follows /v1/catalog/gateway-services with a blocking query: a service registered after the
    gateway started is on the wildcard listener within ~1 s, and routed as soon as its sidecar passes — no
    restart (same process, the open listener keeps serving)."""
    import time

    agent, gw, port = mesh["agent"], mesh["gw"], mesh["http"]
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": port, "Protocol": "http", "Services": [{"Name": "*"}]},
        {"Port": mesh["tcp"], "Protocol": "tcp", "Services": [{"Name": "db"}]}]})[0] == 200
    wait_for(lambda: curl(port, "web.ingress.mesh")[1].get("backend") == "web", 10, message="the wildcard entry")
    pid, late = gw.proc.pid, None
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "late", "Protocol": "http"})[0] == 200
    try:
        started = time.monotonic()
        assert agent.put("/v1/agent/service/register", {"Name": "late", "Port": mesh["backends"].http("late"),
                                                        "Connect": {"SidecarService": {}}})[0] == 200
        wait_for(lambda: "late" in gw.admin("/stats")["CircuitBreakers"], 3, interval=0.02,
                 message="the gateway to link the new service")
        linked = time.monotonic() - started
        late = ProxyProcess(agent, Path(gw.log_path).parent, sidecar_for="late").start()
        wait_passing(agent, "late")
        passing = time.monotonic()
        wait_for(lambda: curl(port, "late.ingress.mesh", "/late")[1].get("backend") == "late", 3,
                 message="the new service routed by the wildcard")
        routed = time.monotonic() - passing
        assert linked < 1.0, f"linked after {linked:.2f}s"
        assert routed < 1.0, f"routed {routed:.2f}s after its sidecar passed"
        assert gw.proc.pid == pid and gw.proc.poll() is None, "no restart"
    finally:
        if late is not None:
            late.stop()
        agent.request("PUT", "/v1/agent/service/deregister/late")
        agent.request("DELETE", "/v1/config/service-defaults/late")


def health_of(agent: AgentProcess, path: str) -> list[tuple[str, str]]:
    """(service ID, its `<kind> listening` check's status) of each row of a /v1/health/… answer."""
    return [(r["Service"]["ID"], next((c["Status"] for c in r["Checks"] if c["Name"].endswith("listening")), "none"))
            for r in agent.get(path)[1]]


def test_registration_has_consuls_check_answered_by_the_ready_listener(mesh: dict[str, Any]) -> None:
    """`-register` adds Consul's check (`ingress-gateway listening`, TCP on -address, 10s, deregistered after
    critical for 6h); the gateway answers it with its ready listener on -address, so the gateway is passing in
    /v1/health/service/ig and /v1/health/ingress/<svc>?passing lists it."""
    agent = mesh["agent"]
    checks = [c for c in agent.get("/v1/agent/checks")[1].values() if c["ServiceID"] == "ig"]
    assert [(c["Name"], c["Type"]) for c in checks] == [("ingress-gateway listening", "tcp")]
    wait_for(lambda: health_of(agent, "/v1/health/service/ig") == [("ig", "passing")], 15,
             message="the gateway's check to pass")
    assert health_of(agent, "/v1/health/ingress/api?passing") == [("ig", "passing")]

    def ready() -> str:
        return subprocess.run(["curl", "-s", f"http://127.0.0.1:{mesh['gw_port']}/ready"], capture_output=True,
                              text=True, timeout=10).stdout

    wait_for(lambda: ready() == "ready\n", 5, message="the ready listener on -address (re-opened with the listeners)")


@pytest.mark.slow
def test_a_stopped_gateway_turns_critical_in_health_ingress(mesh: dict[str, Any], tmp_path: Path) -> None:
    """Consul's check follows the gateway: stopped, it is critical within an interval (10s) and
    /v1/health/ingress/<svc>?passing no longer lists it (the registration stays, as Consul's does)."""
    agent, port = mesh["agent"], free_port()
    assert agent.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig2", "Listeners": [
        {"Port": free_port(), "Protocol": "http", "Services": [{"Name": "api"}]}]})[0] == 200
    gw = GatewayProcess(agent, tmp_path, "ingress", "ig2", f"127.0.0.1:{port}").start()
    try:
        wait_for(lambda: ("ig2", "passing") in health_of(agent, "/v1/health/ingress/api?passing"), 15,
                 message="the second gateway passing")
        gw.stop()
        wait_for(lambda: health_of(agent, "/v1/health/service/ig2") == [("ig2", "critical")], 15,
                 message="the stopped gateway's check critical")
        assert ("ig2", "critical") in health_of(agent, "/v1/health/ingress/api")
        assert health_of(agent, "/v1/health/ingress/api?passing") == [("ig", "passing")]
    finally:
        gw.stop()
        agent.request("PUT", "/v1/agent/service/deregister/ig2")
        agent.request("DELETE", "/v1/config/ingress-gateway/ig2")
