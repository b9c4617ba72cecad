"""The sidecar proxy end to end: real agent, real proxies, real backends, real clients (openssl included)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import AgentProcess, free_port, run, wait_for
from support_mesh import Backends, ProxyProcess, exchange, http_get, wait_passing, ws_echo

pytestmark = pytest.mark.xdist_group("proxy")


class Mesh:
    """A dev agent with db (HTTP + websockets), echo (raw TCP) and web, each with a sidecar proxy."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agent = AgentProcess(tmp / "agent")
        self.backends = Backends()
        self.proxies: dict[str, ProxyProcess] = {}
        self.db_up, self.echo_up = free_port(), free_port()

    def start(self) -> None:
        self.agent.start()
        db, echo = self.backends.http("db"), self.backends.tcp_echo()
        for name, port in (("db", db), ("echo", echo)):
            assert self.agent.put("/v1/agent/service/register",
                                  {"Name": name, "Port": port, "Connect": {"SidecarService": {}}})[0] == 200
        assert self.agent.put("/v1/agent/service/register", {
            "Name": "web", "Port": free_port(), "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                {"DestinationName": "db", "LocalBindPort": self.db_up},
                {"DestinationName": "echo", "LocalBindPort": self.echo_up,
                 "Config": {"connect_timeout_ms": 2000}}]}}}})[0] == 200
        for name in ("db", "echo", "web"):
            self.proxies[name] = ProxyProcess(self.agent, self.tmp, sidecar_for=name).start()
        wait_passing(self.agent, "db")
        wait_passing(self.agent, "echo")
        wait_for(lambda: exchange(self.echo_up, b"ping") == b"ping", 10, message="echo through the pair")

    def stop(self) -> None:
        for p in self.proxies.values():
            p.stop()
        self.agent.stop()
        self.backends.close()

    def intention(self, src: str, dst: str, action: str) -> None:
        status, body, _ = self.agent.request("PUT", f"/v1/connect/intentions/exact?source={src}&destination={dst}",
                                             {"Action": action})
        assert status == 200, body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    m = Mesh(tmp_path_factory.mktemp("mesh"))
    try:
        m.start()
        yield m
    finally:
        m.stop()


def test_sidecar_registrations_look_like_consuls(mesh: Mesh) -> None:
    services = mesh.agent.get("/v1/agent/services")[1]
    sc = services["web-sidecar-proxy"]
    assert sc["Kind"] == "connect-proxy" and sc["Service"] == "web-sidecar-proxy"
    assert mesh.agent.sidecar_min_port <= sc["Port"] <= mesh.agent.sidecar_max_port
    proxy = sc["Proxy"]
    assert (proxy["DestinationServiceName"], proxy["DestinationServiceID"], proxy["LocalServiceAddress"]) == \
        ("web", "web", "127.0.0.1")
    assert [u["DestinationName"] for u in proxy["Upstreams"]] == ["db", "echo"]
    assert "SidecarService" not in services["web"]["Connect"]
    checks = {c["Name"] for c in mesh.agent.get("/v1/agent/checks")[1].values() if c["ServiceID"] == "db-sidecar-proxy"}
    assert checks == {"Connect Sidecar Listening", "Connect Sidecar Aliasing db"}
    catalog = mesh.agent.get("/v1/catalog/connect/db")[1]
    assert [c["ServiceID"] for c in catalog] == ["db-sidecar-proxy"]
    assert catalog[0]["ServiceProxy"]["DestinationServiceName"] == "db"


def test_http_and_bulk_tcp_through_the_pair(mesh: Mesh) -> None:
    status, body = http_get(mesh.db_up, "/hello")
    assert status == 200 and (body["backend"], body["path"], body["body"]) == ("db", "/hello", 0)
    payload = bytes(range(256)) * 16384  # 4 MiB: back-pressure on both hops
    assert exchange(mesh.echo_up, payload, timeout=30) == payload


def test_websocket_through_the_pair(mesh: Mesh) -> None:
    assert ws_echo(mesh.db_up, ["msg-0", "msg-1", "msg-2"]) == ["msg-0", "msg-1", "msg-2"]


