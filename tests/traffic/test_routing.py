"""L7 traffic management end to end: a dev agent, real sidecar processes, aiohttp backends that answer with
their name, path and the headers they got, and a real HTTP client on web's upstream port to api.

api's chain: a service-router (paths, headers, query, methods → subsets, other services, rewrites, timeouts,
retries), a service-splitter (80/20 between subsets v1/v2 chosen by Filter over Service.Meta), resolvers with
failover, redirect and ring_hash. Entries change while the proxies run; no proxy restarts.
"""

from __future__ import annotations

import collections
import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, free_port, wait_for
from support_mesh import Backends, OTLPReceiver, ProxyProcess, wait_passing

pytestmark = pytest.mark.xdist_group("traffic")

INSTANCES = {"api-v1": ("api", {"version": "v1"}), "api-v2": ("api", {"version": "v2"}),
             "admin-1": ("admin", {}), "admin-2": ("admin", {}), "flaky-1": ("flaky", {}), "flaky-2": ("flaky", {})}


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agent = AgentProcess(tmp / "agent")
        self.backends = Backends()
        self.proxies: dict[str, ProxyProcess] = {}
        self.port = free_port()
        self.conn: http.client.HTTPConnection | None = None

    def start(self) -> None:
        a = self.agent
        a.start()
        for name in ("api", "admin", "flaky", "legacy"):
            self.write({"Kind": "service-defaults", "Name": name, "Protocol": "http"})
        for sid, (name, meta) in INSTANCES.items():
            # admin's sidecars wait 1 s for their application (Consul's local_request_timeout_ms)
            sidecar = {"Proxy": {"Config": {"local_request_timeout_ms": 1000}}} if name == "admin" else {}
            assert a.put("/v1/agent/service/register", {
                "Name": name, "ID": sid, "Port": self.backends.http(sid), "Meta": meta,
                "Connect": {"SidecarService": sidecar}})[0] == 200
        assert a.put("/v1/agent/service/register", {
            "Name": "web", "Port": free_port(), "Connect": {"SidecarService": {"Proxy": {
                "Upstreams": [{"DestinationName": "api", "LocalBindPort": self.port}]}}}})[0] == 200
        for sid in (*INSTANCES, "web"):
            self.proxies[sid] = ProxyProcess(a, self.tmp, sidecar_for=sid).start()
        for name, n in (("api", 2), ("admin", 2), ("flaky", 2)):
            wait_passing(a, name, n)
        wait_for(lambda: self.get("/")[0] == 200, 10, message="HTTP through web's sidecar")

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        for p in self.proxies.values():
            p.stop()
        self.agent.stop()
        self.backends.close()

    def write(self, entry: dict[str, Any]) -> None:
        status, body, _ = self.agent.request("PUT", "/v1/config", entry)
        assert status == 200 and body is True, (status, body)

    def get(self, path: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if r.getheader("connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = {"text": data.decode(errors="replace")}
            return r.status, parsed, {k.lower(): v for k, v in r.getheaders()}
        raise AssertionError("unreachable")

    def backend(self, path: str, **kw: Any) -> str:
        status, body, _ = self.get(path, **kw)
        assert status == 200, (status, body)
        return body["backend"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    m = Mesh(tmp_path_factory.mktemp("traffic"))
    try:
        m.start()
        m.write({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
                 "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                             "v2": {"Filter": "Service.Meta.version == v2"},
                             "v3": {"Filter": "Service.Meta.version == v3"}},
                 "Failover": {"v3": {"ServiceSubset": "v2"}}})
        m.write({"Kind": "service-resolver", "Name": "legacy", "Redirect": {"Service": "admin"}})
        m.write({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 80, "ServiceSubset": "v1", "ResponseHeaders": {"Set": {"x-split": "v1"}}},
            {"Weight": 20, "ServiceSubset": "v2", "RequestHeaders": {"Add": {"x-canary-leg": "yes"}},
             "ResponseHeaders": {"Set": {"x-split": "v2"}}}]})
        m.write({"Kind": "service-router", "Name": "api", "Routes": [
            {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
             "Destination": {"ServiceSubset": "v2"}},
            {"Match": {"HTTP": {"PathPrefix": "/admin/", "Methods": ["GET", "POST"]}},
             "Destination": {"Service": "admin", "PrefixRewrite": "/",
                             "RequestHeaders": {"Set": {"x-routed": "admin"}, "Remove": ["x-secret"]}}},
            {"Match": {"HTTP": {"PathExact": "/legacy"}}, "Destination": {"Service": "legacy"}},
            {"Match": {"HTTP": {"PathRegex": "/v[0-9]+/old.*"}}, "Destination": {"ServiceSubset": "v3"}},
            {"Match": {"HTTP": {"PathPrefix": "/search", "QueryParam": [{"Name": "beta", "Exact": "true"}]}},
             "Destination": {"ServiceSubset": "v2"}},
            {"Match": {"HTTP": {"PathPrefix": "/slow"}}, "Destination": {"Service": "admin",
                                                                         "RequestTimeout": "300ms"}},
            {"Match": {"HTTP": {"PathPrefix": "/flaky"}},
             "Destination": {"Service": "flaky", "NumRetries": 3, "RetryOnStatusCodes": [503]}},
        ]})
        # The whole chain, not a lucky answer: before web's sidecar applies it (a new chain warms first), its
        # requests go round robin over every api instance, so "x-canary → api-v2" alone can pass by chance.
        # Only the router sends /legacy to admin, and only the splitter sets x-split.
        wait_for(lambda: m.backend("/legacy").startswith("admin-") and m.get("/")[2].get("x-split") in ("v1", "v2"),
                 10, message="the router and the splitter to reach web's sidecar")
        yield m
    finally:
        m.stop()


