"""Where a proxy's admin listener is (connect/proxy/admin_address.py), and how the proxy binds it when
-admin-bind is not given: a configured address must bind, a default that is taken is skipped."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request

import pytest

from proconsul.connect.proxy.admin_address import AdminAddress, admin_address
from proconsul.connect.proxy.config import ProxyConfigError, from_registration
from proconsul.connect.proxy.proxy import Proxy
from proconsul.connect.proxy.runtime import Runtime


def reg(port: int, **config: object) -> dict:
    return {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": port,
            "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080, "Config": config}}


@pytest.mark.parametrize("port, expected", [(21000, 19000), (21001, 19001), (21255, 19255), (20999, 19000),
                                            (21256, 19000), (443, 19000)])
def test_sidecars_in_consuls_range_get_one_admin_port_each(port: int, expected: int) -> None:
    assert admin_address(reg(port)) == AdminAddress("127.0.0.1", expected, configured=False)


@pytest.mark.parametrize("value, host, port", [("127.0.0.1:9102", "127.0.0.1", 9102), ("0.0.0.0:9102", "0.0.0.0", 9102),
                                               (":9102", "0.0.0.0", 9102), ("[::1]:9102", "::1", 9102)])
def test_envoy_prometheus_bind_addr_names_it(value: str, host: str, port: int) -> None:
    where = admin_address(reg(21003, envoy_prometheus_bind_addr=value))
    assert (where.host, where.port, where.configured) == (host, port, True)


@pytest.mark.parametrize("value", ["9102", "localhost", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:70000", 9102])
def test_a_bad_address_names_the_key(value: object) -> None:
    with pytest.raises(ProxyConfigError, match="envoy_prometheus_bind_addr"):
        admin_address(reg(21000, envoy_prometheus_bind_addr=value))


def test_an_empty_key_is_the_default() -> None:
    assert admin_address(reg(21002, envoy_prometheus_bind_addr="")).port == 19002


def _busy() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _proxy(where: AdminAddress) -> Proxy:
    p = Proxy(None, "web-sidecar-proxy", admin_port=None)  # type: ignore[arg-type]  # no agent needed here
    p._admin_where = where
    p.rt = Runtime(from_registration(reg(21000)), datacenter="dc1")
    return p


def test_a_taken_default_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    busy = _busy()

    async def go() -> Proxy:
        p = _proxy(AdminAddress("127.0.0.1", busy.getsockname()[1], configured=False))
        await p._start_admin()
        return p

    with caplog.at_level(logging.WARNING, "proconsul.proxy"):
        p = asyncio.run(go())
    busy.close()
    assert p.admin_port == -1 and p._admin is None
    assert "is taken" in caplog.text and "envoy_prometheus_bind_addr" in caplog.text


def test_a_configured_address_that_is_taken_stops_the_proxy() -> None:
    busy = _busy()

    async def go() -> None:
        p = _proxy(AdminAddress("127.0.0.1", busy.getsockname()[1], configured=True))
        try:
            await p._start_admin()
        finally:
            await p._close_listeners()

    with pytest.raises(OSError):
        asyncio.run(go())
    busy.close()


def test_a_free_default_serves_stats() -> None:
    free = _busy()
    port = free.getsockname()[1]
    free.close()

    async def go() -> dict:
        p = _proxy(AdminAddress("127.0.0.1", port, configured=False))
        await p._start_admin()
        try:
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{port}/stats", timeout=5).read())
            return json.loads(raw)
        finally:
            await p._close_listeners()

    stats = asyncio.run(go())
    assert stats["ProxyID"] == "web-sidecar-proxy" and len(stats["LatencyBounds"]) == 34