def test_deny_takes_effect_within_a_second_and_closes_open_connections(mesh: Mesh) -> None:
    open_conn = socket.create_connection(("127.0.0.1", mesh.echo_up), timeout=5)
    open_conn.sendall(b"before")
    assert open_conn.recv(100) == b"before"
    try:
        mesh.intention("web", "echo", "deny")
        written = time.monotonic()

        def refused() -> bool:
            return exchange(mesh.echo_up, b"x", timeout=2) == b""
        wait_for(refused, 5, interval=0.02, message="new connections to be refused")
        took = time.monotonic() - written
        assert took < 1.0, f"the deny took {took:.2f}s to reach the proxy"
        # Beyond Consul: the connection opened before the deny is closed too (a FIN or a reset).
        open_conn.settimeout(5)
        try:
            assert open_conn.recv(100) == b""
        except ConnectionResetError:
            pass
        wait_for(lambda: any(r["Source"] == "web" and "web => echo" in r["Reason"] and "deny" in r["Reason"]
                             for r in mesh.proxies["echo"].admin("/refusals")), 3, message="the refusal recorded")
        # Logged with the deciding intention: the refused new connection, or (when the deny reached the
        # proxy while a probe's connection was open) the open connection it closed.
        wait_for(lambda: any(f"{what} from web to echo: Matched L4 intention: web => echo" in mesh.proxies["echo"].log()
                             for what in ("refused connection", "closing open connection")), 5,
                 message="the refusal logged with its intention")
    finally:
        open_conn.close()
        mesh.intention("web", "echo", "allow")
    wait_for(lambda: exchange(mesh.echo_up, b"again", timeout=2) == b"again", 5, message="allowed again")


def _openssl(*args: str, stdin: bytes = b"", timeout: float = 15) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=timeout)


def _s_client(port: int, cert: Path, key: Path, ca: Path, payload: bytes) -> subprocess.CompletedProcess[bytes]:
    return _openssl("s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
                    "-CAfile", str(ca), "-quiet", stdin=payload)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (Debian openssl)")
def test_public_listener_with_openssl_clients(mesh: Mesh, tmp_path: Path) -> None:
    public = mesh.agent.get("/v1/agent/service/db-sidecar-proxy")[1]["Port"]
    roots = mesh.agent.get("/v1/agent/connect/ca/roots")[1]
    ca = tmp_path / "roots.pem"
    ca.write_text("\n".join(r["RootCert"] for r in roots["Roots"]))
    request = b"GET /via-openssl HTTP/1.0\r\nHost: db\r\n\r\n"

    def leaf_files(service: str) -> tuple[Path, Path]:
        leaf = mesh.agent.get(f"/v1/agent/connect/ca/leaf/{service}")[1]
        cert, key = tmp_path / f"{service}.pem", tmp_path / f"{service}-key.pem"
        cert.write_text(leaf["CertPEM"])
        key.write_text(leaf["PrivateKeyPEM"])
        return cert, key

    # 1. A certificate from a CA made by openssl, with a SPIFFE ID of our trust domain: refused in the handshake.
    foreign_key, foreign_ca = tmp_path / "foreign-ca-key.pem", tmp_path / "foreign-ca.pem"
    assert _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    str(foreign_key), "-out", str(foreign_ca), "-days", "1", "-subj", "/CN=foreign").returncode == 0
    leaf_key, leaf_csr, leaf_cert = tmp_path / "f-key.pem", tmp_path / "f.csr", tmp_path / "f.pem"
    ext = tmp_path / "ext.cnf"
    ext.write_text(f"subjectAltName=URI:spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/web\n")
    assert _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    str(leaf_key), "-out", str(leaf_csr), "-subj", "/CN=web").returncode == 0
    assert _openssl("x509", "-req", "-in", str(leaf_csr), "-CA", str(foreign_ca), "-CAkey", str(foreign_key),
                    "-CAcreateserial", "-out", str(leaf_cert), "-days", "1", "-extfile", str(ext)).returncode == 0
    res = _s_client(public, leaf_cert, leaf_key, ca, request)
    assert b"via-openssl" not in res.stdout
    assert b"alert" in res.stderr.lower() or res.returncode != 0
    wait_for(lambda: any(r["Reason"].startswith("TLS handshake failed") for r in mesh.proxies["db"].admin("/refusals")),
             5, message="the failed handshake to be recorded")
    assert "TLS handshake failed" in mesh.proxies["db"].log()

    # 2. A valid leaf of a service that an intention denies: the handshake completes, then it is closed.
    mesh.intention("evil", "db", "deny")
    cert, key = leaf_files("evil")
    res = _s_client(public, cert, key, ca, request)
    assert b"via-openssl" not in res.stdout
    assert any(r["Source"] == "evil" for r in mesh.proxies["db"].admin("/refusals"))

    # 3. An allowed identity gets through to the application.
    cert, key = leaf_files("web")
    res = _s_client(public, cert, key, ca, request)
    assert b"200 OK" in res.stdout and b"via-openssl" in res.stdout, res.stderr