def test_split_80_20_within_5_percent_over_2000_requests(mesh: Mesh) -> None:
    counts: collections.Counter[str] = collections.Counter()
    split_headers: collections.Counter[tuple[str, str]] = collections.Counter()
    for _ in range(2000):
        status, body, headers = mesh.get("/")
        assert status == 200
        counts[body["backend"]] += 1
        split_headers[(body["backend"], headers.get("x-split", ""))] += 1
        if body["backend"] == "api-v2":
            assert body["headers"].get("x-canary-leg") == "yes", "the v2 leg's RequestHeaders"
    assert set(counts) == {"api-v1", "api-v2"}
    assert abs(counts["api-v1"] / 2000 - 0.8) <= 0.05, counts
    assert set(split_headers) == {("api-v1", "v1"), ("api-v2", "v2")}, "each leg's ResponseHeaders"


def test_header_route_to_v2(mesh: Mesh) -> None:
    assert {mesh.backend("/x", headers={"x-canary": "1"}) for _ in range(20)} == {"api-v2"}
    assert {mesh.backend("/search?beta=true") for _ in range(20)} == {"api-v2"}, "a query-parameter route"


def test_prefix_rewrite_methods_and_header_changes(mesh: Mesh) -> None:
    status, body, _ = mesh.get("/admin/users?id=7", headers={"x-secret": "s"})
    assert status == 200 and body["backend"] in ("admin-1", "admin-2")
    assert body["path"] == "/users", "PrefixRewrite /admin/ → /"
    assert body["headers"]["x-routed"] == "admin" and "x-secret" not in body["headers"]
    status, body, _ = mesh.get("/admin/users", method="DELETE")
    assert body["backend"].startswith("api-"), "DELETE is not in the route's Methods: the default route"


def test_redirect_and_failover(mesh: Mesh) -> None:
    assert mesh.backend("/legacy").startswith("admin-"), "legacy's resolver redirects to admin"
    assert {mesh.backend("/v2/old/thing") for _ in range(10)} == {"api-v2"}, \
        "subset v3 has no instance: its failover (v2) answers"


def test_request_timeout_from_the_route(mesh: Mesh) -> None:
    t0 = time.monotonic()
    status, body, _ = mesh.get("/slow?ms=3000")
    assert status == 504 and time.monotonic() - t0 < 2.0, (status, body)


def test_retry_on_status_codes(mesh: Mesh) -> None:
    mesh.backends.status["flaky-1"] = 503
    try:
        results = [mesh.get("/flaky", method="POST", body=b"x") for _ in range(20)]
        assert all(s == 200 and b["backend"] == "flaky-2" for s, b, _ in results), results
        assert mesh.backends.hits.get("flaky-1", 0) >= 1, "flaky-1 was tried and its 503 retried"
    finally:
        mesh.backends.status["flaky-1"] = 200


