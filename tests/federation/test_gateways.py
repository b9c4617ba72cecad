"""Mesh gateways: a dc1 sidecar reaches a dc2 service through both datacenters' gateways, with the
same mTLS end to end (the gateways see only ciphertext), intentions checked in dc2, dead gateways skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, ok, wait_for
from support_federation import Gateway, start_two, two_datacenters
from support_mesh import Backends, ProxyProcess, http_get, wait_passing

pytestmark = pytest.mark.xdist_group("federation")


class TwoDCs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.a, self.b = two_datacenters(tmp)
        self.backends = Backends()
        self.procs: list[ProxyProcess | Gateway] = []
        self.local_up, self.remote_up, self.default_up = free_port(), free_port(), free_port()

    def start(self) -> None:
        a, b = self.a, self.b
        start_two(a, b)
        assert b.put("/v1/agent/service/register", {"Name": "db", "Port": self.backends.http("db"),
                                                     "Connect": {"SidecarService": {}}})[0] == 200
        upstreams = [{"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": self.local_up,
                      "MeshGateway": {"Mode": "local"}},
                     {"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": self.remote_up,
                      "MeshGateway": {"Mode": "remote"}},
                     {"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": self.default_up}]
        assert a.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global",
                                    "MeshGateway": {"Mode": "local"}})[0] == 200
        assert a.put("/v1/agent/service/register", {"Name": "web", "Port": free_port(), "Connect": {
            "SidecarService": {"Proxy": {"Upstreams": upstreams}}}})[0] == 200
        self.gw1 = Gateway(a, self.tmp, "gw-dc1").start()
        self.gw2 = Gateway(b, self.tmp, "gw-dc2").start()
        self.procs += [self.gw1, self.gw2, ProxyProcess(b, self.tmp, sidecar_for="db").start(),
                       ProxyProcess(a, self.tmp, sidecar_for="web").start()]
        wait_passing(b, "db")
        wait_for(lambda: b.get("/v1/health/service/mesh-gateway?passing")[1], 15, message="dc2's gateway passing")
        wait_for(lambda: a.get("/v1/health/service/mesh-gateway?passing")[1], 15, message="dc1's gateway passing")

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.b.stop()
        self.a.stop()
        self.backends.close()


@pytest.fixture(scope="module")
def dcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoDCs]:
    d = TwoDCs(tmp_path_factory.mktemp("gateways"))
    try:
        d.start()
        yield d
    finally:
        d.stop()


def test_sidecar_to_another_datacenter_through_two_gateways_never_in_plaintext(dcs: TwoDCs) -> None:
    marker = "/secret-path-4c1d9e"
    status, body = wait_for(lambda: http_get(dcs.local_up, marker), 15, message="db in dc2 through the gateways")
    assert status == 200 and body["backend"] == "db" and body["path"] == marker
    for gw in (dcs.gw1, dcs.gw2):
        seen = gw.capture.read_bytes()
        assert seen[:1] == b"\x16"  # the first thing each gateway forwarded: a TLS handshake record
        assert marker.encode() not in seen and b"secret-path" not in seen and b'"backend"' not in seen
    assert dcs.gw1.capture.stat().st_size > 0 and dcs.gw2.capture.stat().st_size > 0


def settled_size(path: Path) -> int:
    """The capture's size once the earlier connections' last records (TLS close_notify) have passed:
    two reads 0.3 s apart that agree."""
    sizes: list[int] = []

    def stable() -> bool:
        sizes.append(path.stat().st_size)
        return len(sizes) > 1 and sizes[-1] == sizes[-2]

    wait_for(stable, 5, interval=0.3, message="the gateway's capture to settle")
    return sizes[-1]


def test_remote_mode_goes_straight_to_the_destinations_gateway(dcs: TwoDCs) -> None:
    before = settled_size(dcs.gw1.capture)
    status, body = wait_for(lambda: http_get(dcs.remote_up, "/remote"), 30, message="db through dc2's gateway")
    assert status == 200 and body["path"] == "/remote"
    assert dcs.gw1.capture.stat().st_size == before  # dc1's gateway was not on the path


def test_proxy_defaults_mode_applies_to_upstreams_without_their_own(dcs: TwoDCs) -> None:
    before = dcs.gw1.capture.stat().st_size
    status, body = wait_for(lambda: http_get(dcs.default_up, "/by-default"), 15, message="db via proxy-defaults")
    assert status == 200 and body["path"] == "/by-default"
    assert dcs.gw1.capture.stat().st_size > before  # through dc1's gateway: proxy-defaults says local


def test_intentions_are_checked_in_the_destination_datacenter(dcs: TwoDCs) -> None:
    dcs.a.request("PUT", "/v1/connect/intentions/exact?source=web&destination=db", {"Action": "deny"})
    try:
        def refused() -> bool:
            try:
                http_get(dcs.local_up, "/after-deny", timeout=2)
            except OSError:
                return True
            return False

        wait_for(refused, 10, message="the deny (written in dc1) to be enforced by db's sidecar in dc2")
    finally:
        dcs.a.request("DELETE", "/v1/connect/intentions/exact?source=web&destination=db")
    wait_for(lambda: http_get(dcs.local_up, "/again")[0] == 200, 10, message="traffic allowed again")


def test_access_log_lines_at_both_gateways(dcs: TwoDCs) -> None:
    """proxy-defaults AccessLogs (written in dc1, replicated to dc2): each gateway writes a line per connection —
    the server name as upstream_cluster, where it sent it as upstream_host — and NR for what it cannot route."""
    import json
    import socket

    log_path = dcs.tmp / "mesh-access.log"
    defaults = {"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}
    assert dcs.a.put("/v1/config", {**defaults, "AccessLogs": {"Enabled": True, "Type": "file",
                                                               "Path": str(log_path)}})[0] == 200

    def lines() -> list[dict]:
        return [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []

    try:
        for gw in (dcs.gw1, dcs.gw2):
            wait_for(lambda gw=gw: "access logs: file" in gw.log_path.read_text(), 15,
                     message="access logs on in both gateways")
        assert http_get(dcs.local_up, "/logged")[0] == 200
        db_sidecar = dcs.b.get("/v1/health/connect/db?passing")[1][0]["Service"]["Port"]
        hops = {f"127.0.0.1:{dcs.gw2.port}": "dc1's gateway to dc2's", f"127.0.0.1:{db_sidecar}": "dc2's to db"}
        for host, hop in hops.items():
            wait_for(lambda host=host: [x for x in lines() if x.get("upstream_host") == host
                                        and x.get("upstream_cluster", "").startswith("db.default.dc2.internal.")
                                        and x["upstream_service"] == "db" and x["response_flags"] == "-"
                                        and x["bytes_sent"] > 0 and x["bytes_received"] > 0], 10,
                     message=f"the line of {hop}")
        with socket.create_connection(("127.0.0.1", dcs.gw1.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert s.recv(10) == b""
        wait_for(lambda: [x for x in lines() if x["response_flags"] == "NR" and x["bytes_received"] == 18], 5,
                 message="the line of a connection that was not TLS (NR)")
    finally:
        assert dcs.a.put("/v1/config", defaults)[0] == 200


def test_a_dead_gateway_is_skipped(dcs: TwoDCs) -> None:
    dead = free_port()  # nothing listens there
    assert dcs.b.put("/v1/agent/service/register", {
        "ID": "mesh-gateway-dead", "Name": "mesh-gateway", "Kind": "mesh-gateway", "Address": "127.0.0.1",
        "Port": dead, "TaggedAddresses": {"wan": {"Address": "127.0.0.1", "Port": dead}}})[0] == 200
    wait_for(lambda: len(dcs.a.get("/v1/health/service/mesh-gateway?dc=dc2&passing")[1]) == 2, 10,
             message="dc2 to list two gateways")
    for i in range(10):
        assert http_get(dcs.local_up, f"/n{i}")[0] == 200


def test_the_link_view_shows_each_datacenters_gateways_as_probed(dcs: TwoDCs) -> None:
    """Beyond Consul: every server probes each datacenter's mesh gateways (wan address elsewhere, lan here)."""
    dead = free_port()
    assert dcs.b.put("/v1/agent/service/register", {
        "ID": "mesh-gateway-probe-dead", "Name": "mesh-gateway", "Kind": "mesh-gateway", "Address": "127.0.0.1",
        "Port": dead, "TaggedAddresses": {"wan": {"Address": "127.0.0.1", "Port": dead}}})[0] == 200

    def probed() -> dict:
        gws = dcs.a.get("/v1/operator/federation")[1]["Extra"]["MeshGateways"]
        ports = {g["Port"]: g for g in gws.get("dc2", {}).get("Gateways", [])}
        return gws if dead in ports and dcs.gw2.port in ports else {}

    gws = wait_for(probed, 20, message="dc1's server to probe dc2's gateways, the dead one included")
    by_port = {g["Port"]: g for g in gws["dc2"]["Gateways"]}
    assert by_port[dcs.gw2.port]["OK"] and by_port[dcs.gw2.port]["ConnectMillis"] is not None
    assert not by_port[dead]["OK"] and by_port[dead]["Error"]
    assert gws["dc2"]["Reachable"] and gws["dc1"]["Reachable"]
    assert [g["Port"] for g in gws["dc1"]["Gateways"]] == [dcs.gw1.port]
    row = next(line for line in ok(dcs.a, "operator", "federation").splitlines() if "dc2" in line)
    assert "/3" in row or "/2" in row  # answering/listed gateways in the table


