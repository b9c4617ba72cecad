"""Make the screenshots in docs/ui/: a dev agent with sample data, each page in headless Chromium.

    .venv/bin/python tests/ui/screenshots.py [--out docs/ui]

Not a test (pytest does not collect it); rerun it when a page changes and look at the pictures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from browser import chromium  # noqa: E402
from support import AgentProcess, wait_for  # noqa: E402

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
    for name, ups in (("web", ["api", "auth", "search"]), ("api", ["payments", "postgres", "redis"])):
        agent.put("/v1/agent/service/register", {
            "Name": f"{name}-sidecar-proxy", "ID": f"{name}-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
            "Proxy": {"DestinationServiceName": name, "Upstreams": [
                {"DestinationName": u, "LocalBindPort": 9100 + k} for k, u in enumerate(ups)]}})
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
                shot("service-topology", "/ui/dc1/services/api?tab=topology", "[data-link]")
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
            agent.stop()


if __name__ == "__main__":
    main()