def test_ring_hash_keeps_a_user_on_one_instance_and_spreads_users(mesh: Mesh) -> None:
    mesh.write({"Kind": "service-resolver", "Name": "admin", "LoadBalancer": {
        "Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}})
    wait_for(lambda: mesh.proxies["web"].admin("/stats")["UpstreamPolicies"].get("admin") == "ring_hash", 5,
             message="the resolver's LoadBalancer in web's sidecar")
    seen: dict[str, set[str]] = {}
    for i in range(40):
        user = f"user-{i % 10}"
        seen.setdefault(user, set()).add(mesh.backend("/admin/x", headers={"x-user": user}))
    assert all(len(b) == 1 for b in seen.values()), seen
    assert len(set().union(*seen.values())) == 2, "ten users land on both instances"


def test_chain_changes_apply_live_within_a_second(mesh: Mesh) -> None:
    pid = mesh.proxies["web"].proc.pid
    mesh.write({"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 0, "ServiceSubset": "v1"},
                                                                      {"Weight": 100, "ServiceSubset": "v2"}]})
    t0 = time.monotonic()
    wait_for(lambda: all(mesh.backend("/") == "api-v2" for _ in range(10)), 5, message="the new split")
    assert time.monotonic() - t0 < 2.5, "well under a second on a quiet machine; slack for a loaded one"
    mesh.write({"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 80, "ServiceSubset": "v1"},
                                                                      {"Weight": 20, "ServiceSubset": "v2"}]})
    assert mesh.proxies["web"].proc.pid == pid and mesh.proxies["web"].proc.poll() is None, "no restart"


# ---------------------------------------------------------------------- web's service-defaults UpstreamConfig
def breakers(mesh: Mesh) -> dict[str, Any]:
    return mesh.proxies["web"].admin("/stats")["CircuitBreakers"]["api"]


def test_circuit_breaking_under_200_concurrent_requests(mesh: Mesh) -> None:
    import asyncio

    import aiohttp

    mesh.write({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Overrides": [
        {"Name": "api", "Limits": {"MaxConcurrentRequests": 10}}]}})
    wait_for(lambda: breakers(mesh)["MaxConcurrentRequests"] == 10, 5, message="the limit in web's sidecar")
    wait_for(lambda: mesh.backends.in_flight == 0, 10, message="earlier slow requests (timed out) to end")
    mesh.backends.peak_in_flight = 0

    async def burst() -> list[int]:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            async def one() -> int:
                async with s.get(f"http://127.0.0.1:{mesh.port}/admin/slow?ms=400") as r:
                    await r.read()
                    return r.status
            return await asyncio.gather(*(one() for _ in range(200)))

    t0 = time.monotonic()
    statuses = asyncio.run(burst())
    counts = collections.Counter(statuses)
    assert set(counts) == {200, 503} and counts[200] >= 10, counts
    assert mesh.backends.peak_in_flight <= 10, f"the backends saw {mesh.backends.peak_in_flight} at once"
    assert breakers(mesh)["Overflows"] >= counts[503]
    assert time.monotonic() - t0 < 10, "the excess is answered at once, not queued"
    wait_for(lambda: breakers(mesh)["Active"] == 0, 5, message="every place given back")

    async def impatient() -> None:  # callers that leave while their requests are in flight or being dialed
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=0.1)) as s:
            async def one() -> None:
                try:
                    async with s.get(f"http://127.0.0.1:{mesh.port}/admin/slow?ms=400") as r:
                        await r.read()
                except (TimeoutError, aiohttp.ClientError):
                    pass
            await asyncio.gather(*(one() for _ in range(30)))

    asyncio.run(impatient())
    wait_for(lambda: breakers(mesh)["Active"] == 0 and breakers(mesh)["Pending"] == 0, 5,
             message="no place kept by callers that left")
    assert mesh.get("/admin/x")[0] == 200, "the breaker still admits"

    mesh.write({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Overrides": [
        {"Name": "api", "Limits": {"MaxConnections": 4, "MaxPendingRequests": 500}}]}})
    wait_for(lambda: breakers(mesh)["MaxConnections"] == 4, 5, message="the new limits")
    wait_for(lambda: mesh.backends.in_flight == 0, 10, message="the abandoned slow requests to end")
    mesh.backends.peak_in_flight = 0
    statuses = asyncio.run(burst_of(mesh, 40, "/admin/slow?ms=50"))
    assert statuses == [200] * 40, collections.Counter(statuses)
    assert mesh.backends.peak_in_flight <= 4, "MaxConnections queues the rest (MaxPendingRequests), never more"


async def burst_of(mesh: Mesh, n: int, path: str) -> list[int]:
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one() -> int:
            async with s.get(f"http://127.0.0.1:{mesh.port}{path}") as r:
                await r.read()
                return r.status
        return await asyncio.gather(*(one() for _ in range(n)))


