"""The agent serves the UI: redirects, content types, caching by content hash, gzip, the SPA fallback,
`--ui-content-path` / `ui_config { enabled = false }`, and the UI's bundle itself."""

from __future__ import annotations

import gzip
import re
import urllib.request
from pathlib import Path

import pytest
from support import AgentProcess, run

from proconsul.ui.assets import Bundle, UIContentError, normalize_content_path


def fetch(agent: AgentProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):  # noqa: ANN002, ANN003
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(agent.url + path, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_root_redirects_to_the_ui_as_consul_does(ui_agent: AgentProcess) -> None:
    status, _, headers = fetch(ui_agent, "/")
    assert status == 301 and headers["Location"] == "/ui/"
    status, _, headers = fetch(ui_agent, "/ui")
    assert status == 301 and headers["Location"] == "/ui/"
    assert ui_agent.get("/v1/agent/self")[1]["DebugConfig"]["UIConfig"] == {"Enabled": True, "ContentPath": "/ui/"}


def test_index_and_assets_have_types_hashes_and_gzip(ui_agent: AgentProcess) -> None:
    status, body, headers = fetch(ui_agent, "/ui/", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache" and headers["ETag"]
    html = gzip.decompress(body).decode() if headers.get("Content-Encoding") == "gzip" else body.decode()
    assert '<script type="importmap">' in html and '"preact":' in html and "{{" not in html
    urls = re.findall(r'"(/ui/assets/[^"?]+)\?v=([0-9a-f]{16})"', html)
    assert {u for u, _ in urls} >= {"/ui/assets/js/app.js", "/ui/assets/vendor/preact.mjs", "/ui/assets/js/pages/intentions.js"}
    for url, digest in urls:
        status, body, h = fetch(ui_agent, f"{url}?v={digest}", {"Accept-Encoding": "gzip"})
        want = "text/css; charset=utf-8" if url.endswith(".css") else "text/javascript; charset=utf-8"
        assert status == 200 and h["Content-Type"] == want, url
        assert h["Cache-Control"] == "public, max-age=31536000, immutable" and h["ETag"] == f'"{digest}"'
        if len(body) > 600:
            assert h.get("Content-Encoding") == "gzip", url
    # Without the hash the same file must be revalidated; with a matching ETag it is a 304.
    status, _, h = fetch(ui_agent, "/ui/assets/css/app.css")
    assert status == 200 and h["Content-Type"] == "text/css; charset=utf-8" and h["Cache-Control"] == "no-cache"
    status, body, _ = fetch(ui_agent, "/ui/assets/css/app.css", {"If-None-Match": h["ETag"]})
    assert status == 304 and body == b""


def test_app_routes_get_the_page_and_unknown_assets_404(ui_agent: AgentProcess) -> None:
    for path in ("/ui/dc1/services", "/ui/dc1/services/web", "/ui/dc1/kv/config/a%20b/", "/ui/dc1/intentions?new=1"):
        status, body, headers = fetch(ui_agent, path)
        assert status == 200 and b"importmap" in body and headers["Content-Type"].startswith("text/html"), path
    status, body, _ = fetch(ui_agent, "/ui/assets/js/nope.js")
    assert status == 404 and b"no such UI file" in body


def test_content_path_and_disabling(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a", args=["--ui-content-path", "console"])
    agent.start()
    try:
        status, _, headers = fetch(agent, "/")
        assert status == 301 and headers["Location"] == "/console/"
        status, body, _ = fetch(agent, "/console/dc1/nodes")
        assert status == 200 and b'data-base="/console/"' in body and b'"/console/assets/js/app.js"' in body
        assert fetch(agent, "/ui/")[0] == 404
    finally:
        agent.stop()
    cfg = tmp_path / "no-ui.hcl"
    cfg.write_text("ui_config {\n  enabled = false\n}\n")
    off = AgentProcess(tmp_path / "b", args=["--config-file", str(cfg)])
    off.start()
    try:
        status, body, _ = fetch(off, "/")
        assert status == 200 and b"UI disabled" in body
        assert fetch(off, "/ui/")[0] == 404
        assert off.get("/v1/internal/ui/services")[0] == 200, "the internal reads stay, as in Consul"
    finally:
        off.stop()


def test_bad_content_path_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    res = run(None, "agent", "--dev", "--http-port", "0", "--ui-content-path", "/v1/")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "content_path" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    cfg = tmp_path / "ui.hcl"
    cfg.write_text('ui_config { enabled = true\n  metrics_provider = "prometheus" }\n')
    res = run(None, "agent", "--dev", "--http-port", "0", "--config-file", str(cfg))
    assert res.returncode == 1 and "ui_config.metrics_provider" in res.stderr


@pytest.mark.parametrize(("raw", "want"), [("ui", "/ui/"), ("/ui", "/ui/"), ("/a/b/", "/a/b/"), (" /x ", "/x/")])
def test_content_path_is_normalised(raw: str, want: str) -> None:
    assert normalize_content_path(raw) == want


@pytest.mark.parametrize("raw", ["/", "", "/v1/", "/a b/", "/a?b/"])
def test_content_path_rejects(raw: str) -> None:
    with pytest.raises(UIContentError):
        normalize_content_path(raw)


def test_bundle_maps_every_module_and_ships_licences() -> None:
    bundle = Bundle("/ui/")
    index = bundle.index.body.decode()
    modules = [rel for rel in bundle.assets if rel.endswith((".js", ".mjs"))]
    assert len(modules) >= 10
    for rel in modules:
        assert f'"/ui/{rel}": "{bundle.url(rel)}"' in index, rel
        if "/lazy/" not in rel and "/workers/" not in rel:
            assert f'rel="modulepreload" href="{bundle.url(rel)}"' in index, rel
    assert "modulepreload" not in index.split("js-yaml")[0][-200:], "the YAML parser loads only when needed"
    vendor = Path(__file__).resolve().parents[2] / "ui" / "static" / "assets" / "vendor"
    versions = (vendor / "VERSIONS.txt").read_text()
    assert "preact" in versions and "htm" in versions and "js-yaml" in versions
    for lib in ("preact", "htm", "js-yaml"):
        assert (vendor / f"LICENSE.{lib}.txt").stat().st_size > 500
    no_cdn = [rel for rel, a in bundle.assets.items() if rel.endswith((".js", ".css", ".mjs")) and
              re.search(rb"""(?:import|from|url\()\s*["']?https?://""", a.body)]
    assert no_cdn == [], "nothing may be fetched from the internet at run time"
