"""The terminating gateway end to end: `proconsul connect gateway -terminating -service tgw -register` as a
real process; services outside the mesh registered in the catalog on a node without an agent (a plain HTTP
server, an HTTPS server with a certificate made by openssl, one that also asks for a client certificate); a
sidecar's upstreams reach them through the gateway over mTLS; intentions are enforced at the gateway."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, GatewayProcess, ProxyProcess, wait_passing

pytestmark = pytest.mark.xdist_group("traffic-terminating")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path) -> dict[str, str]:
    """A CA and, signed by it, a server certificate for exts.example.com and a client certificate; and a
    second CA that signed nothing here (a gateway trusting it must refuse the server)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1", "-subj",
                f"/CN=Outside {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:exts.example.com\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for leaf, cn in (("server", "exts.example.com"), ("client", "mesh-gateway-client")):
        openssl("req", *ec, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{leaf}.pem", "-days", "1", "-extfile", f"{leaf}.ext", cwd=d)
    return {k: str(d / f"{k}.pem") for k in ("ca", "other-ca", "server", "client")} | {
        "server-key": str(d / "server.key"), "client-key": str(d / "client.key")}


def curl(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    extra = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    out = subprocess.run(["curl", "-s", "-m", "5", *extra, "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=10).stdout
    body, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code or 0), body


def grpc_server(servers: list[Any], name: str = "outside") -> int:
    """A grpcio server answering demo.Echo/Say and /Admin with `<name>:<request>`, on a free port."""
    from concurrent import futures

    import grpc

    def answer(req: bytes, _ctx: Any) -> bytes:
        if req.startswith(b"sleep:"):  # a slow outside service (the fault under test): answer after <ms>
            time.sleep(int(req[6:]) / 1000)
        return name.encode() + b":" + req

    handler = grpc.method_handlers_generic_handler("demo.Echo", {
        m: grpc.unary_unary_rpc_method_handler(answer) for m in ("Say", "Admin")})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    servers.append(server)
    return port


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("terminating")
    pki = make_pki(tmp)
    sni_seen: list[str] = []

    def server_ctx(client_ca: str = "") -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["server"], pki["server-key"])
        ctx.sni_callback = lambda _obj, name, _ctx: sni_seen.append(name or "")  # type: ignore[func-returns-value]
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        return ctx

    agent, backends = AgentProcess(tmp / "agent"), Backends()
    procs: list[ProxyProcess] = []
    servers: list[Any] = []
    try:
        agent.start()
        outside = {"ext": backends.http("ext"), "exts": backends.http("exts", ssl_context=server_ctx()),
                   "extm": backends.http("extm", ssl_context=server_ctx(client_ca=pki["ca"]))}
        outside["extbad"] = outside["exts"]  # the HTTPS server, but the gateway is told to trust another CA
        outside["extg"] = grpc_server(servers)  # a gRPC server outside the mesh (h2c)
        for name, port in outside.items():  # outside the mesh: a node without an agent, no sidecar
            assert agent.put("/v1/catalog/register", {
                "Node": f"outside-{name}", "Address": "127.0.0.1", "NodeMeta": {"external-node": "true"},
                "Service": {"Service": name, "Port": port}})[0] == 200
        # extnone: linked, no instance anywhere; extv, exth, extgv: linked and registered by the resolver tests
        ports = {name: free_port() for name in (*outside, "extnone", "extv", "exth", "extgv")}
        assert agent.put("/v1/agent/service/register", {"Name": "web", "Port": backends.http("web"), "Connect": {
            "SidecarService": {"Proxy": {"Upstreams": [{"DestinationName": n, "LocalBindPort": p}
                                                       for n, p in ports.items()]}}}})[0] == 200
        web = ProxyProcess(agent, tmp, sidecar_for="web").start()
        procs.append(web)
        wait_passing(agent, "web")
        status, body = agent.put("/v1/config", {"Kind": "terminating-gateway", "Name": "tgw", "Services": [
            {"Name": "ext"},
            {"Name": "exts", "CAFile": pki["ca"], "SNI": "exts.example.com"},
            {"Name": "extm", "CAFile": pki["ca"], "CertFile": pki["client"], "KeyFile": pki["client-key"]},
            {"Name": "extbad", "CAFile": pki["other-ca"]}, {"Name": "extnone"}, {"Name": "extg"}]})
        assert status == 200, body
        gw = GatewayProcess(agent, tmp, "terminating", "tgw", f"127.0.0.1:{free_port()}").start()
        procs.append(gw)
        wait_for(lambda: curl(ports["ext"])[0] == 200, 15, message="HTTP through the terminating gateway")
        yield {"agent": agent, "gw": gw, "ports": ports, "backends": backends, "sni": sni_seen, "pki": pki,
               "outside": outside, "web": web, "servers": servers}
    finally:
        for p in procs:
            p.stop()
        for server in servers:
            server.stop(0)
        agent.stop()
        backends.close()


def test_plain_outside_service_through_the_gateway(mesh: dict[str, Any]) -> None:
    status, body = curl(mesh["ports"]["ext"], "/hello")
    assert status == 200 and body["backend"] == "ext" and body["path"] == "/hello"
    gw = mesh["gw"].admin("/stats")
    assert gw["Services"]["ext"]["Connections"] >= 1 and gw["Services"]["ext"]["TLS"] is False


def test_health_connect_answers_with_the_gateway(mesh: dict[str, Any]) -> None:
    agent = mesh["agent"]
    status, rows = agent.get("/v1/health/connect/ext?passing")
    assert status == 200 and [r["Service"]["Kind"] for r in rows] == ["terminating-gateway"]
    assert rows[0]["Service"]["Service"] == "tgw"
    status, rows = agent.get("/v1/catalog/gateway-services/tgw")
    assert status == 200 and {r["Service"]["Name"] for r in rows} == {"ext", "exts", "extm", "extbad", "extnone",
                                                                      "extg"}
    assert {r["GatewayKind"] for r in rows} == {"terminating-gateway"}
    assert agent.get("/v1/health/connect/web?passing")[1][0]["Service"]["Kind"] == "connect-proxy"


def test_tls_origination_one_way_with_sni(mesh: dict[str, Any]) -> None:
    mesh["sni"].clear()
    status, body = curl(mesh["ports"]["exts"], "/secure")
    assert status == 200 and body["backend"] == "exts" and body["path"] == "/secure"
    assert "exts.example.com" in mesh["sni"], "the gateway sends the entry's SNI"


def test_tls_origination_with_a_client_certificate(mesh: dict[str, Any]) -> None:
    status, body = curl(mesh["ports"]["extm"], "/mutual")
    assert status == 200 and body["backend"] == "extm"


def test_a_server_the_ca_does_not_vouch_for_is_refused_not_plaintext(mesh: dict[str, Any]) -> None:
    hits = mesh["backends"].hits.get("exts", 0)
    status, _ = curl(mesh["ports"]["extbad"], "/nope")
    assert status != 200
    assert mesh["backends"].hits.get("exts", 0) == hits, "no request may reach the server"
    wait_for(lambda: mesh["gw"].admin("/stats")["Services"]["extbad"]["DialFailures"] >= 1, 5,
             message="the failed TLS origination counted")
    assert "CERTIFICATE_VERIFY_FAILED" in mesh["gw"].log() or "certificate verify failed" in mesh["gw"].log()


def test_intentions_are_enforced_at_the_gateway(mesh: dict[str, Any]) -> None:
    agent, port = mesh["agent"], mesh["ports"]["ext"]
    status, _ = agent.put("/v1/connect/intentions/exact?source=web&destination=ext", {"Action": "deny"})
    assert status == 200
    try:
        wait_for(lambda: curl(port)[0] != 200, 10, message="the deny to take effect at the gateway")
        hits = mesh["backends"].hits.get("ext", 0)
        assert curl(port)[0] != 200 and mesh["backends"].hits.get("ext", 0) == hits
        assert "refused connection from web to ext" in mesh["gw"].log()
        assert mesh["gw"].admin("/stats")["Services"]["ext"]["Refused"] >= 1
        assert curl(mesh["ports"]["exts"])[0] == 200, "the deny names ext only"
    finally:
        agent.request("DELETE", "/v1/connect/intentions/exact?source=web&destination=ext")
    wait_for(lambda: curl(port)[0] == 200, 10, message="allowed again once the intention is gone")


def test_access_log_lines_at_the_gateway(mesh: dict[str, Any]) -> None:
    """proxy-defaults AccessLogs: one line per connection at the gateway, with Envoy's flags (UF: the outside
    service could not be connected to, UH: no instance) and the RBAC details for a caller an intention denies."""
    agent, gw, ports = mesh["agent"], mesh["gw"], mesh["ports"]
    log_path = Path(gw.log_path).parent / "tgw-access.log"
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200

    def lines(service: str) -> list[dict[str, Any]]:
        text = log_path.read_text() if log_path.exists() else ""
        return [x for x in map(json.loads, text.splitlines()) if x.get("upstream_service") == service
                and "downstream_peer_uri_san" in x]  # the gateway's lines (web's sidecar logs to the same file)

    try:
        wait_for(lambda: "access logs: file" in gw.log(), 10, message="access logs on in the gateway")
        assert curl(ports["ext"], "/logged")[0] == 200
        wait_for(lambda: lines("ext"), 5, message="the connection's line")
        line = lines("ext")[-1]
        assert line["protocol"] == "TCP" and line["response_flags"] == "-"
        assert line["upstream_host"] == f"127.0.0.1:{mesh['outside']['ext']}"
        assert line["upstream_cluster"] == "ext.default.default.dc1"
        assert line["downstream_peer_uri_san"].endswith("/svc/web") and line["bytes_received"] > 0
        assert line["bytes_sent"] > len("/logged") and line["downstream_remote_address"].startswith("127.0.0.1:")
        assert curl(ports["extbad"])[0] != 200 and curl(ports["extnone"])[0] != 200
        wait_for(lambda: lines("extbad") and lines("extnone"), 5, message="the failed connections' lines")
        assert lines("extbad")[-1]["response_flags"] == "UF" and lines("extnone")[-1]["response_flags"] == "UH"
        status, _ = agent.put("/v1/connect/intentions/exact?source=web&destination=ext", {"Action": "deny"})
        assert status == 200
        wait_for(lambda: curl(ports["ext"])[0] != 200, 10, message="the deny to take effect at the gateway")
        wait_for(lambda: lines("ext")[-1].get("response_code_details") == "rbac_access_denied_matched_policy[none]",
                 5, message="the denied connection's line")
        assert lines("ext")[-1]["bytes_sent"] == 0
    finally:
        agent.request("DELETE", "/v1/connect/intentions/exact?source=web&destination=ext")
        agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_wildcard_links_every_service_and_one_registered_later(mesh: dict[str, Any]) -> None:
    """Consul's `Services = [{ Name = "*" }]` (OSS: the default namespace): every typical service of the catalog
    is linked, named ones keep their own settings; an outside service registered later is served at once."""
    agent, gw, ports, pki = mesh["agent"], mesh["gw"], mesh["ports"], mesh["pki"]
    entry = agent.get("/v1/config/terminating-gateway/tgw")[1]
    named = [svc for svc in entry["Services"] if svc["Name"] != "extnone"]
    assert agent.put("/v1/config", {"Kind": "terminating-gateway", "Name": "tgw",
                                    "Services": [*named, {"Name": "*"}]})[0] == 200
    try:
        assert curl(ports["extnone"])[0] != 200, "no instance of extnone yet: the wildcard does not link it"
        backend, pid = mesh["backends"].http("extnone"), gw.proc.pid
        started = time.monotonic()
        assert agent.put("/v1/catalog/register", {
            "Node": "outside-extnone", "Address": "127.0.0.1", "NodeMeta": {"external-node": "true"},
            "Service": {"Service": "extnone", "Port": backend}})[0] == 200
        wait_for(lambda: curl(ports["extnone"], "/late")[0] == 200, 5, interval=0.02,
                 message="extnone through the wildcard")
        took = time.monotonic() - started
        assert took < 1.0, f"a service registered later served after {took:.2f}s (blocking-query watch: ~at once)"
        assert gw.proc.pid == pid, "no restart"
        status, body = curl(ports["extnone"], "/late")
        assert status == 200 and body["backend"] == "extnone" and body["path"] == "/late"
        rows = {r["Service"]["Name"]: r for r in agent.get("/v1/catalog/gateway-services/tgw")[1]}
        assert rows["extnone"]["FromWildcard"] and rows["web"]["FromWildcard"], "every typical service"
        assert not rows["exts"]["FromWildcard"] and rows["exts"]["CAFile"] == pki["ca"], "named: its own settings"
        assert "web-sidecar-proxy" not in rows and "tgw" not in rows, "proxies and gateways are not linked"
        assert curl(ports["exts"])[0] == 200 and "exts.example.com" in mesh["sni"], "named: still TLS with SNI"
        assert gw.admin("/stats")["Services"]["extnone"]["Connections"] >= 1
    finally:
        agent.put("/v1/catalog/deregister", {"Node": "outside-extnone"})
        restored = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")}
        assert agent.put("/v1/config", restored)[0] == 200


@pytest.mark.parametrize(("service", "message"), [
    ({"Name": "x", "CertFile": "/c.pem"}, "must have a CertFile, CAFile, and KeyFile specified for TLS origination"),
    ({"Name": ""}, "Services[0].Name: Service name cannot be blank."),
    ({"Name": "x", "SNI": "x.example.com"}, "Services[0].SNI"),
    ({"Name": "x", "CAfile": "/ca.pem", "Bogus": 1}, "unknown field"),
])
def test_bad_entries_are_refused_naming_the_field(mesh: dict[str, Any], service: dict[str, Any],
                                                  message: str) -> None:
    status, body = mesh["agent"].put("/v1/config", {"Kind": "terminating-gateway", "Name": "bad",
                                                    "Services": [service]})
    assert status == 400 and message in str(body) and "terminating-gateway 'bad'" in str(body)
    assert mesh["agent"].get("/v1/config/terminating-gateway/bad")[0] == 404


def test_failed_tls_handshakes_are_logged_and_counted(mesh: dict[str, Any]) -> None:
    """openssl s_client with a certificate made by openssl (not the Connect CA), or with none, at web's sidecar
    public listener, and at the gateway also with a server name it does not link: one listener-level access-log
    line per connection (Envoy's DOWNSTREAM_TRANSPORT_FAILURE_REASON) and a count by reason in the metrics."""
    agent, gw, web, pki = mesh["agent"], mesh["gw"], mesh["web"], mesh["pki"]
    log_path = Path(gw.log_path).parent / "handshakes-access.log"
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200
    public = agent.get("/v1/agent/service/web-sidecar-proxy")[1]["Port"]
    gw_port = int(gw.args[gw.args.index("-address") + 1].rsplit(":", 1)[1])
    td = agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    foreign = ("-cert", pki["client"], "-key", str(Path(pki["client"]).with_name("client.key")))

    def s_client(port: int, *args: str) -> None:
        subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args], input="",
                       capture_output=True, text=True, timeout=10)

    def failures() -> list[tuple[str, str, str]]:
        text = log_path.read_text() if log_path.exists() else ""
        return [(x.get("upstream_cluster", ""), x.get("upstream_service", ""), x["downstream_transport_failure_reason"])
                for x in map(json.loads, text.splitlines())
                if x.get("response_code_details") == "downstream_tls_handshake_failed"]

    try:
        wait_for(lambda: "access logs: file" in gw.log() and "access logs: file" in web.log(), 10,
                 message="access logs on in the gateway and the sidecar")
        s_client(public, *foreign)
        s_client(public)
        s_client(gw_port, "-servername", f"ext.default.dc1.internal.{td}", *foreign)
        s_client(gw_port, "-servername", "nope.example.com", *foreign)
        wait_for(lambda: len(failures()) >= 4, 5, message="a line per failed handshake")
        lines = failures()
        assert ("local_app", "web", "CERTIFICATE_VERIFY_FAILED") in lines
        assert ("local_app", "web", "PEER_DID_NOT_RETURN_A_CERTIFICATE") in lines
        assert ("ext.default.default.dc1", "ext", "CERTIFICATE_VERIFY_FAILED") in lines, "the SNI chose ext"
        assert ("", "", "UNRECOGNIZED_NAME") in lines, "a server name the gateway does not link"
        assert len(lines) == 4, lines
        metrics = web.admin("/metrics")
        assert 'proconsul_proxy_tls_handshake_failures_total{service="web",reason="CERTIFICATE_VERIFY_FAILED"} 1' \
            in metrics
        stats = gw.admin("/stats")
        assert stats["HandshakeFailures"] >= 2 and stats["HandshakeFailureReasons"]["CERTIFICATE_VERIFY_FAILED"] >= 1
        assert curl(mesh["ports"]["ext"])[0] == 200, "the mesh's own traffic is unaffected"
    finally:
        agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_l7_intentions_and_request_lines_for_an_http_service(mesh: dict[str, Any]) -> None:
    """service-defaults Protocol http for outside services: the gateway decides each request by the L7
    intentions (403 for a denied path, nothing reaches the outside service) and writes a line per request
    naming the deciding intention — the sidecar's shared L7 code; TLS origination still applies (exts)."""
    agent, gw, ports, backends = mesh["agent"], mesh["gw"], mesh["ports"], mesh["backends"]
    log_path = Path(gw.log_path).parent / "l7-access.log"
    for name in ("ext", "exts", "extnone"):
        assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": name, "Protocol": "http"})[0] == 200
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-intentions", "Name": "ext", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/secret"}},
                                        {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]})[0] == 200

    def lines() -> list[dict[str, Any]]:
        text = log_path.read_text() if log_path.exists() else ""
        return [x for x in map(json.loads, text.splitlines())
                if x.get("upstream_service") in ("ext", "exts", "extnone") and "downstream_peer_uri_san" in x]

    try:
        wait_for(lambda: curl(ports["ext"], "/secret/x")[0] == 403, 10, message="the L7 intention at the gateway")
        hits = backends.hits.get("ext", 0)
        status, body = curl(ports["ext"], "/secret/y")
        assert status == 403 and "RBAC: access denied" in str(body)
        assert backends.hits.get("ext", 0) == hits, "a denied request never reaches the outside service"
        status, body = curl(ports["ext"], "/public")
        assert status == 200 and body["backend"] == "ext" and body["path"] == "/public"
        assert body["headers"]["x-forwarded-client-cert"].endswith("/svc/web"), "the caller, as a sidecar says it"
        status, body = curl(ports["exts"], "/over-tls")
        assert status == 200 and body["backend"] == "exts", "http with TLS origination"
        assert curl(ports["extnone"], "/nobody")[0] == 503, "no passing instance: 503 at once"
        wait_for(lambda: {x["path"] for x in lines()} >= {"/secret/y", "/public", "/over-tls", "/nobody"}, 5,
                 message="a line per request at the gateway")
        assert {x["response_flags"] for x in lines() if x["path"] == "/nobody"} == {"UH"}
        denied = next(x for x in lines() if x["path"] == "/secret/y")
        assert denied["response_code"] == 403 and denied["upstream_cluster"] == "ext.default.default.dc1"
        assert denied["response_code_details"] == "rbac_access_denied_matched_policy[none]"
        assert denied["intention"].startswith("Matched L7 intention: web => ext") and "permission 0: deny" in \
            denied["intention"]
        ok = next(x for x in lines() if x["path"] == "/public")
        assert ok["response_code"] == 200 and ok["method"] == "GET" and ok["protocol"] == "HTTP/1.1"
        assert ok["upstream_host"] == f"127.0.0.1:{mesh['outside']['ext']}"
        assert ok["downstream_peer_uri_san"].endswith("/svc/web") and "intention" not in ok
        stats = gw.admin("/stats")["Services"]["ext"]
        assert stats["Protocol"] == "http" and stats["HTTP"]["web"]["Requests"] >= 2
        assert "GET /secret/y: Matched L7 intention" in gw.log()
    finally:
        agent.request("DELETE", "/v1/config/service-intentions/ext")
        agent.request("DELETE", "/v1/config/proxy-defaults/global")
        for name in ("ext", "exts", "extnone"):
            agent.request("DELETE", f"/v1/config/service-defaults/{name}")
    wait_for(lambda: gw.admin("/stats")["Services"]["ext"]["Protocol"] == "tcp", 5, message="back to L4")