def test_passive_health_check_from_service_defaults(mesh: Mesh) -> None:
    mesh.write({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Overrides": [
        {"Name": "api", "PassiveHealthCheck": {"MaxFailures": 2, "BaseEjectionTime": "20s",
                                               "MaxEjectionPercent": 50}}]}})

    def flaky_target() -> dict[str, Any]:
        return mesh.proxies["web"].admin("/stats")["ChainTargets"].get("flaky.default.default.dc1") or {}

    wait_for(lambda: flaky_target().get("Healthy") == 2, 5, message="flaky's pool in web's sidecar")
    mesh.backends.status["flaky-1"] = 500
    try:
        for _ in range(12):
            mesh.get("/flaky")
        assert any("flaky-1" in e for e in flaky_target()["Ejected"]), flaky_target()
        assert {mesh.backend("/flaky") for _ in range(10)} == {"flaky-2"}, "the ejected instance gets nothing"
    finally:
        mesh.backends.status["flaky-1"] = 200
        mesh.write({"Kind": "service-defaults", "Name": "web"})


def test_access_logs_in_envoys_fields(mesh: Mesh) -> None:
    path = mesh.tmp / "access.log"
    mesh.write({"Kind": "proxy-defaults", "Name": "global",
                "AccessLogs": {"Enabled": True, "Type": "file", "Path": str(path)}})
    wait_for(lambda: mesh.proxies["web"].admin("/stats").get("AccessLogLines") is not None and
             "access logs: file" in mesh.proxies["web"].log(), 5, message="access logs on in web's sidecar")
    wait_for(lambda: "access logs: file" in mesh.proxies["api-v2"].log(), 5, message="access logs in api-v2's")
    tag = f"/tag-{time.monotonic_ns()}"
    assert mesh.get(tag, headers={"x-canary": "1", "user-agent": "traffic-test"})[0] == 200
    assert mesh.get("/slow?ms=2000")[0] == 504

    def lines() -> list[dict[str, Any]]:
        try:
            return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        except FileNotFoundError:
            return []

    wait_for(lambda: len([x for x in lines() if x.get("path") == tag]) == 2, 5, message="both sidecars' lines")
    out = next(x for x in lines() if x["path"] == tag and x.get("upstream_cluster") != "local_app")
    inn = next(x for x in lines() if x["path"] == tag and x.get("upstream_cluster") == "local_app")
    assert out["method"] == "GET" and out["response_code"] == 200 and out["response_flags"] == "-"
    assert out["route_name"] == "api/0" and out["upstream_cluster"] == "v2.api.default.default.dc1"
    assert out["upstream_service"] == "api" and out["upstream_instance"].endswith("/api-v2-sidecar-proxy")
    assert out["user_agent"] == "traffic-test" and out["bytes_sent"] > 0 and out["start_time"].endswith("Z")
    assert inn["downstream_peer_uri_san"].endswith("/svc/web") and inn["upstream_service"] == "api"
    wait_for(lambda: any(x.get("response_flags") == "UT" and x["response_code"] == 504 for x in lines()), 5,
             message="the timeout's line")
    # The application behind a sidecar answers later than its local_request_timeout_ms (admin's: 1 s; the
    # route's own timeout is the default 15 s, and a POST is not retried): the inbound sidecar answers 504
    # and its line says UT, as the caller's does.
    assert mesh.get("/admin/slow?ms=3000", method="POST", body=b"x")[0] == 504
    wait_for(lambda: any(x.get("upstream_cluster") == "local_app" and x["method"] == "POST" and
                         x["response_code"] == 504 and x.get("response_flags") == "UT" for x in lines()), 5,
             message="the inbound timeout's line")
    # A GET is retried on the other instance (the proxy's default retry on 504); when no instance is left
    # untried the caller gets the last answer, the 504 — not "no healthy upstream".
    status, body, _ = mesh.get("/admin/slow?ms=3000")
    assert status == 504 and "no healthy upstream" not in body.get("text", ""), (status, body)

    mesh.write({"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": "/proc/no-such-dir/access.log"}})
    wait_for(lambda: "cannot open /proc/no-such-dir/access.log" in mesh.proxies["web"].log(), 5,
             message="one error line")
    assert mesh.backend("/") in ("api-v1", "api-v2"), "traffic goes on"
    mesh.write({"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(path), "TextFormat":
        "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%"}})
    wait_for(lambda: mesh.get(tag + "-text")[0] == 200 and f"GET {tag}-text 200 - " in path.read_text(), 5,
             message="the TextFormat line")
    status, body, _ = mesh.agent.request("PUT", "/v1/config", {
        "Kind": "proxy-defaults", "Name": "global", "AccessLogs": {"Enabled": True, "Type": "file"}})
    assert status == 400 and "AccessLogs.Path" in body
    assert mesh.agent.request("DELETE", "/v1/config/proxy-defaults/global")[0] == 200


