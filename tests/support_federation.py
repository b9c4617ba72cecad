"""Test support for federation: three datacenters of real agent processes on 127.0.0.1 — dc1 (one
server and a client agent), dc2 (three servers that find each other on the LAN and flood-join the
WAN), dc3 (a dev agent) — and mesh gateway processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import CLI, AgentProcess, ServerCluster, free_port, get_text, wait_for

# Fast WAN failure detection for tests: a silent server is failed after 5 × 200 ms.
WAN_FAST = {"gossip_wan": {"probe_interval": "200ms", "probe_timeout": "100ms", "suspicion_mult": 5}, "enable_debug": True}


@dataclass
class Federation:
    a: AgentProcess  # the dc1 server
    c1: AgentProcess  # a dc1 client agent
    dc2: ServerCluster
    d: AgentProcess  # dc3, a dev agent

    def all_servers(self) -> list[AgentProcess]:
        return [self.a, *self.dc2.servers, self.d]


def wan_names(agent: AgentProcess, status: int = 1) -> set[str]:
    return {m["Name"] for m in agent.get("/v1/agent/members?wan")[1] if m["Status"] == status}


def start_federation(root: Path, primary: bool = False) -> Federation:
    """Start the three datacenters; with `primary`, dc1 is everyone's primary_datacenter."""
    conf = dict(WAN_FAST, **({"primary_datacenter": "dc1"} if primary else {}))
    (root / "wan.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "wan.json").write_text(json.dumps(conf))
    common = ["--config-file", str(root / "wan.json")]
    a = AgentProcess(root / "a", dev=False, args=["--server", "--bootstrap-expect", "1", "--node", "a",
                                                  "--datacenter", "dc1", "--data-dir", str(root / "a" / "data"),
                                                  *common])
    join = ["--retry-join-wan", f"127.0.0.1:{a.serf_wan_port}"]
    dc2 = ServerCluster(root / "dc2", 3, extra_args=["--datacenter", "dc2", *join], config=conf)
    d = AgentProcess(root / "d", dev=True, args=["--node", "d", "--datacenter", "dc3", *join, *common])
    c1 = AgentProcess(root / "c1", dev=False, args=["--node", "c1", "--datacenter", "dc1", "--data-dir",
                                                    str(root / "c1" / "data"), "--retry-interval", "1s",
                                                    "--retry-join", f"127.0.0.1:{a.serf_lan_port}", *common])
    fed = Federation(a, c1, dc2, d)
    try:
        a.start()
        dc2.start()
        d.start()
        c1.start()
        everyone = {"a.dc1", "s0.dc2", "s1.dc2", "s2.dc2", "d.dc3"}
        for server in fed.all_servers():
            wait_for(lambda s=server: wan_names(s) == everyone, 20, message=f"{server.addr} to see the WAN pool")
    except BaseException:
        stop_federation(fed)
        raise
    return fed


def stop_federation(fed: Federation) -> None:
    for agent in (fed.c1, fed.d, fed.a):
        agent.stop()
    fed.dc2.stop()


def two_datacenters(tmp: Path) -> tuple[AgentProcess, AgentProcess]:
    """dc1 (the primary) and dc2 as dev agents joined over the WAN, not started yet (see `start_two`)."""
    conf = tmp / "fed.json"
    tmp.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps({"primary_datacenter": "dc1",
                                "gossip_wan": {"probe_interval": "200ms", "probe_timeout": "100ms"}}))
    a = AgentProcess(tmp / "a", args=["--node", "a", "--datacenter", "dc1", "--config-file", str(conf)])
    b = AgentProcess(tmp / "b", args=["--node", "b", "--datacenter", "dc2", "--config-file", str(conf),
                                       "--retry-join-wan", f"127.0.0.1:{a.serf_wan_port}"])
    return a, b


def start_two(a: AgentProcess, b: AgentProcess) -> None:
    """Start both and wait until dc2 signs with an intermediate under dc1's active root."""
    a.start()
    b.start()
    roots = a.get("/v1/connect/ca/roots")[1]
    wait_for(lambda: b.get("/v1/connect/ca/roots")[1]["ActiveRootID"] == roots["ActiveRootID"], 15,
             message="dc2 to follow dc1's CA")


class Gateway:
    """`proconsul connect gateway -mesh -register` as a child process; dc1's is started with Consul's older
    spelling `connect proxy -mesh-gateway`, which must keep working."""

    def __init__(self, agent: AgentProcess, workdir: Path, name: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.capture = workdir / f"{name}.capture"
        self.log_path = workdir / f"{name}.log"
        kind = ["proxy", "-mesh-gateway"] if name.endswith("dc1") else ["gateway", "-mesh"]
        self.cmd = [*CLI, "connect", *kind, "-register", "-address", f"127.0.0.1:{self.port}",
                    "-wan-address", f"127.0.0.1:{self.port}", "-capture-file", str(self.capture),
                    "-admin-bind", f"127.0.0.1:{self.admin_port}", "-http-addr", agent.addr, "-log-level", "debug"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for(listening, 20, message="the mesh gateway to listen")
        return self

    def admin(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on the gateway's admin listener."""
        return get_text(f"http://127.0.0.1:{self.admin_port}{path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