def test_l7_intentions_per_grpc_method_for_a_grpc_service(mesh: dict[str, Any]) -> None:
    """Protocol grpc for an outside gRPC server: the gateway relays HTTP/2 streams with the sidecar's inbound
    HTTP/2 front, deciding each call by the L7 intentions (PERMISSION_DENIED for a method not allowed),
    timing calls out by the linked service's resolver RequestTimeout (DEADLINE_EXCEEDED) and writing a line
    per call."""
    import grpc

    agent, gw, ports = mesh["agent"], mesh["gw"], mesh["ports"]
    log_path = Path(gw.log_path).parent / "grpc-access.log"
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "extg", "Protocol": "grpc"})[0] == 200
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-intentions", "Name": "extg", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/demo.Echo/Say"}}]}]})[0] == 200

    def call(ch: grpc.Channel, method: str, request: bytes = b"hi") -> tuple[grpc.StatusCode, Any]:
        try:
            return grpc.StatusCode.OK, ch.unary_unary(f"/demo.Echo/{method}")(request, timeout=5)
        except grpc.RpcError as e:
            return e.code(), e.details()

    try:
        wait_for(lambda: gw.admin("/stats")["Services"]["extg"]["Protocol"] == "grpc", 5, message="grpc at the gateway")
        with grpc.insecure_channel(f"127.0.0.1:{ports['extg']}") as ch:
            wait_for(lambda: call(ch, "Admin")[0] == grpc.StatusCode.PERMISSION_DENIED, 10,
                     message="the L7 intention per gRPC method at the gateway")
            assert call(ch, "Say") == (grpc.StatusCode.OK, b"outside:hi")
            # the caller's router gives the call 5s, the resolver 300ms: the gateway times it out (the
            # resolver's timeout is the gateway's; without a route's own the caller's sidecar would use it too,
            # so the router is written first: no state the caller sees has the resolver without it)
            assert agent.put("/v1/config", {"Kind": "service-router", "Name": "extg", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/demo.Echo/"}}, "Destination": {"RequestTimeout": "5s"}}]})[0] == 200
            assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extg",
                                            "RequestTimeout": "300ms"})[0] == 200
            wait_for(lambda: gw.admin("/stats")["Services"]["extg"].get("RequestTimeout") == 0.3, 5,
                     message="the resolver's RequestTimeout at the gateway")
            started = time.monotonic()
            assert call(ch, "Say", b"sleep:3000") == (grpc.StatusCode.DEADLINE_EXCEEDED, "upstream request timeout")
            assert time.monotonic() - started < 2.0, "the gateway's 300ms, not the caller's default 15s"

        def lines() -> list[dict[str, Any]]:
            text = log_path.read_text() if log_path.exists() else ""
            return [x for x in map(json.loads, text.splitlines())
                    if x.get("upstream_service") == "extg" and "downstream_peer_uri_san" in x]

        wait_for(lambda: {x["path"] for x in lines()} >= {"/demo.Echo/Admin", "/demo.Echo/Say"}, 5,
                 message="a line per call at the gateway")
        admin = next(x for x in lines() if x["path"] == "/demo.Echo/Admin")
        assert admin["intention"].startswith("Matched L7 intention: web => extg")
        say = next(x for x in lines() if x["path"] == "/demo.Echo/Say" and x.get("response_code") == 200)
        assert say["upstream_host"] == f"127.0.0.1:{mesh['outside']['extg']}" and say.get("grpc_status") == 0
        wait_for(lambda: any(x["path"] == "/demo.Echo/Say" and x["response_flags"] == "UT" and
                             x.get("grpc_status") == 4 for x in lines()), 5, message="the timeout's line at the gateway")
    finally:
        agent.request("DELETE", "/v1/config/service-resolver/extg")
        agent.request("DELETE", "/v1/config/service-router/extg")
        agent.request("DELETE", "/v1/config/service-intentions/extg")
        agent.request("DELETE", "/v1/config/proxy-defaults/global")
        agent.request("DELETE", "/v1/config/service-defaults/extg")


