"""The gateways' pure configuration (connect/proxy/gateway.py): an ingress entry's wildcard `*` expanded into
the services of the listener's protocol, after the services the listener names."""

from __future__ import annotations

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
