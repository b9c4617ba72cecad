"""User events as Consul documents them (api-docs/event, commands/event, watches): fire and list through
py-consul, blocking lists, the node/service/tag filters, Consul's refusals, `proconsul event` with Consul's
flags, `proconsul watch -type event`, and a client agent's event reaching its server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import consul
import pytest
from support import CLI, AgentProcess, ServerCluster, ok, one_line_error, run, wait_for


@pytest.fixture
def c(shared_dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=shared_dev_agent.http_port)


def test_fire_and_list_with_consul_shapes(c: consul.Consul) -> None:
    fired = c.event.fire("deploy-ev", "v2")
    assert set(fired) == {"ID", "Name", "Payload", "NodeFilter", "ServiceFilter", "TagFilter", "Version",
                                  "LTime"}
    assert fired["Name"] == "deploy-ev" and fired["Version"] == 1 and fired["LTime"] >= 1
    index, events = c.event.list(name="deploy-ev")
    assert [e["ID"] for e in events] == [fired["ID"]] and events[0]["Payload"] == b"v2"  # py-consul decodes it
    assert int(index) > 0  # X-Consul-Index, as py-consul hands it back (a string)
    empty = c.event.fire("no-payload-ev")
    assert empty["Payload"] is None  # Consul's shape for an event without a body


def test_blocking_list_returns_when_an_event_arrives(c: consul.Consul) -> None:
    c.event.fire("block-ev", "1")
    index, _ = c.event.list(name="block-ev")
    started = time.monotonic()
    same, _ = c.event.list(name="block-ev", index=index, wait="1s")  # nothing new: it waits the whole second
    assert same == index and time.monotonic() - started >= 0.9
    got: dict = {}

    def wait() -> None:
        got["index"], got["events"] = c.event.list(name="block-ev", index=index)

    t = threading.Thread(target=wait)
    started = time.monotonic()
    t.start()
    c.event.fire("block-ev", "2")
    t.join(10)
    assert got["index"] != index and [e["Payload"] for e in got["events"]] == [b"1", b"2"]
    assert time.monotonic() - started < 5  # woken by the event, not by the 5-minute wait


def test_filters_decide_who_keeps_an_event(c: consul.Consul, shared_dev_agent: AgentProcess) -> None:
    c.agent.service.register("ev-web", tags=["canary"], port=9100)
    other = c.event.fire("filtered-ev", "x", node="^not-this-node$")
    mine = c.event.fire("filtered-ev", "y", node="^dev$")
    by_service = c.event.fire("filtered-ev", "z", service="^ev-web$", tag="canary")
    no_service = c.event.fire("filtered-ev", "w", service="^absent$")
    kept = [e["ID"] for e in c.event.list(name="filtered-ev")[1]]
    assert kept == [mine["ID"], by_service["ID"]]
    assert other["NodeFilter"] == "^not-this-node$" and no_service["ServiceFilter"] == "^absent$"


@pytest.mark.parametrize("path, error", [
    ("/v1/event/fire/x?tag=v1", "Cannot provide tag filter without service filter"),
    ("/v1/event/fire/x?node=(", "Invalid node filter"),
    ("/v1/event/fire/x?service=web&tag=[", "Invalid tag filter"),
    ("/v1/event/fire/_internal", "reserved for Consul"),  # _rexec alone is let through: exec fires it
])
def test_refusals_are_400s_with_consuls_words(shared_dev_agent: AgentProcess, path: str, error: str) -> None:
    status, text, _ = shared_dev_agent.request("PUT", path, raw=b"")
    assert status == 400 and error in text, (status, text)


def test_payload_limit(shared_dev_agent: AgentProcess) -> None:
    status, text, _ = shared_dev_agent.request("PUT", "/v1/event/fire/big", raw=b"x" * 600)
    assert status == 400 and "exceeds configured limit of 512 bytes" in text


def test_event_cli_with_consul_flags(shared_dev_agent: AgentProcess) -> None:
    out = ok(shared_dev_agent, "event", "-name=cli-ev", "-node", "^dev$", "hello")
    assert out.startswith("Event ID: ")
    event_id = out.split()[-1]
    [event] = [e for e in shared_dev_agent.get("/v1/event/list?name=cli-ev")[1]]
    assert event["ID"] == event_id and base64.b64decode(event["Payload"]) == b"hello"
    assert event["NodeFilter"] == "^dev$"
    fired = json.loads(ok(shared_dev_agent, "event", "-name", "cli-ev", "-format", "json", "-", stdin="from stdin"))
    assert base64.b64decode(fired["Payload"]) == b"from stdin"
    assert "Event name must be specified" in one_line_error(run(shared_dev_agent, "event", "payload"))
    assert "tag filter without service filter" in one_line_error(run(shared_dev_agent, "event", "-name", "e",
                                                                    "-tag", "v1"))
    assert "Too many command line arguments" in one_line_error(run(shared_dev_agent, "event", "-name", "e", "a", "b"))
    assert "Invalid service filter" in one_line_error(run(shared_dev_agent, "event", "-name", "e", "-service", "("))


def test_watch_type_event_runs_the_handler(shared_dev_agent: AgentProcess, tmp_path: Path) -> None:
    out_file = tmp_path / "seen.jsonl"
    handler = f"cat >> {out_file}; echo >> {out_file}"
    proc = subprocess.Popen([*CLI, "watch", "-type", "event", "-name", "watch-ev", handler],
                            env=dict(os.environ, PROCONSUL_HTTP_ADDR=shared_dev_agent.addr),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # The handler runs once for the current (empty) list, then once per new event.
        wait_for(lambda: out_file.exists() and out_file.read_text().strip() == "[]", timeout=15,
                 message="the watch's first run")
        ok(shared_dev_agent, "event", "-name", "watch-ev", "first")
        wait_for(lambda: "Zmlyc3Q=" in out_file.read_text(), timeout=15, message="the handler to see the event")
        ok(shared_dev_agent, "event", "-name", "watch-ev", "second")
        wait_for(lambda: "c2Vjb25k" in out_file.read_text(), timeout=15, message="the handler to see the next one")
        runs = [json.loads(line) for line in out_file.read_text().splitlines() if line.strip()]
        # As Consul's event watch: each run gets only the events after those it was already given.
        assert [[base64.b64decode(e["Payload"]) for e in run] for run in runs] == [[], [b"first"], [b"second"]]
    finally:
        proc.terminate()
        proc.wait(10)
    # Without a handler, the current list is printed and the command exits, as Consul's watch does.
    printed = json.loads(ok(shared_dev_agent, "watch", "-type", "event", "-name", "watch-ev"))
    assert [e["Name"] for e in printed] == ["watch-ev", "watch-ev"]


def test_a_client_agents_event_reaches_its_server_and_the_rest_forwards(tmp_path: Path) -> None:
    cluster = ServerCluster(tmp_path / "c", n=1)
    cluster.start()
    client = cluster.client("ev-client")
    try:
        client.start()
        server = cluster.servers[0]
        wait_for(lambda: any(m["Name"] == "ev-client" for m in server.get("/v1/agent/members")[1]), timeout=20,
                 message="the client to join")
        status, fired = client.put("/v1/event/fire/cluster-ev", raw=b"from the client")
        assert status == 200
        def ids(agent: AgentProcess) -> list[str]:
            return [e["ID"] for e in agent.get("/v1/event/list?name=cluster-ev")[1]]

        for agent in (client, server):  # delivered by gossip: wait for it
            wait_for(lambda a=agent: ids(a) == [fired["ID"]], timeout=15, message=f"the event on {agent.addr}")
        status, only_server = client.put("/v1/event/fire/cluster-ev?node=^s0$", raw=b"")
        wait_for(lambda: ids(server)[-1] == only_server["ID"], timeout=15, message="the filtered event on the server")
        assert ids(client) == [fired["ID"]]
        # The rest of this surface through a client agent, which forwards to its server over RPC.
        client.put("/v1/agent/service/register", {"Name": "cl-web", "Port": 80})
        wait_for(lambda: client.get("/v1/catalog/service/cl-web")[1], timeout=15, message="anti-entropy")
        status, out, _ = client.request("POST", "/v1/query", {"Name": "cl-q", "Service": {"Service": "cl-web",
                                                                                          "Near": "_agent"}})
        assert status == 200
        result = client.get("/v1/query/cl-q/execute")[1]
        assert [n["Node"]["Node"] for n in result["Nodes"]] == ["ev-client"]
        assert server.get("/v1/query/cl-q/explain")[1]["Query"]["ID"] == out["ID"]
        status, out, headers = client.request("PUT", "/v1/txn?stale", [{"Node": {"Verb": "get",
                                                                                  "Node": {"Node": "s0"}}}])
        assert status == 200 and out["Results"][0]["Node"]["Node"] == "s0" and "X-Consul-LastContact" in headers
        assert client.put("/v1/coordinate/update", {"Node": "ev-client", "Coord": {"Vec": [0.001] * 8}})[0] == 200
        wait_for(lambda: server.get("/v1/coordinate/node/ev-client")[0] == 200, message="the coordinate")
    finally:
        client.stop()
        cluster.stop()
