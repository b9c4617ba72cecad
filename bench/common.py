"""Shared benchmark plumbing: peers as child processes, wrk runs, alternating arms, medians.

Every benchmark runs its arms alternately (A B A B …, at least 3 rounds), prints each arm's median
and the ratio against the peer measured in the same run, and exits 0 (../shared/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import AgentProcess, free_port, wait_for  # noqa: E402

__all__ = ["AgentProcess", "free_port", "wait_for", "Arm", "alternate", "wrk", "need", "rss_mb", "report",
           "Background", "http_json", "cpu_seconds", "process_tree", "pinned", "pin", "CpuMeter", "metered",
           "metered_wrk", "loadavg", "tree_env", "code_at", "add_baseline_options", "baseline"]


def need(binary: str, package: str) -> str:
    """The path of `binary`, installing its Debian package when root; exits 0 with a note if missing."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = shutil.which(binary)
        if path:
            return path
    print(f"SKIPPED: {binary} is missing; install the Debian package {package!r}")
    sys.exit(0)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors,
                "requests": self.requests}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(url: str, connections: int = 16, duration: float = 8.0, threads: int = 1,
        script: str | None = None, extra: list[str] | None = None, cpus: int | None = None) -> WrkResult:
    cmd = [need("wrk", "wrk"), f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd += (extra or []) + [url]
    out = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    dist = out.split("Latency Distribution", 1)[-1]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", dist, re.M).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", dist, re.M).group(1))
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"(\d+) requests in", out)
    return WrkResult(rps, p50, p99, errs, int(m.group(1)) if m else round(rps * duration))


@dataclass
class Arm:
    name: str
    run: Callable[[], dict[str, float]]
    results: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.results)


def _fmt(v: float) -> str:
    return f"{v:,.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"


def alternate(arms: list[Arm], rounds: int = 3) -> None:
    for i in range(rounds):
        for arm in arms:
            r = arm.run()
            arm.results.append(r)
            print(f"  round {i + 1} {arm.name:<28} " + "  ".join(f"{k}={_fmt(v)}" for k, v in r.items()), flush=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a peer may fork workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of these processes (and their threads), in seconds, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class CpuMeter:
    """CPU seconds used by a set of root processes (with descendants) between start() and stop()."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.before = 0.0

    def _now(self) -> float:
        return cpu_seconds([p for r in self.roots for p in process_tree(r)])

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> float:
        return self._now() - self.before


def metered(roots: list[int], run: Callable[[], dict[str, float]], ops_key: str = "requests"
            ) -> Callable[[], dict[str, float]]:
    """`run` with the CPU seconds of `roots` (and descendants) per 1,000 operations added to its result."""
    def arm() -> dict[str, float]:
        meter = CpuMeter(roots)
        meter.start()
        out = run()
        out["cpu_s_per_1k"] = meter.stop() * 1000 / max(out[ops_key], 1)
        return out
    return arm


COMPONENTS = {"agent": "agent", "catalog": "catalog", "consensus": "consensus", "connect": "connect", "dns": "dns",
              "ui": "ui", "k8s_sync": "k8s-sync"}


def tree_env(tree: Path, workdir: Path) -> dict[str, str]:
    """Environment that makes `python -m proconsul…` run the source tree `tree` (e.g. `git archive main`
    unpacked) instead of the installed one, so a benchmark can put another version beside this one in the
    same run: a `proconsul` package of symlinks to the tree's components, first on PYTHONPATH (it is found
    before the editable install's finder)."""
    pkg = workdir / "tree-shim" / "proconsul"
    pkg.mkdir(parents=True, exist_ok=True)
    for name, folder in COMPONENTS.items():
        link = pkg / name
        if not link.exists():
            link.symlink_to(Path(tree).resolve() / folder, target_is_directory=True)
    return {"PYTHONPATH": str(pkg.parent)}


def pinned(cmd: list[str], cpus: int | None) -> list[str]:
    """`cmd` run on the first `cpus` cores (taskset), to reproduce a small machine; unchanged when None."""
    if not cpus:
        return cmd
    return [need("taskset", "util-linux"), "-c", _cpu_list(cpus), *cmd]


def _cpu_list(cpus: int) -> str:
    return f"0-{cpus - 1}" if cpus > 1 else "0"


def pin(roots: list[int], cpus: int | None) -> None:
    """Pin running processes (with their threads and descendants) to the first `cpus` cores; no-op when None.

    For processes started by code that does not take a command prefix (AgentProcess); threads and
    children started later inherit the affinity."""
    if not cpus:
        return
    taskset = need("taskset", "util-linux")
    for pid in [p for r in roots for p in process_tree(r)]:
        subprocess.run([taskset, "-a", "-p", "-c", _cpu_list(cpus), str(pid)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def code_at(ref: str, tmp: Path) -> dict[str, str]:
    """Environment that runs the code of git `ref` (`git archive` unpacked under `tmp`, then `tree_env`)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    src = tmp / f"src-{sha}"
    if not src.exists():
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return tree_env(src, tmp / f"shim-{sha}")


def add_baseline_options(ap: argparse.ArgumentParser) -> None:
    """--base GIT_REF / --baseline-tree DIR: one more Proconsul arm running another version, same run."""
    ap.add_argument("--base", metavar="GIT_REF", help="also run the code at GIT_REF as an arm (A/B of a change)")
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="also run another source tree (e.g. `git archive main` unpacked) as an arm")


def baseline(args: argparse.Namespace, tmp: Path) -> tuple[str, dict[str, str]] | None:
    """(label, environment) of the version --base or --baseline-tree asked for, or None."""
    if args.base:
        return args.base, code_at(args.base, tmp)
    if args.baseline_tree:
        return "baseline", tree_env(args.baseline_tree, tmp)
    return None


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def metered_wrk(url: str, roots: list[int], connections: int = 16, duration: float = 8.0,
                script: str | None = None, cpus: int | None = None) -> dict[str, float]:
    """One wrk run plus the CPU seconds per 1,000 requests of every process under `roots` (the arm)."""
    out = metered(roots, lambda: wrk(url, connections, duration, script=script, cpus=cpus).as_dict())()
    out["load1"] = loadavg()[0]
    return out


class Background:
    """A child process for the benchmark's lifetime (a peer server or a target)."""

    def __init__(self, cmd: list[str], **kw: Any) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def http_json(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def report(name: str, data: dict[str, Any]) -> None:
    """Print the summary and keep a JSON copy under bench/results/ (not committed)."""
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    data = dict(data, date=stamp, machine=f"{os.cpu_count()} cores, {os.uname().machine}")
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
