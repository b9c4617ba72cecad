"""Golden metrics per topology link, end to end: a real dev agent, two real sidecar proxies that find their
admin port in their registration (Proxy.Config.envoy_prometheus_bind_addr, no -admin-bind), real backends,
HTTP traffic web → db through the pair; the agent reads the proxies' /stats and the topology answer, the
service-metrics watch and the browser show the rate, the success rate and p99 of the link."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import AgentProcess, free_port, one_line_error, run, wait_for
from support_mesh import Backends, ProxyProcess, http_get, sidecar_with_metrics, wait_passing

pytestmark = pytest.mark.xdist_group("ui-metrics")


class Mesh:
    """web → db over HTTP, each with a sidecar whose admin port is in its registration."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agent = AgentProcess(tmp / "agent")
        self.backends = Backends()
        self.proxies: dict[str, ProxyProcess] = {}
        self.db_up = free_port()
        self.admin: dict[str, int] = {}

    def start(self) -> None:
        self.agent.start()
        self.agent.put("/v1/config", {"Kind": "service-defaults", "Name": "db", "Protocol": "http"})
        for name, upstreams in (("db", {}), ("web", {"db": self.db_up})):
            self.proxies[name] = sidecar_with_metrics(self.agent, self.tmp, name, self.backends.http(name), upstreams)
            self.admin[name] = self.proxies[name].admin_port
        wait_passing(self.agent, "db")
        wait_for(lambda: _ok(self.db_up), 15, message="db through the pair")

    def traffic(self, n: int = 40, path: str = "/") -> None:
        for _ in range(n):
            assert http_get(self.db_up, path)[0] == 200

    def stop(self) -> None:
        for p in self.proxies.values():
            p.stop()
        self.agent.stop()
        self.backends.close()


def _ok(port: int) -> bool:
    try:
        return http_get(port, "/")[0] == 200
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("metrics"))
    try:
        m.start()
        yield m
    finally:
        m.stop()


def _link(agent: AgentProcess, service: str, side: str, name: str) -> dict[str, Any] | None:
    status, topo = agent.get(f"/v1/internal/ui/service-topology/{service}")
    assert status == 200, topo
    links = {link["Name"]: link for link in topo[side]}
    return links[name]["Metrics"]


def _live(m: dict[str, Any] | None) -> bool:
    return bool(m and m["RequestRate"] > 0 and m["SuccessRate"] is not None and m["P99Ms"])


def test_the_proxies_bind_the_admin_port_their_registration_names(mesh: Mesh) -> None:
    for name, proxy in mesh.proxies.items():
        assert proxy.admin("/stats")["ProxyID"] == f"{name}-sidecar-proxy"
        assert "-admin-bind" not in proxy.args


