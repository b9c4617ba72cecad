"""Circuit breaking, outlier enforcement and access-log formatting, as pure objects."""

from __future__ import annotations

import io
import json

from proconsul.connect.proxy.accesslog import AccessLog
from proconsul.connect.proxy.balancer import Instance, UpstreamPool
from proconsul.connect.proxy.breaker import QUEUE, REFUSE, SEND, Breaker
from proconsul.connect.proxy.config import (
    Limits,
    OutlierSettings,
    ProxyConfig,
    Upstream,
    with_upstream_config,
)


def test_concurrent_limit_refuses_at_once() -> None:
    b: Breaker[int] = Breaker(Limits(max_concurrent_requests=2))
    assert [b.admit(i) for i in range(4)] == [SEND, SEND, REFUSE, REFUSE]
    assert b.release() is None and b.admit(9) == SEND and b.overflows == 2


def test_connection_limit_queues_boundedly_and_hands_over() -> None:
    b: Breaker[str] = Breaker(Limits(max_connections=1, max_pending_requests=2))
    assert [b.admit(x) for x in "abcd"] == [SEND, QUEUE, QUEUE, REFUSE]
    assert b.forget("c") and b.release() == "b" and b.active == 1 and b.peak == 1
    assert b.release() is None and b.active == 0


def test_enforcing_consecutive_5xx_is_a_chance() -> None:
    inst = [Instance(f"n/{i}", "127.0.0.1", i, "api") for i in range(4)]
    pool = UpstreamPool("api", outlier=OutlierSettings(max_failures=1, enforcing_consecutive_5xx=30))
    pool.set_instances(inst)
    assert not pool.failed(inst[0], 0.0, roll=0.5), "a roll above 30% is not enforced"
    assert pool.failed(inst[0], 0.0, roll=0.1)


def test_upstream_config_layers_defaults_override_and_registration() -> None:
    up = Upstream("api", 9000)
    cfg = ProxyConfig("web-proxy", "web-proxy", "web", "web", "127.0.0.1", 21000, "127.0.0.1", 8080,
                      upstreams=(up,), upstream_raw=({"DestinationName": "api", "Config": {"limits": {
                          "max_pending_requests": 7}}},))
    out = with_upstream_config(cfg, {"Defaults": {"Limits": {"MaxConnections": 5, "MaxPendingRequests": 1},
                                                  "ConnectTimeoutMs": 250},
                                     "Overrides": [{"Name": "api", "Limits": {"MaxConcurrentRequests": 3},
                                                    "PassiveHealthCheck": {"MaxFailures": 9}}]})
    u = out.upstreams[0]
    assert u.limits == Limits(max_connections=5, max_pending_requests=7, max_concurrent_requests=3)
    assert u.connect_timeout == 0.25 and u.outlier is not None and u.outlier.max_failures == 9


def test_upstream_config_mesh_gateway_under_the_upstreams_own() -> None:
    ups = (Upstream("api", 9000, mesh_gateway="remote"), Upstream("db", 9001), Upstream("kv", 9002))
    raw = ({"DestinationName": "api", "MeshGateway": {"Mode": "remote"}}, {"DestinationName": "db"},
           {"DestinationName": "kv"})
    cfg = ProxyConfig("web-proxy", "web-proxy", "web", "web", "127.0.0.1", 21000, "127.0.0.1", 8080,
                      upstreams=ups, upstream_raw=raw)
    out = with_upstream_config(cfg, {"Defaults": {"MeshGateway": {"Mode": "local"}},
                                     "Overrides": [{"Name": "db", "MeshGateway": {"Mode": "none"}}]})
    assert [u.mesh_gateway for u in out.upstreams] == ["remote", "none", "local"]


def record() -> dict:
    return {"start_time": 1700000000.5, "method": "GET", "path": "/a?b=1", "protocol": "HTTP/1.1",
            "response_code": 503, "response_flags": "UO", "bytes_received": 0, "bytes_sent": 12, "duration": 3,
            "headers": [(b"user-agent", b"curl/8"), (b"host", b"api")], "upstream_cluster": "api.default.default.dc1"}


def test_default_json_and_custom_formats() -> None:
    buf = io.StringIO()
    log = AccessLog({"Enabled": True, "Type": "file", "Path": "x"}, open_file=lambda _: buf)
    log.request(record())
    log.flush()
    line = json.loads(buf.getvalue())
    assert line["start_time"] == "2023-11-14T22:13:20.500Z" and line["response_flags"] == "UO"
    assert line["user_agent"] == "curl/8" and line["authority"] == "api" and line["bytes_sent"] == 12
    custom = AccessLog({"Enabled": True, "JSONFormat": json.dumps(
        {"code": "%RESPONSE_CODE%", "what": "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "ua": "%REQ(USER-AGENT)%",
         "none": "%UPSTREAM_HOST%"})})
    assert json.loads(custom.format(record())) == {"code": 503, "what": "GET /a?b=1", "ua": "curl/8", "none": None}
    text = AccessLog({"Enabled": True, "TextFormat": "[%START_TIME%] %RESPONSE_CODE% %UPSTREAM_HOST%"})
    assert text.format(record()) == "[2023-11-14T22:13:20.500Z] 503 -\n"


def test_unwritable_destination_stops_logging_not_traffic() -> None:
    def refuse(_: str) -> io.StringIO:
        raise PermissionError(13, "Permission denied")

    log = AccessLog({"Enabled": True, "Type": "file", "Path": "/nope"}, open_file=refuse)
    assert not log.open() and log.broken
    log.request(record())  # no exception


def test_token_buckets_per_route() -> None:
    from proconsul.connect.proxy.ratelimit import RateLimiter

    rl = RateLimiter.from_entry({"InstanceLevel": {"RequestsPerSecond": 1, "RequestsMaxBurst": 2,
                                                   "Routes": [{"PathExact": "/hot", "RequestsPerSecond": 10}]}})
    assert rl is not None
    assert [rl.allow("/a", 0.0) for _ in range(3)] == [True, True, False]
    assert rl.allow("/a", 1.0) and not rl.allow("/a", 1.0), "one token a second"
    assert sum(rl.allow("/hot", 0.0) for _ in range(15)) == 10 and rl.limited == 7
    assert RateLimiter.from_entry({"InstanceLevel": {}}) is None