def test_resolver_request_timeout_applies_at_the_gateway(mesh: dict[str, Any]) -> None:
    """Consul's gateway puts the linked service's service-resolver RequestTimeout on its route: the caller's
    router gives /slow 5s, the resolver 300ms — the gateway answers 504 after ~300ms (routers are the
    caller's, the resolver's timeout the gateway's)."""
    agent, gw, port = mesh["agent"], mesh["gw"], mesh["ports"]["ext"]
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "ext", "Protocol": "http"})[0] == 200
    # the router first: no state the caller's sidecar sees has the resolver's 300ms without the route's 5s
    assert agent.put("/v1/config", {"Kind": "service-router", "Name": "ext", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/slow"}}, "Destination": {"RequestTimeout": "5s"}}]})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "ext", "RequestTimeout": "300ms"})[0] == 200
    try:
        wait_for(lambda: gw.admin("/stats")["Services"]["ext"]["Protocol"] == "http", 5, message="http at the gateway")
        wait_for(lambda: curl(port, "/fast")[0] == 200, 5, message="ext through the gateway")
        wait_for(lambda: gw.admin("/stats")["Services"]["ext"].get("RequestTimeout") == 0.3, 5,
                 message="the resolver's RequestTimeout at the gateway")
        started = time.monotonic()  # a POST: never retried by the caller's sidecar
        out = subprocess.run(["curl", "-s", "-m", "10", "-X", "POST", "-w", "\n%{http_code}",
                              f"http://127.0.0.1:{port}/slow?ms=3000"], capture_output=True, text=True, timeout=15)
        took = time.monotonic() - started
        body, _, status = out.stdout.rpartition("\n")
        assert status == "504" and "upstream request timeout" in body, out.stdout
        assert 0.25 < took < 2.0, f"answered after {took:.2f}s"
    finally:
        agent.request("DELETE", "/v1/config/service-resolver/ext")
        agent.request("DELETE", "/v1/config/service-router/ext")
        agent.request("DELETE", "/v1/config/service-defaults/ext")


def test_resolver_timeouts_read_as_consul_writes_them() -> None:
    from proconsul.connect.proxy.gateway_resolver import DIAL_TIMEOUT, REQUEST_TIMEOUT, parse_resolver

    def resolver_timeouts(entry: dict[str, Any] | None) -> tuple[float, float]:
        r = parse_resolver(entry)
        return r.connect_timeout, r.request_timeout

    assert resolver_timeouts(None) == (DIAL_TIMEOUT, REQUEST_TIMEOUT)
    assert resolver_timeouts({"ConnectTimeout": "2s", "RequestTimeout": "1m30s"}) == (2.0, 90.0)
    assert resolver_timeouts({"ConnectTimeout": 250_000_000}) == (0.25, REQUEST_TIMEOUT), "Go nanoseconds"
    assert resolver_timeouts({"RequestTimeout": "0s"}) == (DIAL_TIMEOUT, REQUEST_TIMEOUT), "unset"


@pytest.fixture
def versions(mesh: dict[str, Any]) -> Any:
    """extv outside the mesh: two instances (Service.Meta.version v1 and v2, on two nodes without an agent), an
    http service linked to the gateway; the entry, the nodes and extv's config entries are put back after."""
    agent, backends = mesh["agent"], mesh["backends"]
    entry = agent.get("/v1/config/terminating-gateway/tgw")[1]
    ports = {}
    for version in ("v1", "v2"):
        ports[version] = backends.http(f"extv-{version}")
        assert agent.put("/v1/catalog/register", {
            "Node": f"outside-extv-{version}", "Address": "127.0.0.1", "NodeMeta": {"external-node": "true"},
            "Service": {"Service": "extv", "Port": ports[version], "Meta": {"version": version}}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "extv", "Protocol": "http"})[0] == 200
    assert agent.put("/v1/config", {"Kind": "terminating-gateway", "Name": "tgw", "Services": [
        *entry["Services"], {"Name": "extv"}]})[0] == 200
    try:
        yield ports
    finally:
        for kind in ("service-router", "service-splitter", "service-resolver", "service-defaults"):
            agent.request("DELETE", f"/v1/config/{kind}/extv")
        for version in ("v1", "v2"):
            agent.put("/v1/catalog/deregister", {"Node": f"outside-extv-{version}"})
        restored = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")}
        assert agent.put("/v1/config", restored)[0] == 200


def backend_of(port: int, path: str = "/", headers: dict[str, str] | None = None) -> str:
    status, body = curl(port, path, headers)
    return body["backend"] if status == 200 and isinstance(body, dict) else f"status {status}: {body}"


def answered_by(port: int, want: str, path: str = "/", headers: dict[str, str] | None = None) -> bool:
    """For wait_for: whether `want` answered; else raises what did (wait_for reports the last one)."""
    got = backend_of(port, path, headers)
    if got != want:
        raise AssertionError(f"{path} answered by {got}")
    return True


def host_seen(port: int) -> str:
    status, body = curl(port, "/host")
    return body["headers"].get("host", "") if status == 200 and isinstance(body, dict) else f"status {status}"


def test_resolver_subsets_at_the_gateway_and_the_callers_router(mesh: dict[str, Any], versions: Any) -> None:
    """Consul's terminating gateway serves a subset of a linked service's resolver when the caller's SNI names it:
    the caller's router sends `x-version: v2` to subset v2 and the rest to the DefaultSubset v1; the caller dials
    the gateway (its instances are not filtered by the subset's filter) with the subset's SNI, and the gateway
    chooses only the outside instances matching the subset's filter. A splitter to a subset works alike; a
    resolver change applies live at the gateway."""
    agent, gw, port = mesh["agent"], mesh["gw"], mesh["ports"]["extv"]
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extv", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-router", "Name": "extv", "Routes": [
        {"Match": {"HTTP": {"Header": [{"Name": "x-version", "Exact": "v2"}]}},
         "Destination": {"ServiceSubset": "v2"}}]})[0] == 200
    wait_for(lambda: gw.admin("/stats")["Services"].get("extv", {}).get("Subsets") == {"v1": 1, "v2": 1}, 10,
             message="extv's subsets at the gateway")
    wait_for(lambda: answered_by(port, "extv-v2", "/", {"x-version": "v2"}), 10, message="the v2 route")
    assert {backend_of(port, "/a") for _ in range(6)} == {"extv-v1"}, "the default subset only"
    assert {backend_of(port, "/b", {"x-version": "v2"}) for _ in range(6)} == {"extv-v2"}, "subset v2 only"
    stats = gw.admin("/stats")["Services"]["extv"]
    assert stats["Instances"] == 2 and stats["DefaultSubset"] == "v1" and stats["LoadBalancer"]["Policy"] == \
        "round_robin"
    pid = gw.proc.pid
    # the caller's splitter (behind the router's default route) sends everything else to subset v2
    assert agent.put("/v1/config", {"Kind": "service-splitter", "Name": "extv", "Splits": [
        {"Weight": 100, "ServiceSubset": "v2"}]})[0] == 200
    wait_for(lambda: answered_by(port, "extv-v2", "/c"), 10, message="the split to v2")
    assert {backend_of(port, "/d") for _ in range(4)} == {"extv-v2"}
    agent.request("DELETE", "/v1/config/service-splitter/extv")
    wait_for(lambda: answered_by(port, "extv-v1", "/e"), 10, message="back to the default subset")
    # the gateway follows the resolver live: subset v1 now means version v2 (the caller still sends v1's SNI)
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extv", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v2"}, "v2": {"Filter": "Service.Meta.version == v2"}}})[0] == 200
    wait_for(lambda: answered_by(port, "extv-v2", "/f"), 10, message="subset v1's new filter at the gateway")
    assert {backend_of(port, "/g") for _ in range(4)} == {"extv-v2"} and gw.proc.pid == pid


