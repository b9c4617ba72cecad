"""The gateways' access-log lines (connect/proxy/gateway_log.py): following proxy-defaults, the L4 record with
Envoy's fields, and DisableListenerLogs leaving out connections refused before they reached a service."""

from __future__ import annotations

import json
import time
from pathlib import Path

from proconsul.connect.proxy.gateway_log import DENIED, GatewayAccessLog


def test_lines_follow_proxy_defaults_and_disable_listener_logs(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    gw = GatewayAccessLog()
    gw.connection(time.monotonic(), received=1, sent=1, peer="127.0.0.1:1", cluster="c", service="s")  # off: nothing
    gw.apply([{"Kind": "proxy-defaults", "Name": "global",
                     "AccessLogs": {"Enabled": True, "Type": "file", "Path": str(path)}}])
    gw.connection(time.monotonic() - 0.05, received=10, sent=20, peer="127.0.0.1:5000", cluster="api.default.default.dc1",
                  service="api", host="10.0.0.1:443", peer_uri="spiffe://td/ns/default/dc/dc1/svc/web")
    gw.connection(time.monotonic(), received=0, sent=0, peer="127.0.0.1:5001", cluster="api.default.default.dc1",
                  service="api", details=DENIED)
    gw.connection(time.monotonic(), received=18, sent=0, peer="127.0.0.1:5002", cluster="", service="", flag="NR",
                  listener=True)
    ok, denied, no_route = [json.loads(x) for x in path.read_text().splitlines()]
    assert ok["protocol"] == "TCP" and ok["response_flags"] == "-" and ok["duration"] >= 50
    assert (ok["bytes_received"], ok["bytes_sent"], ok["upstream_host"]) == (10, 20, "10.0.0.1:443")
    assert ok["downstream_remote_address"] == "127.0.0.1:5000" and ok["downstream_peer_uri_san"].endswith("/web")
    assert denied["response_code_details"] == "rbac_access_denied_matched_policy[none]"
    assert no_route["response_flags"] == "NR" and "upstream_cluster" not in no_route

    gw.apply([{"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
        "Enabled": True, "Type": "file", "Path": str(path), "DisableListenerLogs": True}}])
    gw.connection(time.monotonic(), received=18, sent=0, peer="127.0.0.1:5003", cluster="", service="", flag="NR",
                  listener=True)
    gw.connection(time.monotonic(), received=0, sent=0, peer="127.0.0.1:5004", cluster="x", service="x", flag="UH")
    assert [json.loads(x)["response_flags"] for x in path.read_text().splitlines()][3:] == ["UH"]
    gw.apply([])  # the entry deleted: logging stops
    assert gw.log is None
    gw.close()
