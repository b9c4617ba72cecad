"""SWIM + Lifeguard between real processes on 127.0.0.1: 3 servers, 2 client agents and 18 lightweight
members (the agent's LAN pool alone, `membership_swarm.py`). kill -9 a client → failed everywhere and
its service leaves DNS; SIGSTOP a client for less than the suspicion timeout → nobody declares it
dead; SIGSTOP an observer for 5 s → it declares no healthy member dead (Lifeguard); a user event
reaches every member; leave → left."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import AgentProcess, ServerCluster, wait_for

pytestmark = pytest.mark.xdist_group("cluster")
SWARM = Path(__file__).with_name("membership_swarm.py")
OBSERVER = "obs00"  # the lightweight member stopped for 5 s
DETECTION_BOUND = 30.0  # a probe round plus Lifeguard's suspicion timeout at 23 members, with slack for load


class Swarm:
    def __init__(self, workdir: Path, join: str, prefix: str, count: int) -> None:
        self.out = workdir / f"swarm-{prefix}.jsonl"
        self.proc = subprocess.Popen([sys.executable, str(SWARM), "--join", join, "--prefix", prefix, "--count",
                                      str(count)], stdout=open(self.out, "w"), stderr=subprocess.STDOUT)

    def events(self) -> list[list]:
        rows = []
        for line in self.out.read_text().splitlines():
            if line.startswith("["):
                rows.append(json.loads(line))
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def statuses(agent: AgentProcess) -> dict[str, int]:
    return {m["Name"]: m["Status"] for m in agent.get("/v1/agent/members")[1]}


def failed_in_logs(agent: AgentProcess) -> set[str]:
    return set(re.findall(r"member (\S+) failed", agent.log()))


def suspected_now(swarms: list[Swarm]) -> set[tuple[str, str]]:
    """(observer, member) pairs whose last event is a suspicion: suspicions not yet refuted or decided."""
    last: dict[tuple[str, str], str] = {}
    for s in swarms:
        for e in s.events():
            last[(e[0], e[2])] = e[1]
    return {pair for pair, kind in last.items() if kind == "suspect"}


def timeline(swarms: list[Swarm], since: float, names: set[str]) -> str:
    """Suspect, alive and failed events about `names` from `since` on (monotonic seconds), for messages."""
    rows = sorted((e[3] - since, e[0], e[1], e[2]) for s in swarms for e in s.events()
                  if e[2] in names and e[1] in ("suspect", "alive", "failed") and e[3] >= since)
    return "; ".join(f"{t:+.2f}s {o} {k} {m}" for t, o, k, m in rows[:60])


def test_crash_pause_observer_pause_and_leave_between_real_processes(tmp_path: Path) -> None:
    cluster = ServerCluster(tmp_path, 3)
    cluster.start()
    c1, c2 = cluster.client("c1", via=0), cluster.client("c2", via=1)
    swarms: list[Swarm] = []
    try:
        c1.start(30)
        c2.start(30)
        assert c1.put("/v1/agent/service/register", {"Name": "web", "Port": 8080})[0] == 200
        join = f"127.0.0.1:{cluster.servers[2].serf_lan_port}"
        swarms = [Swarm(tmp_path, join, "w", 17), Swarm(tmp_path, join, "obs", 1)]
        agents = [*cluster.servers, c1, c2]
        wait_for(lambda: all(len(statuses(a)) == 23 and set(statuses(a).values()) == {1} for a in agents), 60,
                 message="23 alive members in every agent's view")
        s0 = cluster.servers[0]
        wait_for(lambda: len(s0.get("/v1/health/service/web?passing")[1]) == 1, 20, message="web passing")

        # A client paused for less than the suspicion timeout is suspected at most, never failed.
        t0 = time.monotonic()
        os.kill(c2.proc.pid, signal.SIGSTOP)
        time.sleep(2.5)  # the fault's length is the point of the test, not a wait for a condition
        os.kill(c2.proc.pid, signal.SIGCONT)
        # The faults do not overlap: every suspicion of c2 refuted (or decided) before the observer stops.
        wait_for(lambda: not suspected_now(swarms), 40, message="no suspicion left after c2's pause")
        # An observer paused for 5 s (its probes time out, its timers pile up) accuses nobody for good.
        observer = swarms[1]
        t1 = time.monotonic()
        os.kill(observer.proc.pid, signal.SIGSTOP)
        time.sleep(5.0)  # as above: the pause's length is the fault under test
        os.kill(observer.proc.pid, signal.SIGCONT)
        # Its pause has played out once nobody suspects anyone any more (its own stale accusations have
        # been refuted or have timed out, and it has refuted the suspicions of itself).
        wait_for(lambda: not suspected_now(swarms), 60, message="no suspicion left after the observer's pause")
        healthy = {"c2", *(f"w{i:02d}" for i in range(17)), *(a.workdir.name for a in cluster.servers)}
        for a in (*cluster.servers, c1, c2):
            assert failed_in_logs(a) <= {OBSERVER}, (a.workdir.name, failed_in_logs(a), timeline(swarms, t0, healthy))
        wrong = {(e[0], e[2]) for s in swarms for e in s.events() if e[1] == "failed" and e[2] != OBSERVER}
        assert not wrong, (wrong, timeline(swarms, t0, healthy | {OBSERVER}))
        # The observer was itself stopped for 5 s, near the 5.4 s suspicion timeout at 23 members: others
        # may declare it failed if its refutation is late (load), which is not Lifeguard's claim — but it
        # is alive again in every view (it refutes with a newer incarnation).
        wait_for(lambda: all(statuses(a).get(OBSERVER) == 1 for a in agents), 30,
                 message=f"{OBSERVER} alive again in every agent's view")
        observer_failed = [(e[0], round(e[3] - t1, 2)) for e in swarms[0].events() if e[1:3] == ["failed", OBSERVER]]

        # A user event fired on one agent reaches every member by gossip.
        status, ev = s0.put("/v1/event/fire/deploy?service=web", raw=b"v2")
        assert status == 200 and ev["Name"] == "deploy" and ev["ServiceFilter"] == "web"
        wait_for(lambda: len([e for s in swarms for e in s.events() if e[1] == "user-event"]) == 18, 20,
                 message="the event at every lightweight member")
        # kept only where the service filter matches (c1 runs web), as Consul's agents do
        wait_for(lambda: [e["ID"] for e in c1.get("/v1/event/list?name=deploy")[1]] == [ev["ID"]], 20,
                 message="the event at c1")
        assert c2.get("/v1/event/list?name=deploy")[1] == []

        # kill -9: failed everywhere within the bound, and its service leaves ?passing and DNS.
        killed_at = time.monotonic()
        c1.proc.kill()
        c1.proc.wait()
        wait_for(lambda: all(statuses(a).get("c1") == 4 for a in (*cluster.servers, c2)), DETECTION_BOUND,
                 message="c1 failed in every agent's view")
        wait_for(lambda: len([e for e in swarms[0].events() if e[1:3] == ["failed", "c1"]]) == 17, DETECTION_BOUND,
                 message="c1 failed in every lightweight member's view")
        detected = time.monotonic() - killed_at
        wait_for(lambda: s0.get("/v1/health/service/web?passing")[1] == [], 20, message="web to leave ?passing")
        if shutil.which("dig"):
            answer = subprocess.run(["dig", "@127.0.0.1", "-p", str(s0.dns_port), "+time=3", "+tries=1", "+short",
                                     "web.service.mesh"], capture_output=True, text=True, timeout=20).stdout
            assert answer.strip() == "", answer

        # Nobody ever declared a healthy member failed: not the paused client, not anyone the observer probed.
        for a in agents:
            if a is not c1:
                assert failed_in_logs(a) <= {"c1", OBSERVER}, (a.workdir.name, failed_in_logs(a))
        wrong = {(e[0], e[2]) for s in swarms for e in s.events() if e[1] == "failed" and e[2] not in ("c1", OBSERVER)}
        assert not wrong, wrong

        # A graceful leave is "left" everywhere.
        assert c2.stop(signal.SIGTERM) == 0
        wait_for(lambda: all(statuses(a).get("c2") == 3 for a in cluster.servers), 20,
                 message="c2 left in every server's view")
        wait_for(lambda: len([e for e in swarms[0].events() if e[1:3] == ["left", "c2"]]) == 17, 20,
                 message="c2 left in every lightweight member's view")
        print(f"c1 detected failed everywhere {detected:.1f} s after kill -9; the paused observer declared failed "
              f"(then refuted) by {observer_failed or 'nobody'}")
    finally:
        for s in swarms:
            s.stop()
        c1.stop()
        c2.stop()
        cluster.stop()