def test_an_sni_naming_a_subset_that_does_not_exist_is_refused(mesh: dict[str, Any], versions: Any) -> None:
    agent, gw = mesh["agent"], mesh["gw"]
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extv", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}}})[0] == 200
    wait_for(lambda: gw.admin("/stats")["Services"].get("extv", {}).get("Subsets") == {"v1": 1}, 10,
             message="extv's subset at the gateway")
    gw_port = int(gw.args[gw.args.index("-address") + 1].rsplit(":", 1)[1])
    td = agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    log_path = Path(gw.log_path).parent / "unknown-subset-access.log"
    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(log_path)}})[0] == 200
    try:
        wait_for(lambda: f"access logs: file {log_path}" in gw.log(), 10,
                 message="the gateway's access log on")
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw_port}", "-servername",
                              f"v9.extv.default.dc1.internal.{td}"], input="", capture_output=True, text=True,
                             timeout=10)
        assert "unrecognized name" in out.stdout + out.stderr, out.stdout + out.stderr
        wait_for(lambda: gw.admin("/stats")["Services"]["extv"]["UnknownSubset"] >= 1, 5, message="counted")
        assert "refused connection from unknown to extv: server name" in gw.log()
        assert "its service-resolver has no subset named 'v9'" in gw.log()

        def line() -> dict[str, Any]:
            text = log_path.read_text() if log_path.exists() else ""
            return next(x for x in map(json.loads, text.splitlines())
                        if x.get("response_code_details") == "downstream_tls_handshake_failed")

        got = wait_for(line, 5, message="the refused handshake's access-log line")
        assert (got["upstream_service"], got["upstream_cluster"], got["response_flags"],
                got["downstream_transport_failure_reason"]) == \
            ("extv", "v9.extv.default.default.dc1", "NR", "UNRECOGNIZED_NAME"), got
    finally:
        agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_load_balancer_hash_policy_at_the_gateway(mesh: dict[str, Any], versions: Any) -> None:
    """The resolver's LoadBalancer applies when the gateway picks an outside instance for each request: maglev
    on the x-user header sends every request of one user to the same instance, and the users over both."""
    agent, gw, port = mesh["agent"], mesh["gw"], mesh["ports"]["extv"]
    for policy in ("maglev", "ring_hash"):
        assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extv", "LoadBalancer": {
            "Policy": policy, "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}})[0] == 200
        wait_for(lambda p=policy: gw.admin("/stats")["Services"].get("extv", {}).get("LoadBalancer", {})
                 .get("Policy") == p, 10, message=f"{policy} at the gateway")
        wait_for(lambda: backend_of(port).startswith("extv-"), 10, message="extv through the gateway")
        seen = {}
        for user in (f"user-{i}" for i in range(24)):
            answers = {backend_of(port, "/", {"x-user": user}) for _ in range(2)}
            assert len(answers) == 1, f"{policy}: {user} reached {answers}"
            seen[user] = answers.pop()
        assert set(seen.values()) == {"extv-v1", "extv-v2"}, f"{policy}: every user on one instance: {seen}"
        assert gw.admin("/stats")["Services"]["extv"]["LoadBalancer"]["HashPolicies"][0]["FieldValue"] == "x-user"


