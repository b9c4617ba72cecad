"""Connect.SidecarService expansion: Consul's defaults, overrides, ports and refusals (pure)."""

from __future__ import annotations

import pytest

from proconsul.agent.local import sidecar
from proconsul.agent.local.definitions import DefinitionError, service_definition


def parent(**connect: object) -> dict:
    return service_definition({"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"], "Meta": {"team": "a"},
                               "Connect": connect})


def test_defaults_are_consuls() -> None:
    sc = sidecar.expand(parent(SidecarService={}), used_ports=set(), min_port=21000, max_port=21255)
    assert sc is not None
    assert (sc["ID"], sc["Name"], sc["Kind"], sc["Port"]) == ("web-1-sidecar-proxy", "web-sidecar-proxy",
                                                              "connect-proxy", 21000)
    assert (sc["Tags"], sc["Meta"]) == (["v1"], {"team": "a"})
    p = sc["Proxy"]
    assert (p["DestinationServiceName"], p["DestinationServiceID"], p["LocalServiceAddress"],
            p["LocalServicePort"], p["Upstreams"]) == ("web", "web-1", "127.0.0.1", 8080, [])
    names = [c["Name"] for c in sc["Checks"]]
    assert names == ["Connect Sidecar Listening", "Connect Sidecar Aliasing web-1"]
    assert sc["Checks"][0]["TCP"] == "127.0.0.1:21000" and sc["Checks"][0]["Kind"] == "tcp"
    assert sc["Checks"][1]["AliasService"] == "web-1" and sc["Checks"][1]["Kind"] == "alias"


def test_snake_case_upstreams_from_an_hcl_file() -> None:
    # python-hcl2 gives blocks as lists of one object; Consul's files use snake_case keys.
    raw = {"name": "web", "port": 8080, "connect": [{"sidecar_service": [{"proxy": [{"upstreams": [
        {"destination_name": "db", "local_bind_port": 15432}]}]}]}]}
    sc = sidecar.expand(service_definition(raw), used_ports=set(), min_port=21000, max_port=21255)
    assert sc is not None
    up = sc["Proxy"]["Upstreams"][0]
    assert (up["DestinationName"], up["LocalBindPort"], up["DestinationType"]) == ("db", 15432, "service")


def test_ports_skip_those_in_use_and_keep_the_current_one() -> None:
    p = parent(SidecarService={})
    assert sidecar.expand(p, used_ports={21000, 21001}, min_port=21000, max_port=21255)["Port"] == 21002
    assert sidecar.expand(p, used_ports={21000}, min_port=21000, max_port=21255, current_port=21100)["Port"] == 21100
    with pytest.raises(sidecar.NoSidecarPort, match="sidecar_min_port"):
        sidecar.expand(p, used_ports={21000, 21001}, min_port=21000, max_port=21001)


def test_overrides_and_own_checks() -> None:
    sc = sidecar.expand(parent(SidecarService={"Port": 30000, "Tags": [], "Check": {"TTL": "10s"}}),
                        used_ports=set(), min_port=21000, max_port=21255)
    assert (sc["Port"], sc["Tags"]) == (30000, [])
    assert [c["Kind"] for c in sc["Checks"]] == ["ttl"]


@pytest.mark.parametrize("bad", [{"ID": "mine"}, {"Kind": "mesh-gateway"},
                                 {"Proxy": {"Upstreams": [{"DestinationName": "db"}]}},
                                 {"Proxy": {"Upstreams": [{"LocalBindPort": 1}]}}])
def test_refused_sidecar_definitions_name_the_field(bad: dict) -> None:
    with pytest.raises(DefinitionError, match="SidecarService"):
        sidecar.expand(parent(SidecarService=bad), used_ports=set(), min_port=21000, max_port=21255)


def test_no_sidecar_service_no_sidecar() -> None:
    assert sidecar.expand(parent(), used_ports=set(), min_port=21000, max_port=21255) is None
    assert sidecar.is_sidecar_of({"ID": "web-1-sidecar-proxy", "Kind": "connect-proxy",
                                  "Proxy": {"DestinationServiceID": "web-1"}}, "web-1")
    assert not sidecar.is_sidecar_of({"ID": "web-1-sidecar-proxy", "Kind": "", "Proxy": {}}, "web-1")
