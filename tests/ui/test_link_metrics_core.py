"""The pure core of the golden metrics per link (agent/observe/link_metrics.py), fed by the proxy's own
metrics module (connect/proxy/metrics.py) so the /stats format both sides use is checked too."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.agent.config.load import finalize, load_config
from proconsul.agent.config.model import AgentConfig, ConfigError
from proconsul.agent.observe.link_metrics import (
    StatsFormatError,
    from_prometheus,
    growth,
    link_metrics,
    parse_stats,
    prometheus_queries,
    quantile,
)
from proconsul.agent.observe.proxy_stats import targets
from proconsul.connect.proxy.metrics import BOUNDS, ProxyMetrics


def stats(m: ProxyMetrics, proxy_id: str = "web-sidecar-proxy") -> dict:
    return dict(m.snapshot(), ProxyID=proxy_id)


def http_traffic(m: ProxyMetrics, peer: str, n: int, seconds: float, status: int = 200, upstream: bool = True) -> None:
    link = m.upstream_link(peer) if upstream else m.inbound_link(peer)
    for _ in range(n):
        link.requests += 1
        link.response(status)
        link.latency.observe(seconds)


def test_rate_success_and_p99_come_from_the_growth_between_two_samples() -> None:
    m = ProxyMetrics("web")
    http_traffic(m, "db", 1000, 0.5)  # before the window: slow, must not count
    old = parse_stats(stats(m), at=100.0)
    http_traffic(m, "db", 90, 0.002)
    http_traffic(m, "db", 10, 0.002, status=503)
    new = parse_stats(stats(m), at=110.0)
    out = link_metrics([(new, old)])
    db = out["Upstreams"]["db"]
    assert db["Protocol"] == "http" and db["RequestRate"] == 10.0 and db["SuccessRate"] == 0.9
    assert db["Requests"] == 100 and db["Errors"] == 10 and db["Window"] == 10.0
    assert 1.70 < db["P99Ms"] <= 2.57  # inside the bucket holding 2 ms (1.71-2.56 ms), not the old 500 ms
    assert out["Downstreams"] == {}


def test_proxies_of_one_service_add_up() -> None:
    a, b = ProxyMetrics("db"), ProxyMetrics("db")
    olds = [parse_stats(stats(x, f"db-{i}"), at=0.0) for i, x in enumerate((a, b))]
    http_traffic(a, "web", 50, 0.001, upstream=False)
    http_traffic(b, "web", 30, 0.001, status=500, upstream=False)
    news = [parse_stats(stats(x, f"db-{i}"), at=5.0) for i, x in enumerate((a, b))]
    web = link_metrics(list(zip(news, olds, strict=True)))["Downstreams"]["web"]
    assert web["RequestRate"] == 16.0 and web["SuccessRate"] == round(50 / 80, 4) and web["Proxies"] == 2


def test_tcp_links_count_connections() -> None:
    m = ProxyMetrics("web")
    old = parse_stats(stats(m), at=0.0)
    up, inbound = m.upstream_link("cache"), m.inbound_link("api")
    up.connections, up.failed = 8, 2  # upstream: failures are not connections
    inbound.connections, inbound.failed = 10, 1  # inbound: accepted, one found no local app
    for link in (up, inbound):
        link.latency.observe(0.0003)
    new = parse_stats(stats(m), at=2.0)
    out = link_metrics([(new, old)])
    assert (out["Upstreams"]["cache"]["Protocol"], out["Upstreams"]["cache"]["RequestRate"],
            out["Upstreams"]["cache"]["SuccessRate"]) == ("tcp", 5.0, 0.8)
    assert (out["Downstreams"]["api"]["RequestRate"], out["Downstreams"]["api"]["SuccessRate"]) == (5.0, 0.9)


def test_an_idle_http_link_stays_http_with_no_success_rate() -> None:
    m = ProxyMetrics("web")
    http_traffic(m, "db", 3, 0.01)
    old = parse_stats(stats(m), at=0.0)
    db = link_metrics([(parse_stats(stats(m), at=5.0), old)])["Upstreams"]["db"]
    assert (db["Protocol"], db["RequestRate"], db["SuccessRate"], db["P99Ms"]) == ("http", 0.0, None, None)


def test_a_restarted_proxy_is_not_a_negative_rate() -> None:
    m = ProxyMetrics("web")
    http_traffic(m, "db", 100, 0.01)
    old = parse_stats(stats(m), at=0.0)
    fresh = ProxyMetrics("web")
    http_traffic(fresh, "db", 5, 0.01)
    assert growth(parse_stats(stats(fresh), at=5.0), old) == {}
    assert growth(parse_stats(stats(m), at=5.0), parse_stats(stats(m), at=5.0)) == {}  # no time passed


def test_quantile_interpolates_inside_the_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, (0, 10, 0, 0), bounds) == 1.5
    assert quantile(0.99, (0, 0, 0, 5), bounds) == 4.0  # past the last bound: the last bound
    assert quantile(0.99, (0, 0, 0, 0), bounds) is None
    assert quantile(0.99, (100, 0, 0, 0), bounds) == pytest.approx(0.99)


@pytest.mark.parametrize("bad, field", [([], "object"), ({"Inbound": []}, "Inbound"),
                                        ({"LatencyBounds": [1], "Upstreams": {"db": {"Connections": 1}}}, "db"),
                                        ({"LatencyBounds": ["x"]}, "LatencyBounds"),
                                        ({"LatencyBounds": [1.0], "Upstreams": {"db": {
                                            "Connections": 1, "Failed": 0, "LatencyCounts": [1, 2, 3]}}}, "buckets")])
def test_a_malformed_stats_answer_is_an_error_naming_the_part(bad: object, field: str) -> None:
    with pytest.raises(StatsFormatError, match=field):
        parse_stats(bad, at=0.0)


def _vectors(m: ProxyMetrics, service: str) -> dict[str, list]:
    """What Prometheus would answer to prometheus_queries for growth == the proxy's counters (from zero)."""
    out: dict[str, list] = {k: [] for k in prometheus_queries(service, "1m")}
    for direction, label, links in (("upstream", "destination", m.upstreams), ("inbound", "source", m.inbound)):
        for peer, link in links.items():
            base = {"direction": direction, label: peer}
            for name, value in (("connections", link.connections), ("failed", link.failed),
                                ("refused", link.refused), ("requests", link.requests), ("ever", link.requests),
                                ("answered", link.responses_2xx + link.responses_3xx + link.responses_4xx +
                                 link.responses_5xx), ("errors", link.responses_5xx)):
                out[name].append({"metric": base, "value": [0, str(value)]})
            cum = 0
            for bound, count in zip((*BOUNDS, float("inf")), link.latency.counts, strict=True):
                cum += count
                le = "+Inf" if bound == float("inf") else f"{bound:.6g}"
                out["latency"].append({"metric": dict(base, le=le), "value": [0, str(cum)]})
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["db", "cache", "api"]), st.booleans(), st.integers(1, 40),
                          st.sampled_from([200, 404, 503]), st.floats(0.0001, 3.0)), min_size=1, max_size=8))
