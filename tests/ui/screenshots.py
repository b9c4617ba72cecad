"""Make the screenshots in docs/ui/: a dev agent with sample data, each page in headless Chromium.

    .venv/bin/python tests/ui/screenshots.py [--out docs/ui]

Not a test (pytest does not collect it); rerun it when a page changes and look at the pictures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from browser import chromium  # noqa: E402
from support import AgentProcess, free_port, wait_for  # noqa: E402
from support_mesh import Backends, ProxyProcess, exchange  # noqa: E402

SERVICES = [  # name, port, tags, meta, status, output
    ("web", 8080, ["v2", "canary"], {"team": "storefront", "version": "2.4.1"}, "passing", "HTTP GET http://10.0.1.7:8080/health: 200 OK"),
    ("api", 9090, ["v1"], {"team": "platform"}, "passing", "HTTP GET http://10.0.1.8:9090/health: 200 OK"),
    ("payments", 7070, ["pci"], {"team": "money"}, "warning", "p99 latency 870 ms above the 500 ms budget"),
    ("postgres", 5432, ["primary"], {"team": "data"}, "passing", "TCP connect 10.0.1.9:5432: Success"),
    ("redis", 6379, ["cache"], {}, "critical", "dial tcp 10.0.1.10:6379: connect: connection refused"),
    ("search", 9200, ["v7", "es"], {"team": "discovery"}, "passing", "cluster health: green"),
    ("auth", 8443, ["oauth"], {"team": "identity"}, "passing", "HTTP GET https://10.0.1.12:8443/ready: 200 OK"),
    ("notifications", 8181, ["email", "sms"], {}, "passing", "ok"),
]


def seed(agent: AgentProcess) -> None:
    for name, port, tags, meta, status, output in SERVICES:
        for i in range(2 if name in ("web", "api") else 1):
            sid = f"{name}-{i + 1}"
            body = {"Name": name, "ID": sid, "Port": port + i, "Tags": tags, "Meta": meta,
                    "Check": {"TTL": "1h", "Name": f"{name} health", "CheckID": f"{sid}-health"}}
            assert agent.put("/v1/agent/service/register", body)[0] == 200
            verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
            agent.put(f"/v1/agent/check/{verb}/{sid}-health?note={output.replace(' ', '%20').replace(':', '%3A')}")
    agent.put("/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    agent.put("/v1/config", {"Kind": "service-defaults", "Name": "payments", "Protocol": "http"})
    for src, dst, action, desc in (
        ("web", "api", "allow", "storefront calls the API"),
        ("api", "postgres", "allow", ""),
        ("api", "redis", "allow", "session cache"),
        ("*", "postgres", "deny", "only named services reach the database"),
        ("web", "postgres", "deny", "no shortcuts past the API"),
        ("*", "*", "deny", "default deny for the mesh"),
        ("web", "auth", "allow", ""),
        ("batch-jobs", "search", "allow", "nightly reindex (service not registered yet)"),
    ):
        agent.request("POST", "/v1/connect/intentions", {"SourceName": src, "DestinationName": dst, "Action": action,
                                                         "Description": desc})
    agent.request("POST", "/v1/connect/intentions", {
        "SourceName": "api", "DestinationName": "payments", "Description": "read-only refunds API",
        "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/refunds", "Methods": ["GET"]}},
                        {"Action": "deny", "HTTP": {"PathPrefix": "/"}}]})
    for key, value in (("config/web/settings.json", '{\n  "max_conns": 512,\n  "timeouts": {"read": "5s", "write": "10s"},\n  "features": ["search", "recommendations"]\n}\n'),
                       ("config/web/banner", "Welcome back!"), ("config/api/limits.hcl", 'limits {\n  rps   = 200\n  burst = 50\n}\n'),
                       ("config/api/flags.yaml", "checkout_v2: true\nregions:\n  - eu-west\n  - us-east\n"),
                       ("deploys/web/current", "2.4.1"), ("maintenance", "off"), ("feature-flags.json", '{"beta": false}'),
                       ("locks/leader", "api-1"), ("release-notes.md", "# 2.4.1\n- faster search\n")):
        agent.put(f"/v1/kv/{key}", raw=value.encode())


class Mesh:
    """Real sidecars and backends behind web → api → payments/postgres/redis, with traffic, so the
    topology's figures in the screenshot are measured, not drawn. redis has no running sidecar."""

    UPSTREAMS = {"web": ["api", "auth", "search"], "api": ["payments", "postgres", "redis"], "payments": [],
                 "postgres": []}

    def __init__(self, agent: AgentProcess, tmp: Path) -> None:
        self.agent, self.tmp, self.backends = agent, tmp, Backends()
        self.proxies: list[ProxyProcess] = []
        self.ports: dict[str, dict[str, int]] = {}
        self.stop = threading.Event()

    def start(self) -> None:
        apps = {"web": self.backends.http("web"), "api": self.backends.http("api"),
                "payments": self.backends.http("payments"), "postgres": self.backends.tcp_echo()}
        for name, ups in self.UPSTREAMS.items():
            admin = free_port()
            self.ports[name] = {u: free_port() for u in ups}
            assert self.agent.put("/v1/agent/service/register", {
                "Name": f"{name}-sidecar-proxy", "ID": f"{name}-sidecar-proxy", "Kind": "connect-proxy",
                "Port": free_port(), "Proxy": {
                    "DestinationServiceName": name, "DestinationServiceID": f"{name}-1", "LocalServicePort": apps[name],
                    "Config": {"envoy_prometheus_bind_addr": f"127.0.0.1:{admin}"},
                    "Upstreams": [{"DestinationName": u, "LocalBindPort": p} for u, p in self.ports[name].items()]}})[0] == 200
            self.proxies.append(ProxyProcess(self.agent, self.tmp, proxy_id=f"{name}-sidecar-proxy",
                                             registered_admin_port=admin).start())
        threading.Thread(target=self._traffic, daemon=True).start()

    def _get(self, port: int, path: str) -> None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
        except (urllib.error.HTTPError, OSError):
            pass

    def _traffic(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self._get(self.ports["web"]["api"], "/catalog")  # web → api
            self._get(self.ports["api"]["payments"], "/refunds/42" if n % 3 else "/charge")  # L7: /charge denied
            if n % 4 == 0:
                exchange(self.ports["api"]["postgres"], b"SELECT 1")
            if n % 10 == 0:
                try:
                    exchange(self.ports["api"]["redis"], b"PING", timeout=1)  # no sidecar runs: fails
                except OSError:
                    pass
            self.stop.wait(0.02)

    def close(self) -> None:
        self.stop.set()
        for p in self.proxies:
            p.stop()
        self.backends.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(HERE.parent.parent / "docs" / "ui"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp))
        agent.start()
        try:
            wait_for(lambda: agent.get("/v1/connect/ca/roots")[1]["Roots"], timeout=30, message="the CA")
            seed(agent)
            mesh = Mesh(agent, Path(tmp))
            mesh.start()
            with chromium() as browser:
                ctx = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
                page = ctx.new_page()
                page.set_default_timeout(15_000)

                def shot(name: str, path: str, ready: str, before: object = None, full: bool = False) -> None:
                    page.goto(agent.url + path)
                    page.locator(ready).first.wait_for()
                    if callable(before):
                        before()
                    page.wait_for_timeout(300)  # fonts and the last answers settle before the picture
                    page.screenshot(path=str(out / f"{name}.png"), full_page=full)
                    print("wrote", out / f"{name}.png")

                shot("services", "/ui/dc1/services", "tr[data-service=web]")
                shot("service-instances", "/ui/dc1/services/web", "[data-instance=web-1]")
                shot("service-topology", "/ui/dc1/services/api?tab=topology",
                     "[data-link='api->payments'] [data-metrics=live]")
                ixn = next(i for i in agent.get("/v1/connect/intentions")[1] if i["DestinationName"] == "payments")

                def check() -> None:
                    page.get_by_label("Check source").fill("web")
                    page.get_by_label("Check destination").fill("postgres")
                    page.get_by_role("button", name="Check", exact=True).click()
                    page.locator(".check-result").wait_for()

                shot("intentions", "/ui/dc1/intentions", "tr[data-id]", check, full=True)
                shot("intention-l7", f"/ui/dc1/intentions?edit={ixn['ID']}", "[data-permission='0']", full=True)
                shot("nodes", "/ui/dc1/nodes/dev", "text=Serf Health Status")
                shot("kv", "/ui/dc1/kv/", "[data-key]")

                def invalid() -> None:
                    page.get_by_label("Value").fill('{\n  "max_conns": 512,\n  "timeouts": {"read": "5s",}\n}\n')
                    page.get_by_text("✕ JSON").wait_for()

                shot("kv-editor", "/ui/dc1/kv/config/web/settings.json", "#kv-value", invalid)
                ctx.close()
                phone = browser.new_context(viewport={"width": 390, "height": 780}, device_scale_factor=1)
                page = phone.new_page()
                shot("phone-services", "/ui/dc1/services", "tr[data-service=web]")
                phone.close()
        finally:
            if "mesh" in locals():
                mesh.close()
            agent.stop()


if __name__ == "__main__":
    main()
