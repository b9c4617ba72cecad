"""The README's promise, run for real: `make dev` starts an agent on 127.0.0.1:8500 and the tour's
steps work against it (curl-equivalent HTTP calls, the CLI, dig)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request

import pytest
from support import REPO, wait_for

pytestmark = pytest.mark.xdist_group("port-8500")

BASE = "http://127.0.0.1:8500"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(BASE + path, data=body, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read(), dict(resp.headers)


@pytest.fixture(scope="module")
def make_dev():
    if not (_port_free(8500) and _port_free(8600)):
        pytest.skip("127.0.0.1:8500 or :8600 is in use, so `make dev` cannot start here")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.Popen(["make", "dev"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_for(lambda: _call("GET", "/v1/status/leader")[1] != b'""', 60, 0.1, "make dev to serve on :8500")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_register_with_curl_and_see_it_healthy(make_dev):
    body = json.dumps({"Name": "web", "Port": 8080, "Tags": ["v1"], "Check": {"TTL": "30s"}}).encode()
    assert _call("PUT", "/v1/agent/service/register", body)[0] == 200
    # A TTL check starts critical: the service is not in the passing list yet.
    assert json.loads(_call("GET", "/v1/health/service/web?passing")[1]) == []
    assert _call("PUT", "/v1/agent/check/pass/service:web")[0] == 200

    def healthy():
        entries = json.loads(_call("GET", "/v1/health/service/web?passing")[1])
        return entries if entries and entries[0]["Service"]["Port"] == 8080 else None

    entries = wait_for(healthy, 10, message="web to be passing")
    assert entries[0]["Service"]["Tags"] == ["v1"]
    assert {c["CheckID"]: c["Status"] for c in entries[0]["Checks"]}["service:web"] == "passing"


def test_kv_with_blocking_query(make_dev):
    assert _call("PUT", "/v1/kv/config/web/max_conns", b"100")[1] == b"true"
    status, body, headers = _call("GET", "/v1/kv/config/web/max_conns")
    index = int(headers["X-Consul-Index"])
    assert index > 0
    assert json.loads(body)[0]["Value"] == "MTAw"  # base64 of "100"
    status, body, headers = _call("GET", f"/v1/kv/config/web/max_conns?index={index}&wait=1s")
    assert int(headers["X-Consul-Index"]) == index  # nothing changed: the wait ran out


def test_dig_finds_the_service(make_dev):
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (Debian bind9-dnsutils; `make test` installs it as root)")
    body = json.dumps({"Name": "tour-dns", "Port": 9000}).encode()
    _call("PUT", "/v1/agent/service/register", body)

    def answer():
        out = subprocess.run(["dig", "@127.0.0.1", "-p", "8600", "tour-dns.service.mesh", "SRV", "+short"],
                             capture_output=True, text=True, timeout=10).stdout
        return out.strip()

    assert "9000" in wait_for(answer, 10, message="an SRV answer for tour-dns.service.mesh")