def test_proxy_stats_finds_a_sidecars_admin_listener_through_the_agent(mesh: Mesh) -> None:
    out = run(mesh.agent, "connect", "proxy-stats", "-sidecar-for", "web", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ProxyID"] == "web-sidecar-proxy"
    out = run(mesh.agent, "connect", "proxy-stats", "-proxy-id", "db-sidecar-proxy")
    assert out.returncode == 0, out.stderr
    assert "db-sidecar-proxy" in out.stdout
    assert "nope" in one_line_error(run(mesh.agent, "connect", "proxy-stats", "-sidecar-for", "nope"))


def test_topology_shows_rate_success_and_p99_of_web_to_db(mesh: Mesh) -> None:
    _link(mesh.agent, "web", "Upstreams", "db")  # the first sample: rates need a second one

    def measured() -> dict[str, Any] | None:
        mesh.traffic(20)
        up = _link(mesh.agent, "web", "Upstreams", "db")
        return up if _live(up) else None

    up = wait_for(measured, 20, message="web → db metrics in web's topology")
    assert up["Protocol"] == "http" and up["SuccessRate"] == 1.0 and up["Errors"] == 0
    assert 0 < up["P99Ms"] < 5000 and up["Requests"] >= 20
    # db's topology: the same link seen by db's sidecar (its inbound from web)
    wait_for(lambda: (mesh.traffic(5), _live(_link(mesh.agent, "db", "Downstreams", "web")))[1], 20,
             message="web → db metrics in db's topology")
    status, topo = mesh.agent.get("/v1/internal/ui/service-topology/web")
    assert [p["Status"] for p in topo["Metrics"]["Proxies"]] == ["ok"]
    assert topo["Metrics"]["Provider"] == "proxies"


def test_success_rate_counts_5xx(mesh: Mesh) -> None:
    mesh.backends.status["db"] = 503
    try:
        def failing() -> dict[str, Any] | None:
            for _ in range(10):
                try:
                    http_get(mesh.db_up, "/")
                except urllib.error.HTTPError:
                    pass
            m = _link(mesh.agent, "web", "Upstreams", "db")
            return m if m and m["SuccessRate"] is not None and m["SuccessRate"] < 1.0 else None

        m = wait_for(failing, 20, message="5xx lowering web → db's success rate")
        assert m["Errors"] > 0
    finally:
        mesh.backends.status["db"] = 200


def test_service_metrics_is_a_watch_over_periods(mesh: Mesh) -> None:
    status, body, headers = mesh.agent.request("GET", "/v1/internal/ui/service-metrics/web")
    assert status == 200, body
    index = int(headers["X-Consul-Index"])
    assert body["Period"] == 5.0 and "db" in body["Upstreams"] or body["Proxies"][0]["Status"] == "measuring"
    started = time.monotonic()
    status, body, headers = mesh.agent.request("GET", f"/v1/internal/ui/service-metrics/web?index={index}&wait=10s")
    waited = time.monotonic() - started
    assert status == 200 and int(headers["X-Consul-Index"]) == index + 1
    assert waited <= 6.5, f"the next period came after {waited:.1f}s"
    # an index from the past answers at once
    started = time.monotonic()
    assert mesh.agent.request("GET", f"/v1/internal/ui/service-metrics/web?index={index - 5}")[0] == 200
    assert time.monotonic() - started < 2


def test_a_service_without_sidecars_has_no_metrics_not_an_error(mesh: Mesh) -> None:
    mesh.agent.put("/v1/agent/service/register", {"Name": "plain", "Port": free_port()})
    wait_for(lambda: mesh.agent.get("/v1/catalog/service/plain")[1], 10, message="plain in the catalog")
    status, body = mesh.agent.get("/v1/internal/ui/service-metrics/plain")
    assert status == 200 and body["Proxies"] == [] and "no sidecar proxy" in body["Error"]
    assert body["Upstreams"] == {} and body["Downstreams"] == {}


def test_an_unreachable_proxy_gives_no_metrics_quickly(mesh: Mesh) -> None:
    """A sidecar whose admin listener accepts nothing (a port nobody listens on) and one that never
    answers (a socket that accepts and stays silent): no metrics for their links, fast, no error."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for name, port in (("ghost", free_port()), ("mute", silent.getsockname()[1])):
            status, body, _ = mesh.agent.request("PUT", "/v1/agent/service/register", {
                "Name": name, "Port": free_port(), "Connect": {"SidecarService": {"Proxy": {
                    "Upstreams": [{"DestinationName": "db", "LocalBindPort": free_port()}],
                    "Config": {"envoy_prometheus_bind_addr": f"127.0.0.1:{port}"}}}}})
            assert status == 200, body
            wait_for(lambda n=name: mesh.agent.get(f"/v1/catalog/connect/{n}")[1], 10, message=f"{name} in the catalog")
            started = time.monotonic()
            status, topo = mesh.agent.get(f"/v1/internal/ui/service-topology/{name}")
            took = time.monotonic() - started
            assert status == 200, topo
            assert took < 3, f"{name}: the topology took {took:.1f}s"
            assert topo["Upstreams"][0]["Name"] == "db" and topo["Upstreams"][0]["Metrics"] is None
            assert [p["Status"] for p in topo["Metrics"]["Proxies"]] == ["unreachable"]
            assert topo["Metrics"]["Proxies"][0]["Error"]
    finally:
        silent.close()


def test_a_listener_of_another_proxy_is_not_mistaken_for_this_one(mesh: Mesh) -> None:
    """Two registrations naming one admin address: the agent checks the ProxyID in /stats."""
    status, body, _ = mesh.agent.request("PUT", "/v1/agent/service/register", {
        "Name": "twin", "Port": free_port(), "Connect": {"SidecarService": {"Proxy": {
            "Config": {"envoy_prometheus_bind_addr": f"127.0.0.1:{mesh.admin['web']}"}}}}})
    assert status == 200, body
    body = wait_for(lambda: mesh.agent.get("/v1/internal/ui/service-metrics/twin")[1]["Proxies"] and
                    mesh.agent.get("/v1/internal/ui/service-metrics/twin")[1], 10, message="twin's proxy")
    (proxy,) = body["Proxies"]
    assert proxy["Status"] == "unreachable" and "web-sidecar-proxy" in proxy["Error"]


def test_a_bad_metrics_address_is_reported_per_proxy(mesh: Mesh) -> None:
    status, body, _ = mesh.agent.request("PUT", "/v1/agent/service/register", {
        "Name": "typo", "Port": free_port(), "Connect": {"SidecarService": {"Proxy": {
            "Config": {"envoy_prometheus_bind_addr": "localhost"}}}}})
    assert status == 200, body
    body = wait_for(lambda: mesh.agent.get("/v1/internal/ui/service-metrics/typo")[1]["Proxies"] and
                    mesh.agent.get("/v1/internal/ui/service-metrics/typo")[1], 10, message="typo's proxy")
    (proxy,) = body["Proxies"]
    assert proxy["Status"] == "unavailable" and "envoy_prometheus_bind_addr" in proxy["Error"]


# ---------------------------------------------------------------------- the browser
class Traffic:
    """Requests web → db in the background while a test watches the page."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh, self.stop = mesh, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.mesh.traffic(5)
            except OSError:
                pass
            self.stop.wait(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_the_topology_page_shows_the_links_numbers(mesh: Mesh, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        with Traffic(mesh):
            page.goto(mesh.agent.url + "/ui/dc1/services/web?tab=topology")
            live = page.locator("[data-link='web->db'] [data-metrics=live]")
            live.wait_for()
            page.wait_for_function("Number(document.querySelector(\"[data-link='web->db'] [data-metrics=live]\")"
                                   ".dataset.rate) > 0")
            text = live.inner_text()
            assert "req/s" in text and "ok" in text and "p99" in text and "ms" in text, text
            assert float(live.get_attribute("data-rate")) > 0 and float(live.get_attribute("data-p99")) > 0
            assert 0 < float(live.get_attribute("data-success")) <= 1
            # db's page: the same link as a downstream, read from db's sidecar
            page.goto(mesh.agent.url + "/ui/dc1/services/db?tab=topology")
            page.locator("[data-link='web->db'] [data-metrics=live]").wait_for()
    finally:
        context.close()
    assert errors == [], f"script errors in the page: {errors}"


# ---------------------------------------------------------------------- Consul's metrics proxy
class FakePrometheus:
    """A real HTTP server standing in for Prometheus' query API: records what it was asked."""

    def __init__(self) -> None:
        import asyncio

        self.seen: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def handler(request: web.Request) -> web.Response:
            self.seen.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers)})
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", handler)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_metrics_proxy_passes_allowed_prometheus_queries_through(tmp_path: Path) -> None:
    prom = FakePrometheus()
    cfg = tmp_path / "ui.json"
    cfg.write_text(json.dumps({"ui_config": {"metrics_provider": "prometheus", "metrics_proxy": {
        "base_url": f"http://127.0.0.1:{prom.port}/prom",
        "add_headers": [{"name": "X-Scope-OrgID", "value": "team-a"}]}}}))
    agent = AgentProcess(tmp_path / "agent", args=["--config-file", str(cfg)])
    agent.start()
    try:
        req = urllib.request.Request(agent.url + "/v1/internal/ui/metrics-proxy/api/v1/query?query=up",
                                     headers={"X-Consul-Token": "secret"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["status"] == "success"
        (seen,) = prom.seen
        assert seen["path"] == "/prom/api/v1/query" and seen["query"] == {"query": "up"}
        assert seen["headers"]["X-Scope-OrgID"] == "team-a" and "X-Consul-Token" not in seen["headers"]
        status, _, _ = agent.request("GET", "/v1/internal/ui/metrics-proxy/api/v1/admin/tsdb/delete_series")
        assert status == 403 and len(prom.seen) == 1
    finally:
        agent.stop()
        prom.close()


def test_metrics_proxy_is_404_when_not_configured(mesh: Mesh) -> None:
    status, body, _ = mesh.agent.request("GET", "/v1/internal/ui/metrics-proxy/api/v1/query")
    assert status == 404 and "Metrics proxy is not enabled" in str(body)