def test_prometheus_and_the_proxies_give_the_same_figures(traffic: list) -> None:
    """The two readers agree: the same counters through /stats samples and through Prometheus vectors."""
    m = ProxyMetrics("web")
    before = parse_stats(stats(m), at=0.0)
    for peer, upstream, n, status, seconds in traffic:
        http_traffic(m, peer, n, seconds, status, upstream)
    direct = link_metrics([(parse_stats(stats(m), at=60.0), before)])
    via_prometheus = from_prometheus(_vectors(m, "web"), 60.0)
    for side in ("Upstreams", "Downstreams"):
        assert set(direct[side]) == set(via_prometheus[side])
        for peer, d in direct[side].items():
            p = via_prometheus[side][peer]
            assert (d["Protocol"], d["RequestRate"], d["SuccessRate"], d["Requests"], d["Errors"]) == \
                (p["Protocol"], p["RequestRate"], p["SuccessRate"], p["Requests"], p["Errors"])
            assert d["P99Ms"] == pytest.approx(p["P99Ms"], rel=1e-3, abs=1.1e-3)  # both rounded to 0.001 ms
            assert 0 <= d["SuccessRate"] <= 1 and d["P99Ms"] <= BOUNDS[-1] * 1000


def test_prometheus_queries_escape_the_service_name() -> None:
    q = prometheus_queries('we"b\\x', "1m")
    assert 'service="we\\"b\\\\x"' in q["requests"] and 'code_class="5xx"' in q["errors"]
    assert "le" in q["latency"].split("(")[1]