def test_garbage_and_plaintext_on_the_public_port_do_not_hurt(mesh: Mesh) -> None:
    public = mesh.agent.get("/v1/agent/service/db-sidecar-proxy")[1]["Port"]
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 8, b"\x16\x03\x01\x00\x05hello"):
        with socket.create_connection(("127.0.0.1", public), timeout=5) as s:
            s.sendall(junk)
            try:
                assert b"backend" not in s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                pass
    assert mesh.proxies["db"].ready()
    assert http_get(mesh.db_up, "/after-garbage")[1]["path"] == "/after-garbage"
    refusals = [r["Reason"] for r in mesh.proxies["db"].admin("/refusals")]
    assert sum(r.startswith("TLS handshake failed") for r in refusals) >= 3, refusals


def test_metrics_and_proxy_stats(mesh: Mesh) -> None:
    http_get(mesh.db_up, "/count-me")
    metrics = mesh.proxies["db"].admin("/metrics")
    line = next(ln for ln in metrics.splitlines()
                if ln.startswith('proconsul_proxy_connections_total{service="db",direction="inbound",source="web"}'))
    assert int(line.split()[-1]) >= 1
    stats = mesh.proxies["web"].admin("/stats")
    assert stats["Upstreams"]["db"]["Connections"] >= 1 and stats["UpstreamInstances"]["db"]["Healthy"] == 1
    out = run(None, "connect", "proxy-stats", "-admin-addr", f"127.0.0.1:{mesh.proxies['web'].admin_port}")
    assert out.returncode == 0, out.stderr
    assert "db" in out.stdout and "echo" in out.stdout


