"""Mesh gateway probes for the link view: which address is probed, and a real probe of a listener and a
closed port on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

from support import free_port

from proconsul.agent.connect.gateway_probe import GatewayProbes, gateway_addresses


def gw(port: int, wan: int | None = None, kind: str = "mesh-gateway", wan_addr: str = "127.0.0.2") -> dict:
    svc = {"Kind": kind, "Address": "127.0.0.1", "Port": port,
           "TaggedAddresses": {"lan": {"Address": "127.0.0.1", "Port": port}}}
    if wan:
        svc["TaggedAddresses"]["wan"] = {"Address": wan_addr, "Port": wan}
    return {"Node": {"Node": "n", "Address": "127.0.0.9"}, "Service": svc}


def test_lan_address_here_wan_address_elsewhere_gateways_only() -> None:
    entries = [gw(1000, 2000), gw(1001), gw(1002, kind="connect-proxy"), gw(1000, 2000)]
    assert gateway_addresses(entries, local=True) == [("127.0.0.1", 1000), ("127.0.0.1", 1001)]
    assert gateway_addresses(entries, local=False) == [("127.0.0.2", 2000), ("127.0.0.1", 1001)]


def test_a_round_probes_every_datacenter_and_reports_failures() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    up, down = listener.getsockname()[1], free_port()

    async def dcs() -> list[str]:
        return ["dc1", "dc2", "dc3"]

    async def list_gateways(dc: str) -> list[dict]:
        if dc == "dc3":
            raise ConnectionError("Remote DC has no server currently reachable")
        return [gw(up)] if dc == "dc1" else [gw(down, up, wan_addr="127.0.0.1"), gw(up, down, wan_addr="127.0.0.1")]

    probes = GatewayProbes("dc1", dcs, list_gateways)
    try:
        asyncio.run(probes.round())
    finally:
        listener.close()
    report = probes.report()
    assert report["dc1"]["Reachable"] and [g["OK"] for g in report["dc1"]["Gateways"]] == [True]
    dc2 = report["dc2"]  # probed at their wan addresses: the first listens there, the second does not
    assert dc2["Reachable"] and [(g["Port"], g["OK"]) for g in dc2["Gateways"]] == [(up, True), (down, False)]
    assert dc2["Gateways"][1]["Error"] and dc2["Gateways"][0]["ConnectMillis"] is not None
    assert report["dc3"] == {"Reachable": False, "Gateways": [],
                             "Error": "cannot list its mesh gateways: Remote DC has no server currently reachable"}