def test_a_hostname_address_gets_its_host(mesh: dict[str, Any], versions: Any) -> None:
    """An http linked service whose outside instance is registered by hostname: the gateway sets Host to that
    hostname (Envoy's auto_host_rewrite on Consul's LOGICAL_DNS cluster); an IP address keeps the caller's, and
    so does a hostname once the entry says DisableAutoHostRewrite."""
    agent, backends, ports = mesh["agent"], mesh["backends"], mesh["ports"]
    entry = agent.get("/v1/config/terminating-gateway/tgw")[1]
    assert agent.put("/v1/catalog/register", {
        "Node": "outside-exth", "Address": "localhost", "NodeMeta": {"external-node": "true"},
        "Service": {"Service": "exth", "Port": backends.http("exth")}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "exth", "Protocol": "http"})[0] == 200
    assert agent.put("/v1/config", {"Kind": "terminating-gateway", "Name": "tgw", "Services": [
        *entry["Services"], {"Name": "exth"}]})[0] == 200
    try:
        wait_for(lambda: curl(ports["exth"])[0] == 200, 10, message="exth through the gateway")
        status, body = curl(ports["exth"], "/named")
        assert status == 200 and body["backend"] == "exth" and body["headers"]["host"] == "localhost"
        status, body = curl(ports["extv"], "/by-ip")
        assert status == 200 and body["headers"]["host"] == f"127.0.0.1:{ports['extv']}", "an IP: the caller's Host"
        assert agent.put("/v1/config", {"Kind": "terminating-gateway", "Name": "tgw", "Services": [
            *entry["Services"], {"Name": "exth", "DisableAutoHostRewrite": True}]})[0] == 200  # Consul 1.19's switch
        wait_for(lambda: host_seen(ports["exth"]) == f"127.0.0.1:{ports['exth']}", 10,
                 message="the caller's Host kept with DisableAutoHostRewrite")
    finally:
        agent.put("/v1/catalog/deregister", {"Node": "outside-exth"})
        agent.request("DELETE", "/v1/config/service-defaults/exth")