def test_rate_limit_answers_429(mesh: Mesh) -> None:
    mesh.write({"Kind": "service-defaults", "Name": "admin", "Protocol": "http", "RateLimits": {"InstanceLevel": {
        "RequestsPerSecond": 2, "RequestsMaxBurst": 4, "Routes": [{"PathPrefix": "/open", "RequestsPerSecond": 1000,
                                                                   "RequestsMaxBurst": 1000}]}}})
    try:
        wait_for(lambda: mesh.get("/admin/x")[0] == 429, 5, message="the limit in admin's sidecars")
        codes = collections.Counter(mesh.get("/admin/x")[0] for _ in range(30))
        assert codes[429] >= 15 and set(codes) <= {200, 429}, codes
        assert {mesh.get("/admin/open/x")[0] for _ in range(30)} == {200}, "a route's own, larger bucket"
        limited = sum(mesh.proxies[f"admin-{i}"].admin("/stats")["RateLimited"] for i in (1, 2))
        assert limited >= codes[429]
    finally:
        mesh.write({"Kind": "service-defaults", "Name": "admin", "Protocol": "http"})


def test_one_trace_across_the_hop_with_parent_links(mesh: Mesh) -> None:
    otlp = OTLPReceiver(mesh.backends)
    mesh.write({"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": {
        "otlp_endpoint": f"http://127.0.0.1:{otlp.port}/v1/traces", "sampling_percent": 100}}})
    try:
        for p in ("web", "api-v2"):
            wait_for(lambda p=p: mesh.proxies[p].admin("/stats").get("TracingSpans") is not None, 5,
                     message=f"tracing on in {p}'s sidecar")
        trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        status, body, _ = mesh.get("/traced", headers={"x-canary": "1", "traceparent": f"00-{trace_id}-{parent}-01",
                                                       "tracestate": "vendor=1"})
        assert status == 200 and body["backend"] == "api-v2"
        seen = body["headers"]["traceparent"].split("-")
        assert seen[1] == trace_id and body["headers"]["tracestate"] == "vendor=1"
        wait_for(lambda: len(otlp.of_trace(bytes.fromhex(trace_id))) == 2, 5, message="both spans at the collector")
        spans = {svc: s for svc, s in otlp.of_trace(bytes.fromhex(trace_id))}
        client, server = spans["web"], spans["api"]
        assert client.kind == 3 and client.parent_span_id.hex() == parent, "web's client span: the caller's child"
        assert server.kind == 2 and server.parent_span_id == client.span_id, "api's server span: the client's child"
        assert server.span_id.hex() == seen[2], "the application sees api's span as its parent"
        attrs = {a.key: a.value for a in client.attributes}
        assert attrs["http.response.status_code"].int_value == 200 and attrs["proconsul.route"].string_value == "api/0"

        status, body, _ = mesh.get("/untraced", headers={"x-canary": "1"})
        new_trace = bytes.fromhex(body["headers"]["traceparent"].split("-")[1])
        wait_for(lambda: len(otlp.of_trace(new_trace)) == 2, 5, message="a new trace for a request without one")

        mesh.write({"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": {
            "otlp_endpoint": f"http://127.0.0.1:{free_port()}/v1/traces"}}})  # nobody listens there
        wait_for(lambda: mesh.proxies["web"].admin("/stats")["TracingSpans"]["Exported"] == 0, 5,
                 message="the new collector setting")
        t0 = time.monotonic()
        assert all(mesh.get("/x")[0] == 200 for _ in range(20))
        assert time.monotonic() - t0 < 5, "a collector that is down slows nothing"
        wait_for(lambda: mesh.proxies["web"].admin("/stats")["TracingSpans"]["Dropped"] >= 20, 10,
                 message="dropped spans counted")
    finally:
        mesh.agent.request("DELETE", "/v1/config/proxy-defaults/global")