def test_rotation_under_traffic_loses_nothing(mesh: Mesh) -> None:
    """A CA root rotation re-issues every leaf; connections keep working and none is lost."""
    before = mesh.proxies["db"].admin("/stats")
    errors: list[str] = []
    done = threading.Event()
    count = [0]

    def traffic() -> None:
        while not done.is_set():
            try:
                assert http_get(mesh.db_up, "/during-rotation")[0] == 200
                count[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test
                errors.append(repr(e))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        wait_for(lambda: count[0] >= 20, 10, message="traffic to flow")
        bits = 384 if mesh.agent.get("/v1/connect/ca/configuration")[1]["Config"]["PrivateKeyBits"] == 256 else 256
        assert mesh.agent.put("/v1/connect/ca/configuration",
                              {"Provider": "consul", "Config": {"PrivateKeyBits": bits}})[0] == 200

        def rotated() -> bool:
            return all(p.admin("/stats")["LeafSerial"] != before["LeafSerial"] if name == "db" else
                       len(p.admin("/stats")["RootIDs"]) == 2 for name, p in mesh.proxies.items())
        wait_for(rotated, 10, message="every proxy to pick up the new root and leaf")
        seen = count[0]
        wait_for(lambda: count[0] >= seen + 20, 10, message="traffic after the rotation")
    finally:
        done.set()
        t.join(10)
    assert errors == []


def test_client_agent_proxies(tmp_path: Path) -> None:
    """Leaves, roots and intentions reach a proxy through a client agent (forwarded and cached)."""
    from support import ServerCluster

    cluster = ServerCluster(tmp_path / "c", n=1)
    backends = Backends()
    proxies: list[ProxyProcess] = []
    client = cluster.client("c1")
    try:
        cluster.start()
        client.start()
        up = free_port()
        assert client.put("/v1/agent/service/register", {
            "Name": "db", "Port": backends.http("db-on-client"), "Connect": {"SidecarService": {}}})[0] == 200
        assert client.put("/v1/agent/service/register", {
            "Name": "web", "Port": free_port(), "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                {"DestinationName": "db", "LocalBindPort": up}]}}}})[0] == 200
        proxies += [ProxyProcess(client, tmp_path, sidecar_for=s).start() for s in ("db", "web")]
        wait_passing(client, "db", timeout=20)
        wait_for(lambda: http_get(up, "/x")[1]["backend"] == "db-on-client", 15, message="traffic via a client agent")
        # An intention written through the client reaches the proxy within a second.
        assert client.request("PUT", "/v1/connect/intentions/exact?source=web&destination=db",
                              {"Action": "deny"})[0] == 200
        wait_for(lambda: exchange(up, b"GET / HTTP/1.0\r\n\r\n", timeout=2) == b"", 3, message="deny via client")
    finally:
        for p in proxies:
            p.stop()
        client.stop()
        cluster.stop()
        backends.close()


def test_troubleshoot_names_the_first_broken_link(mesh: Mesh) -> None:
    ok = run(mesh.agent, "troubleshoot", "upstream", "web", "db")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✓ intention" in ok.stdout and "Every link from web to db is in place" in ok.stdout
    missing = run(mesh.agent, "troubleshoot", "upstream", "web", "cache")
    assert missing.returncode == 1 and "✗ upstream declared" in missing.stdout and "db, echo" in missing.stdout
    mesh.intention("web", "db", "deny")
    try:
        denied = run(mesh.agent, "troubleshoot", "upstream", "web", "db", "--format", "json")
        assert denied.returncode == 1
        last = json.loads(denied.stdout)[-1]
        assert last["Step"] == "intention" and not last["OK"] and "web => db (precedence 9, deny)" in last["Detail"]
    finally:
        mesh.intention("web", "db", "allow")


def test_new_connections_resume_tls_sessions(mesh: Mesh) -> None:
    """The second and later connections to a sidecar skip the certificate exchange (and still carry identity)."""
    before = mesh.proxies["web"].admin("/stats")["Upstreams"]["echo"]["TLSResumed"]
    inbound_before = mesh.proxies["echo"].admin("/stats")["Inbound"]["web"]["TLSResumed"]
    for i in range(5):
        assert exchange(mesh.echo_up, b"resume-%d" % i) == b"resume-%d" % i
    assert mesh.proxies["web"].admin("/stats")["Upstreams"]["echo"]["TLSResumed"] >= before + 4
    assert mesh.proxies["echo"].admin("/stats")["Inbound"]["web"]["TLSResumed"] >= inbound_before + 4


def test_registration_changes_apply_without_a_restart(mesh: Mesh) -> None:
    """Upstreams added and removed in the registration: listeners come and go within seconds, the
    proxy keeps its PID, and a connection opened before the change keeps working."""
    pid = mesh.proxies["web"].proc.pid
    web = mesh.agent.get("/v1/agent/service/web")[1]
    moved = free_port()

    def register(echo_port: int) -> None:
        assert mesh.agent.put("/v1/agent/service/register", {
            "Name": "web", "Port": web["Port"], "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                {"DestinationName": "db", "LocalBindPort": mesh.db_up},
                {"DestinationName": "echo", "LocalBindPort": echo_port,
                 "Config": {"connect_timeout_ms": 2000}}]}}}})[0] == 200

    def refused(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True

    before = socket.create_connection(("127.0.0.1", mesh.echo_up), timeout=5)
    try:
        before.sendall(b"opened-before")
        assert before.recv(100) == b"opened-before"
        register(moved)
        wait_for(lambda: exchange(moved, b"moved") == b"moved", 10, message="the new upstream listener")
        wait_for(lambda: refused(mesh.echo_up), 10, message="the removed listener to close")
        before.sendall(b"still-open")
        assert before.recv(100) == b"still-open"
        assert http_get(mesh.db_up, "/unchanged")[0] == 200
        assert mesh.proxies["web"].proc.pid == pid and mesh.proxies["web"].proc.poll() is None
        assert "proxy configuration changed: 1 upstream(s) added, 1 removed" in mesh.proxies["web"].log()
    finally:
        before.close()
        register(mesh.echo_up)
    wait_for(lambda: exchange(mesh.echo_up, b"back") == b"back", 10, message="the original upstream again")
    wait_for(lambda: refused(moved), 10, message="the moved listener to close")
