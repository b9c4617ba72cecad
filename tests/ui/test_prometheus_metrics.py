"""`ui_config { metrics_provider = "prometheus" }` end to end: a real Prometheus (Debian's package) scrapes two
real sidecar proxies' `/metrics`; the agent's topology answer gets web → db's figures from Prometheus'
query API, and Consul's metrics proxy passes the UI's queries through to it."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, ProxyProcess, http_get, sidecar_with_metrics, wait_passing

pytestmark = pytest.mark.xdist_group("ui-prometheus")


class PromMesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prom_port = free_port()
        cfg = tmp / "agent.json"
        cfg.write_text(json.dumps({"ui_config": {"metrics_provider": "prometheus",
                                                 "metrics_proxy": {"base_url": f"http://127.0.0.1:{self.prom_port}"}}}))
        self.agent = AgentProcess(tmp / "agent", args=["--config-file", str(cfg)])
        self.backends = Backends()
        self.proxies: dict[str, ProxyProcess] = {}
        self.db_up = free_port()
        self.prom: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.agent.start()
        self.agent.put("/v1/config", {"Kind": "service-defaults", "Name": "db", "Protocol": "http"})
        for name, upstreams in (("db", {}), ("web", {"db": self.db_up})):
            self.proxies[name] = sidecar_with_metrics(self.agent, self.tmp, name, self.backends.http(name), upstreams)
        wait_passing(self.agent, "db")
        (self.tmp / "prometheus.yml").write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "proconsul-proxies", "metrics_path": "/metrics", "static_configs": [
                {"targets": [f"127.0.0.1:{p.admin_port}" for p in self.proxies.values()]}]}]}))
        log = open(self.tmp / "prometheus.log", "wb")
        self.prom = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                                      f"--config.file={self.tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.prom_port}"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self._prom_ready, 30, interval=0.2, message="Prometheus ready")

    def _prom_ready(self) -> bool:
        assert self.prom is not None and self.prom.poll() is None, (self.tmp / "prometheus.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.prom_port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.prom is not None:
            self.prom.terminate()
            try:
                self.prom.wait(10)
            except subprocess.TimeoutExpired:
                self.prom.kill()
                self.prom.wait(5)
        for p in self.proxies.values():
            p.stop()
        self.agent.stop()
        self.backends.close()


@pytest.fixture(scope="module")
def prom_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromMesh]:
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (make test installs it when run as root)")
    m = PromMesh(tmp_path_factory.mktemp("prom"))
    try:
        m.start()
        yield m
    finally:
        m.stop()


def test_topology_reads_the_links_figures_from_prometheus(prom_mesh: PromMesh) -> None:
    def measured() -> dict[str, Any] | None:
        for _ in range(10):
            assert http_get(prom_mesh.db_up, "/")[0] == 200
        status, topo = prom_mesh.agent.get("/v1/internal/ui/service-topology/web")
        assert status == 200, topo
        assert topo["Metrics"]["Provider"] == "prometheus" and topo["Metrics"]["Error"] == "", topo["Metrics"]
        m = {link["Name"]: link for link in topo["Upstreams"]}["db"]["Metrics"]
        return m if m and m["RequestRate"] > 0 and m["P99Ms"] else None

    m = wait_for(measured, 30, interval=0.5, message="web → db's figures from Prometheus")
    assert m["Protocol"] == "http" and m["SuccessRate"] == 1.0 and m["Window"] == 60.0
    # db's side of the link, from db's proxy's series (scraped on its own schedule)

    def db_side() -> bool:
        status, body = prom_mesh.agent.get("/v1/internal/ui/service-metrics/db")
        assert status == 200 and body["Provider"] == "prometheus"
        return body["Downstreams"].get("web", {}).get("RequestRate", 0) > 0

    wait_for(db_side, 15, interval=0.5, message="web → db from db's proxy's series")


def test_the_metrics_proxy_reaches_the_real_prometheus(prom_mesh: PromMesh) -> None:
    q = urllib.request.quote('sum(proconsul_proxy_requests_total{service="web",direction="upstream"})')
    status, body, _ = prom_mesh.agent.request("GET", f"/v1/internal/ui/metrics-proxy/api/v1/query?query={q}")
    assert status == 200 and body["status"] == "success", body
    assert prom_mesh.agent.request("GET", "/v1/internal/ui/metrics-proxy/api/v1/status/config")[0] == 403


def test_prometheus_gone_means_no_figures_not_an_error(prom_mesh: PromMesh) -> None:
    assert prom_mesh.prom is not None
    prom_mesh.prom.terminate()
    prom_mesh.prom.wait(10)
    status, topo = prom_mesh.agent.get("/v1/internal/ui/service-topology/web")
    assert status == 200
    assert topo["Metrics"]["Error"].startswith("Prometheus at")
    assert all(link["Metrics"] is None for link in topo["Upstreams"])