def test_warning_instances_take_traffic_unless_the_subset_says_only_passing(mesh: Mesh) -> None:
    """As Consul's proxies: an instance whose checks warn still gets requests, a critical one none, and a
    resolver subset with `OnlyPassing` leaves the warning one out too (admin-2's own TTL check; its sidecar's
    alias check follows it into /v1/health/connect/admin)."""
    a = mesh.agent

    def healthy_in_web(target: str) -> int:
        return (mesh.proxies["web"].admin("/stats")["ChainTargets"].get(target) or {}).get("Healthy", -1)

    assert a.put("/v1/agent/check/register", {"ID": "admin-2-ttl", "Name": "admin-2 TTL", "ServiceID": "admin-2",
                                              "TTL": "10m", "Status": "critical"})[0] == 200
    try:
        wait_for(lambda: healthy_in_web("admin.default.default.dc1") == 1, 10, message="admin-2 critical: left out")
        assert {mesh.backend("/admin/x") for _ in range(10)} == {"admin-1"}
        assert a.put("/v1/agent/check/warn/admin-2-ttl")[0] == 200
        wait_for(lambda: healthy_in_web("admin.default.default.dc1") == 2, 10,
                 message="admin-2 warning: back in web's pool (Consul's proxies send to warning instances)")
        assert {mesh.backend("/admin/x") for _ in range(20)} == {"admin-1", "admin-2"}

        mesh.write({"Kind": "service-resolver", "Name": "admin", "DefaultSubset": "strict",
                    "Subsets": {"strict": {"OnlyPassing": True}}})
        wait_for(lambda: healthy_in_web("strict.admin.default.default.dc1") == 1, 10,
                 message="the OnlyPassing subset in web's sidecar, without admin-2")
        assert {mesh.backend("/admin/x") for _ in range(10)} == {"admin-1"}, "OnlyPassing: the warning one is out"
        assert a.put("/v1/agent/check/pass/admin-2-ttl")[0] == 200
        wait_for(lambda: healthy_in_web("strict.admin.default.default.dc1") == 2, 10,
                 message="admin-2 passing: in the OnlyPassing subset again")
    finally:
        a.request("DELETE", "/v1/config/service-resolver/admin")
        a.put("/v1/agent/check/deregister/admin-2-ttl")
    wait_for(lambda: healthy_in_web("admin.default.default.dc1") == 2, 10, message="admin as it was")


def test_service_weights_share_requests_and_warning_zero_takes_an_instance_out(mesh: Mesh) -> None:
    """Consul's `Weights` on a sidecar's registration reach the proxies that send to it (Consul gives them to
    Envoy as endpoint weights): Passing 3 gives admin-2 three requests in four under round robin, and
    Warning 0 takes it out of the pool while one of its checks warns."""
    a = mesh.agent
    status, reg, _ = a.request("GET", "/v1/agent/service/admin-2")
    assert status == 200, reg
    plain = {"Name": "admin", "ID": "admin-2", "Port": reg["Port"], "Meta": reg.get("Meta") or {},
             "Connect": {"SidecarService": {"Proxy": {"Config": {"local_request_timeout_ms": 1000}}}}}
    weighted = json.loads(json.dumps(plain))
    weighted["Connect"]["SidecarService"]["Weights"] = {"Passing": 3, "Warning": 0}
    target = "admin.default.default.dc1"

    def weights_in_web() -> dict[str, int]:
        return (mesh.proxies["web"].admin("/stats")["ChainTargets"].get(target) or {}).get("Weights") or {}

    assert a.put("/v1/agent/service/register", weighted)[0] == 200
    try:
        wait_for(lambda: sorted(weights_in_web().values()) == [1, 3], 10, message="admin-2's weight 3 in web's pool")
        served = collections.Counter(mesh.backend("/admin/x") for _ in range(40))
        assert 27 <= served["admin-2"] <= 33 and served["admin-2"] + served["admin-1"] == 40, served

        assert a.put("/v1/agent/check/register", {"ID": "admin-2-ttl", "Name": "admin-2 TTL", "ServiceID": "admin-2",
                                                  "TTL": "10m", "Status": "warning"})[0] == 200
        wait_for(lambda: len(weights_in_web()) == 1, 10, message="admin-2 warning with Warning 0: out of web's pool")
        assert {mesh.backend("/admin/x") for _ in range(10)} == {"admin-1"}
        assert a.put("/v1/agent/check/pass/admin-2-ttl")[0] == 200
        wait_for(lambda: sorted(weights_in_web().values()) == [1, 3], 10, message="admin-2 passing: back, weight 3")
    finally:
        a.put("/v1/agent/check/deregister/admin-2-ttl")
        assert a.put("/v1/agent/service/register", plain)[0] == 200
    wait_for(lambda: sorted(weights_in_web().values()) == [1, 1], 10, message="admin as it was")
