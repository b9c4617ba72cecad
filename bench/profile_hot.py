"""py-spy profiles of the hot paths under load (issue 17): the evidence behind each optimisation.

`raft`: three servers on disk, wrk writing through the leader (c=16) and through a follower (c=64),
py-spy on the leader and on the entry follower. `dns`: a dev agent with 100 names under dnsperf.
`health`: a dev agent with 50 instances under wrk on `health/service/web?passing`. Writes raw
collapsed stacks to bench/results/profile-*.txt (any flame-graph tool reads them) and prints each
profile's top frames by self and by inclusive samples. `--gil` keeps only samples that hold the GIL
(Python's own CPU time: waits in epoll, fsync and the idle executor thread drop out). `--cpus N`
pins everything to the first N cores.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, AgentProcess, http_json, need, pin, pinned, wrk
from raft_bench import KEYS, Proconsul, lua_script

OUT = REPO / "bench" / "results"


def py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(path).exists():
        sys.exit("py-spy is missing: .venv/bin/pip install py-spy")
    return path


# Start-up frames under every sample (the CLI, asyncio.run, thread bootstrap): left out of the
# inclusive ranking, where they would only say "100%".
ENTRY_FRAMES = ("<frozen runpy>", "typer/", "_click/", "asyncio/runners.py", "threading.py", "__main__.py",
                "(main.py:", "(agent.py:117)", "(agent.py:145)")
GIL: list[str] = []  # ["--gil"]: only samples holding the GIL, i.e. Python's own CPU time, not waits
SVG: dict[str, Path | str] = {}  # --svg DIR --tag T: also a flame graph per profile, DIR/flame-<name>T.svg


class Spies:
    """py-spy on one process: raw collapsed stacks (for the tables), plus a flame graph SVG when asked."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs

    def wait(self) -> None:
        for p in self.procs:
            p.wait()


def record(pid: int, name: str, seconds: int) -> Spies:
    """Start py-spy on `pid` for `seconds`, writing raw collapsed stacks (and a flame graph with --svg)."""
    def spy(fmt: str, rate: int, out: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen([py_spy(), "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate),
                                 "--nonblocking", *GIL, "-f", fmt, "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [spy("raw", 200, OUT / f"profile-{name}.txt")]
    if SVG:
        procs.append(spy("flamegraph", 100, Path(SVG["dir"]) / f"flame-{name}{SVG['tag']}.svg"))  # 2nd spy, 100 Hz
    return Spies(procs)


def summarise(name: str, top: int) -> None:
    """Print the top frames of a collapsed-stack file by self and inclusive samples."""
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in (OUT / f"profile-{name}.txt").read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        self_n[frames[-1]] += count
        for f in set(frames):
            if not any(part in f for part in ENTRY_FRAMES):
                incl[f] += count
    print(f"== {name}: {total} samples")
    for title, counter in (("self", self_n), ("inclusive", incl)):
        print(f"  top {top} by {title}:")
        for frame, n in counter.most_common(top):
            print(f"    {100 * n / max(total, 1):5.1f}%  {frame}")


def raft(args: argparse.Namespace, root: Path) -> list[str]:
    pc = Proconsul(root, args.cpus)
    try:
        lead, fol = pc.leader(), pc.follower()
        script = lua_script(root / "pc.lua", "proconsul")
        names = []
        for label, target, conns in (("leader-c16", lead, 16), ("follower-c64", fol, 64)):
            spies = [record(s.proc.pid, f"raft-{label}-{'leader' if s is lead else 'entry'}", args.seconds)
                     for s in dict.fromkeys((lead, target)) if s.proc]
            names += [f"raft-{label}-leader"] + ([f"raft-{label}-entry"] if target is not lead else [])
            r = wrk(target.url, conns, args.seconds + 1, script=script, cpus=args.cpus)
            print(f"raft {label}: {r.rps:,.0f} writes/s p99 {r.p99_ms} ms ({KEYS} keys)", flush=True)
            for s in spies:
                s.wait()
        return names
    finally:
        pc.stop()


def dns(args: argparse.Namespace, root: Path) -> list[str]:
    need("dnsperf", "dnsperf")
    agent = AgentProcess(root / "agent", dev=True, args=["--log-level", "warn"])
    agent.start()
    try:
        pin([agent.proc.pid], args.cpus)  # type: ignore[union-attr]
        for i in range(100):
            http_json("PUT", f"{agent.url}/v1/catalog/register", {
                "Node": f"node-{i}", "Address": f"10.0.0.{i + 1}", "Service": {"Service": f"svc-{i}", "Port": 80}})
        queries = root / "q.txt"
        queries.write_text("".join(f"svc-{i}.service.mesh A\n" for i in range(100)))
        spy = record(agent.proc.pid, "dns", args.seconds)  # type: ignore[union-attr]
        subprocess.run(pinned(["dnsperf", "-s", "127.0.0.1", "-p", str(agent.dns_port), "-d", str(queries), "-c", "4",
                               "-l", str(args.seconds + 1)], args.cpus), stdout=subprocess.DEVNULL, check=False)
        spy.wait()
        return ["dns"]
    finally:
        agent.stop()


def health(args: argparse.Namespace, root: Path) -> list[str]:
    from http_bench import seed
    agent = AgentProcess(root / "agent", dev=True, args=["--log-level", "warn"])
    agent.start()
    try:
        pin([agent.proc.pid], args.cpus)  # type: ignore[union-attr]
        seed(agent, 50)
        spy = record(agent.proc.pid, "health", args.seconds)  # type: ignore[union-attr]
        r = wrk(f"{agent.url}/v1/health/service/web?passing", 16, args.seconds + 1, cpus=args.cpus)
        print(f"health: {r.rps:,.0f} req/s", flush=True)
        spy.wait()
        return ["health"]
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("paths", nargs="*", default=["raft", "dns", "health"], choices=["raft", "dns", "health"])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--gil", action="store_true", help="only samples that hold the GIL (CPU spent in Python)")
    ap.add_argument("--svg", type=Path, default=None, help="also write flame graph SVGs (flame-<name>.svg) here")
    ap.add_argument("--tag", default="", help="suffix of the SVG names (e.g. -before, -after)")
    args = ap.parse_args()
    if args.gil:
        GIL.append("--gil")
    if args.svg:
        args.svg.mkdir(parents=True, exist_ok=True)
        SVG.update(dir=args.svg, tag=args.tag)
    OUT.mkdir(exist_ok=True)
    for path in args.paths:
        with tempfile.TemporaryDirectory() as tmp:
            names = {"raft": raft, "dns": dns, "health": health}[path](args, Path(tmp))
        for name in names:
            summarise(name, args.top)


if __name__ == "__main__":
    main()
