"""`translate_wan_addrs`'s rule, pure: which address of a node or service another datacenter is given, and the
answer shapes of the endpoints Consul translates."""

from __future__ import annotations

from proconsul.catalog.translate import (
    ACCEPT_ANY,
    ACCEPT_DOMAIN,
    ACCEPT_IPV4,
    CHECK_SERVICE_NODES,
    NODE_SERVICES,
    NODES,
    QUERY_RESULT,
    SERVICE_NODES,
    node_address,
    service_address,
    service_port,
    shape_of,
    translate_body,
)

NODE_TAGS = {"lan": "10.0.0.5", "lan_ipv4": "10.0.0.5", "wan": "198.51.100.5", "wan_ipv4": "198.51.100.5"}
SVC_TAGS = {"wan": {"Address": "198.51.100.6", "Port": 9443}}


def test_node_address_prefers_wan_ones_and_consuls_order() -> None:
    assert node_address("10.0.0.5", NODE_TAGS, ACCEPT_ANY) == "198.51.100.5"
    assert node_address("10.0.0.5", {"lan": "10.0.0.5"}, ACCEPT_ANY) == "10.0.0.5", "no wan tag: as it is"
    # Consul's order for the HTTP API (accepts anything): an IPv6 candidate, then IPv4, then the default.
    dual = {"wan": "wan.example", "wan_ipv4": "198.51.100.7", "wan_ipv6": "2001:db8::7"}
    assert node_address("10.0.0.7", dual, ACCEPT_ANY) == "2001:db8::7"
    assert node_address("10.0.0.7", dual, ACCEPT_IPV4 | ACCEPT_DOMAIN) == "198.51.100.7"
    assert node_address("10.0.0.7", {"wan": "wan.example"}, ACCEPT_IPV4 | ACCEPT_DOMAIN) == "wan.example"


def test_service_address_and_port() -> None:
    assert service_address("10.0.0.6", SVC_TAGS, ACCEPT_ANY) == "198.51.100.6"
    assert service_port(8443, SVC_TAGS) == 9443
    assert service_port(8443, {"wan": {"Address": "198.51.100.6", "Port": 0}}) == 8443, "no wan port: its own"
    assert service_address("", {}, ACCEPT_ANY) == "", "no address of its own stays none (DNS uses the node's)"


def test_every_translated_endpoint_has_a_shape_and_others_none() -> None:
    assert shape_of("/v1/catalog/nodes") == NODES
    assert shape_of("/v1/catalog/service/api") == SERVICE_NODES
    assert shape_of("/v1/catalog/node/far") == NODE_SERVICES
    assert shape_of("/v1/health/service/api") == CHECK_SERVICE_NODES
    assert shape_of("/v1/query/abc/execute") == QUERY_RESULT
    assert shape_of("/v1/kv/x") == shape_of("/v1/health/checks/api") == shape_of("/v1/query/abc/explain") == ""


def test_bodies_of_each_shape_are_translated() -> None:
    node = {"Node": "far", "Address": "10.0.0.5", "TaggedAddresses": NODE_TAGS}
    svc = {"ID": "api-1", "Address": "10.0.0.6", "Port": 8443, "TaggedAddresses": SVC_TAGS}
    assert translate_body(NODES, [dict(node)])[0]["Address"] == "198.51.100.5"
    (row,) = translate_body(SERVICE_NODES, [{**node, "ServiceAddress": "10.0.0.6", "ServicePort": 8443,
                                             "ServiceTaggedAddresses": SVC_TAGS}])
    assert (row["Address"], row["ServiceAddress"], row["ServicePort"]) == ("198.51.100.5", "198.51.100.6", 9443)
    (entry,) = translate_body(CHECK_SERVICE_NODES, [{"Node": dict(node), "Service": dict(svc), "Checks": []}])
    assert (entry["Node"]["Address"], entry["Service"]["Address"], entry["Service"]["Port"]) == (
        "198.51.100.5", "198.51.100.6", 9443)
    listed = translate_body(NODE_SERVICES, {"Node": dict(node), "Services": [dict(svc)]})
    assert listed["Services"][0]["Port"] == 9443 and listed["Node"]["Address"] == "198.51.100.5"
    keyed = translate_body(NODE_SERVICES, {"Node": dict(node), "Services": {"api-1": dict(svc)}})
    assert keyed["Services"]["api-1"]["Address"] == "198.51.100.6"
    result = translate_body(QUERY_RESULT, {"Datacenter": "dc2", "Nodes": [{"Node": dict(node), "Service": dict(svc)}]})
    assert result["Nodes"][0]["Service"]["Port"] == 9443
    assert translate_body(NODES, None) is None, "an answer of another shape is left as it is"