def test_grpc_streams_are_balanced_one_by_one_within_a_subset(mesh: dict[str, Any]) -> None:
    """A grpc linked service: each call (an HTTP/2 stream) is placed by the resolver's LoadBalancer — maglev on
    the x-user metadata — so one caller connection's calls spread over the instances of the subset the SNI
    names (the caller's DefaultSubset), each user's on one instance; an instance of another subset never."""
    import grpc

    agent, gw, port = mesh["agent"], mesh["gw"], mesh["ports"]["extgv"]
    entry = agent.get("/v1/config/terminating-gateway/tgw")[1]
    for name, version in (("g1", "blue"), ("g2", "blue"), ("g3", "green")):
        assert agent.put("/v1/catalog/register", {
            "Node": f"outside-extgv-{name}", "Address": "127.0.0.1", "NodeMeta": {"external-node": "true"},
            "Service": {"Service": "extgv", "Port": grpc_server(mesh["servers"], name),
                        "Meta": {"version": version}}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "extgv", "Protocol": "grpc"})[0] == 200
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extgv", "DefaultSubset": "blue",
                                    "Subsets": {"blue": {"Filter": "Service.Meta.version == blue"},
                                                "green": {"Filter": "Service.Meta.version == green"}},
                                    "LoadBalancer": {"Policy": "maglev", "HashPolicies": [
                                        {"Field": "header", "FieldValue": "x-user"}]}})[0] == 200
    assert agent.put("/v1/config", {"Kind": "terminating-gateway", "Name": "tgw", "Services": [
        *entry["Services"], {"Name": "extgv"}]})[0] == 200

    def call(ch: grpc.Channel, user: str) -> str:
        try:
            return ch.unary_unary("/demo.Echo/Say")(b"hi", timeout=5, metadata=(("x-user", user),)).decode()
        except grpc.RpcError as e:
            return f"{e.code()}: {e.details()}"

    try:
        wait_for(lambda: gw.admin("/stats")["Services"].get("extgv", {}).get("Subsets") == {"blue": 2, "green": 1},
                 10, message="extgv's subsets at the gateway")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            wait_for(lambda: call(ch, "probe").endswith(":hi"), 10, message="extgv through the gateway")
            seen = {}
            for user in (f"user-{i}" for i in range(24)):
                answers = {call(ch, user) for _ in range(2)}
                assert len(answers) == 1, f"{user} reached {answers}"
                seen[user] = answers.pop()
        assert set(seen.values()) == {"g1:hi", "g2:hi"}, f"both blue instances, never green: {seen}"
    finally:
        for name in ("g1", "g2", "g3"):
            agent.put("/v1/catalog/deregister", {"Node": f"outside-extgv-{name}"})
        for kind in ("service-resolver", "service-defaults"):
            agent.request("DELETE", f"/v1/config/{kind}/extgv")
        restored = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")}
        assert agent.put("/v1/config", restored)[0] == 200