def row(node: str, port: int = 21000, **config: object) -> dict:
    return {"ServiceKind": "connect-proxy", "ServiceID": f"web-sidecar-{node}", "Node": node, "Address": "10.0.0.7",
            "ServiceAddress": "", "ServicePort": port, "ServiceProxy": {"DestinationServiceName": "web",
                                                                         "Config": config}}


def test_where_the_agent_reads_each_proxy() -> None:
    own, other = "node-a", "node-b"
    rows = [row(own), row(own, 21004), row(other), row(other, envoy_prometheus_bind_addr="0.0.0.0:9102"),
            row(own, envoy_prometheus_bind_addr="0.0.0.0:9102"), row(own, envoy_prometheus_bind_addr="oops"),
            {"ServiceKind": "", "ServiceID": "web", "Node": own}]
    got = [(t.host, t.port, bool(t.problem)) for t in targets(rows, own)]
    assert got == [("127.0.0.1", 19000, False), ("127.0.0.1", 19004, False),
                   ("", 19000, True),  # loopback on another node: not readable from here
                   ("10.0.0.7", 9102, False),  # every address on another node: its address
                   ("127.0.0.1", 9102, False),  # every address here: over loopback
                   ("", 0, True)]


def _ui(hcl: str) -> AgentConfig:
    return finalize(load_config([], [], AgentConfig(dev=True), hcl=[hcl]))


def test_ui_config_metrics_keys_as_consul_spells_them() -> None:
    cfg = _ui('ui_config {\n metrics_provider = "prometheus"\n metrics_proxy {\n'
              '  base_url = "http://127.0.0.1:9090/"\n'
              '  add_headers = [{ name = "Authorization", value = "Bearer x" }]\n } }')
    assert (cfg.ui_metrics_provider, cfg.ui_metrics_proxy_base_url) == ("prometheus", "http://127.0.0.1:9090")
    assert cfg.ui_metrics_proxy_add_headers == [("Authorization", "Bearer x")]
    assert cfg.ui_metrics_proxy_path_allowlist == ["/api/v1/query", "/api/v1/query_range"]
    plain = _ui('ui_config { metrics_proxy { base_url = "https://m.example:443" path_allowlist = ["/x"] } }')
    assert (plain.ui_metrics_provider, plain.ui_metrics_proxy_path_allowlist) == ("", ["/x"])


@pytest.mark.parametrize("hcl, names", [
    ('ui_config { metrics_provider = "grafana" }', "ui_config.metrics_provider"),
    ('ui_config { metrics_provider = "prometheus" }', "metrics_proxy.base_url"),
    ('ui_config { metrics_proxy { base_url = "127.0.0.1:9090" } }', "ui_config.metrics_proxy.base_url"),
    ('ui_config { metrics_proxy { add_headers = [{ nme = "a" }] } }', "ui_config.metrics_proxy.add_headers"),
    ('ui_config { metrics_proxy { path_allowlist = ["api/v1/query"] } }', "ui_config.metrics_proxy.path_allowlist"),
    ('ui_config { metrics_proxy { timeout = "1s" } }', "ui_config.metrics_proxy.timeout"),
    ('ui_config { metrics_provider_files = ["/x.js"] }', "ui_config.metrics_provider_files"),
])
def test_bad_metrics_settings_name_the_key(hcl: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        _ui(hcl)


def test_the_reference_sample_is_the_oldest_in_the_window_else_the_last_before_it() -> None:
    from proconsul.agent.observe.proxy_stats import WINDOW, reference

    m = ProxyMetrics("web")
    at = [0.0, 200.0, 205.0, 210.0]
    samples = [parse_stats(stats(m), at=t) for t in at]
    assert reference(samples[:2]).at == 0.0  # first look after a pause: spans it (the Window says so)
    assert reference(samples).at == 200.0 and 210.0 - 200.0 <= WINDOW