def test_each_gateways_admin_listener_counts_its_traffic(dcs: TwoDCs, tmp_path: Path) -> None:
    """`-admin-bind`: `/ready`, `/stats` (JSON) and `/metrics` (Prometheus text that promtool accepts) — dc1's
    gateway sends to dc2's (remote), dc2's to db's sidecar (local); bytes by destination datacenter; a
    connection that names nothing routable is counted as NR."""
    import json
    import shutil
    import socket
    import subprocess

    assert dcs.gw1.admin("/ready") == (200, "ready\n")

    def stats(gw: Gateway) -> dict:
        return json.loads(gw.admin("/stats")[1])

    before1, before2 = stats(dcs.gw1), stats(dcs.gw2)
    for i in range(3):
        assert http_get(dcs.local_up, f"/counted-{i}")[0] == 200

    def dc2_counted() -> dict:
        s1, s2 = stats(dcs.gw1), stats(dcs.gw2)
        grew = (s1["Datacenters"].get("dc2", {}).get("Connections", 0)
                > before1["Datacenters"].get("dc2", {}).get("Connections", 0)
                and s2["RoutedLocal"] > before2["RoutedLocal"])
        return s1 if grew else {}

    s1 = wait_for(dc2_counted, 10, message="both gateways to count the connections (counted when they close)")
    assert s1["RoutedRemote"] >= 1 and s1["Datacenters"]["dc2"]["ReceivedBytes"] > 0
    assert s1["Datacenters"]["dc2"]["SentBytes"] > 0 and s1["Connections"] >= s1["Open"] >= 0
    with socket.create_connection(("127.0.0.1", dcs.gw2.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(10) == b""
    wait_for(lambda: stats(dcs.gw2)["NotRouted"].get("NR", 0) > before2["NotRouted"].get("NR", 0), 5,
             message="the plain-text connection counted as NR")
    status, text = dcs.gw1.admin("/metrics")
    assert status == 200 and 'proconsul_mesh_gateway_received_bytes_total{gateway="mesh-gateway",' \
                             'destination_datacenter="dc2"}' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian prometheus; make test installs it as root)")
    (tmp_path / "metrics.txt").write_text(text)
    with open(tmp_path / "metrics.txt", "rb") as f:
        checked = subprocess.run(["promtool", "check", "metrics"], stdin=f, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