def test_tcp_service_subset_and_source_ip_hash(mesh: dict[str, Any], versions: Any) -> None:
    """At L4 (a tcp linked service) the subset the SNI names (here the caller's DefaultSubset) and the
    LoadBalancer apply per connection: a SourceIP hash sends every connection of the caller to one instance."""
    agent, gw, port = mesh["agent"], mesh["gw"], mesh["ports"]["extv"]
    agent.request("DELETE", "/v1/config/service-defaults/extv")
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extv", "DefaultSubset": "v2", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})[0] == 200
    wait_for(lambda: gw.admin("/stats")["Services"].get("extv", {}).get("Protocol") == "tcp", 10, message="L4")
    wait_for(lambda: answered_by(port, "extv-v2", "/a"), 10, message="the default subset over L4")
    assert {backend_of(port, "/b") for _ in range(6)} == {"extv-v2"}, "a connection each, subset v2 only"
    assert agent.put("/v1/config", {"Kind": "service-resolver", "Name": "extv", "LoadBalancer": {
        "Policy": "maglev", "HashPolicies": [{"SourceIP": True}]}})[0] == 200
    wait_for(lambda: gw.admin("/stats")["Services"]["extv"]["LoadBalancer"]["Policy"] == "maglev", 10,
             message="maglev at the gateway")
    wait_for(lambda: backend_of(port, "/c").startswith("extv-"), 10, message="the whole service over L4")
    assert len({backend_of(port, "/d") for _ in range(8)}) == 1, "one caller address: one instance"
