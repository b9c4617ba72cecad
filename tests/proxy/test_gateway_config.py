"""The gateways' pure configuration: `connect gateway` flags and registrations (connect/proxy/cli.py
gateway_plan), and an ingress entry's wildcard `*` expanded into the services of the listener's protocol, after
the services the listener names (connect/proxy/gateway.py)."""

from __future__ import annotations

import pytest

from proconsul.connect.proxy.cli import Options, ProxyCLIError, gateway_plan
from proconsul.connect.proxy.gateway import host_matches, ingress_config, wildcard_services

REG = {"ID": "ig", "Service": "ig", "Kind": "ingress-gateway"}
ENTRY = {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
    {"Port": 8080, "Protocol": "http", "Services": [{"Name": "*", "MaxConcurrentRequests": 7},
                                                     {"Name": "web", "Hosts": ["www.example.com"]}]},
    {"Port": 9000, "Protocol": "tcp", "Services": [{"Name": "db"}]}]}


def test_wildcard_exposes_the_services_of_the_listeners_protocol() -> None:
    wild = wildcard_services(ENTRY, ["web", "api", "db", "grpcsvc", "legacy"],
                             {"web": "http", "api": "HTTP", "db": "tcp", "grpcsvc": "grpc"}, "")
    assert wild == {8080: ("api", "web")}  # legacy: no service-defaults and no proxy-defaults protocol → tcp
    assert wildcard_services(ENTRY, ["legacy"], {}, "http") == {8080: ("legacy",)}
    cfg, listeners = ingress_config(REG, ENTRY, "127.0.0.1", wild)
    http = listeners[0]
    hosts = [(patterns, key.split(":")[0]) for patterns, key in http.routes]
    assert [h for h, _ in hosts] == [("www.example.com",), ("api.ingress.*",)], "named first, web not repeated"
    api = next(u for u in cfg.upstreams if u.destination_name == "api")
    assert api.local_bind_port == 8080 and api.limits.max_concurrent_requests == 7, "the wildcard's limits"
    assert host_matches("api.ingress.mesh", http.routes[1][0]) and not host_matches("db.ingress.mesh",
                                                                                     http.routes[1][0])


def test_a_wildcard_listener_with_nothing_to_expose_is_not_opened_yet() -> None:
    cfg, listeners = ingress_config(REG, {**ENTRY, "Listeners": [ENTRY["Listeners"][0] | {"Services": [
        {"Name": "*"}]}, ENTRY["Listeners"][1]]}, "127.0.0.1", {8080: ()})
    assert [x.port for x in listeners] == [9000] and [u.destination_name for u in cfg.upstreams] == ["db"]


@pytest.mark.parametrize(("opts", "words"), [
    (Options(gateway="exit", service="x"), "-gateway 'exit': must be one of ingress, terminating, mesh"),
    (Options(gateway="ingress"), "ingress gateways need -service NAME"),
    (Options(gateway="terminating", service="t", sidecar_for="web"), "drop -sidecar-for"),
    (Options(gateway="terminating", service="t", wan_address="127.0.0.1:1"), "are for mesh gateways"),
    (Options(gateway="mesh", address="nowhere"), "-address 'nowhere' must be HOST:PORT"),
    (Options(gateway="mesh", deregister_after_critical="soon"), "-deregister-after-critical: 'soon' is not a"),
])
def test_gateway_flags_are_checked_naming_the_flag(opts: Options, words: str) -> None:
    with pytest.raises(ProxyCLIError) as e:
        gateway_plan(opts)
    assert words in str(e.value)


def test_gateway_registrations_as_consuls_connect_envoy_register() -> None:
    mesh = gateway_plan(Options(mesh_gateway=True, register=True, address="10.0.0.5:8443",
                                wan_address="203.0.113.10:443", deregister_after_critical="90m"))
    assert mesh.registration == {
        "Kind": "mesh-gateway", "Name": "mesh-gateway", "ID": "mesh-gateway", "Address": "10.0.0.5", "Port": 8443,
        "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 8443},
                            "wan": {"Address": "203.0.113.10", "Port": 443}},
        "Check": {"Name": "mesh-gateway listening", "TCP": "10.0.0.5:8443", "Interval": "10s",
                  "DeregisterCriticalServiceAfter": "90m"}}
    tgw = gateway_plan(Options(gateway="terminating", service="tgw", proxy_id="tgw-1", register=True))
    assert (tgw.registration or {})["Kind"] == "terminating-gateway" and tgw.gateway_id == "tgw-1"
    assert (tgw.registration or {})["Check"]["DeregisterCriticalServiceAfter"] == "6h", "Consul's default"
    assert (tgw.host, tgw.port) == ("127.0.0.1", 8443)
    ig = gateway_plan(Options(gateway="ingress", service="ig", register=True, address="127.0.0.1:9000"))
    assert (ig.registration or {})["Kind"] == "ingress-gateway"
    assert (ig.registration or {})["Check"] == {"Name": "ingress-gateway listening", "TCP": "127.0.0.1:9000",
                                                "Interval": "10s", "DeregisterCriticalServiceAfter": "6h"}
    assert (tgw.registration or {})["Check"]["Name"] == "terminating-gateway listening"
    assert gateway_plan(Options(gateway="ingress", service="ig")).registration is None, "without -register"
