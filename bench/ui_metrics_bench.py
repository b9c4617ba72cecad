"""What the topology's golden metrics cost: the agent reading its sidecars' /stats (built in) against the
Consul way, Prometheus scraping the same sidecars and the agent asking Prometheus (metrics_provider).

Setup: `--web` web instances, each with a real sidecar proxy calling db through it (one db sidecar), light
HTTP traffic through all of them, Debian's Prometheus scraping every proxy's /metrics each
`--scrape` seconds. Two agents: one with the built-in reader, one with `metrics_provider = "prometheus"`.

Arms, alternated for `--rounds` rounds:
- watching: a topology page open — one `/v1/internal/ui/service-metrics/web` answer every 0.6 s for
  `--seconds` (past the 0.5 s reuse, so every answer samples every proxy); the CPU of the arm's
  processes (built in: agent + proxies; Prometheus: agent + Prometheus + proxies) per 1,000 answers,
  and the answer's latency;
- idle: no page open for `--seconds`; the arm's CPU per minute (the built-in reader does nothing,
  Prometheus keeps scraping).
Traffic runs until both readers show web → db's figures, then stops, so the CPU measured is the
metrics' own (the links stay, at rate 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from common import REPO, AgentProcess, Arm, CpuMeter, alternate, free_port, report, wait_for

sys.path.insert(0, str(REPO / "tests"))
from support_mesh import Backends, ProxyProcess, sidecar_with_metrics  # noqa: E402


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def running(agent: AgentProcess) -> AgentProcess:
    """The agent, or an error with the end of its log when its process has exited (not 'connection refused')."""
    if agent.proc is not None and agent.proc.poll() is not None:
        raise SystemExit(f"the agent in {agent.workdir} exited with {agent.proc.returncode}:\n{agent.log()[-3000:]}")
    return agent


class Setup:
    def __init__(self, tmp: Path, web: int, scrape: float) -> None:
        self.tmp, self.web, self.scrape = tmp, web, scrape
        self.backends = Backends()
        self.prom_port = free_port()
        cfg = tmp / "prom-agent.json"
        cfg.write_text(json.dumps({"ui_config": {"metrics_provider": "prometheus", "metrics_proxy": {
            "base_url": f"http://127.0.0.1:{self.prom_port}"}}}))
        self.agent = AgentProcess(tmp / "agent")
        self.prom_agent = AgentProcess(tmp / "prom-agent", args=["--config-file", str(cfg)])
        self.proxies: list[ProxyProcess] = []
        self.upstream_ports: list[int] = []
        self.stop = threading.Event()
        self.prom: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.agent.start()
        self.prom_agent.start()
        self.agent.put("/v1/config", {"Kind": "service-defaults", "Name": "db", "Protocol": "http"})
        for i in range(self.web + 1):
            name, sid = ("db", "db") if i == 0 else ("web", f"web-{i}")
            upstreams = {} if name == "db" else {"db": free_port()}
            self.proxies.append(sidecar_with_metrics(self.agent, self.tmp, name, self.backends.http(sid), upstreams,
                                                     service_id=sid))
            self.upstream_ports += upstreams.values()
        admins = [p.admin_port for p in self.proxies]
        (self.tmp / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": f"{int(self.scrape * 1000)}ms"},
            "scrape_configs": [{"job_name": "proxies", "static_configs": [
                {"targets": [f"127.0.0.1:{p}" for p in admins]}]}]}))
        self.prom = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                                      f"--config.file={self.tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.prom_port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.prom_port}/-/ready", timeout=2).status == 200,
                 30, interval=0.2, message="Prometheus")
        threading.Thread(target=self._traffic, daemon=True).start()
        for agent in (self.agent, self.prom_agent):  # both readers see web → db before measuring
            wait_for(lambda a=agent: (get(running(a).url + "/v1/internal/ui/service-metrics/web")["Upstreams"]
                                      .get("db") or {}).get("RequestRate"), 60, interval=0.5,
                     message="figures for web → db")
        self.stop.set()  # measured without traffic: the proxies' CPU is the metrics' alone

    def _traffic(self) -> None:
        while not self.stop.is_set():
            for port in self.upstream_ports:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                except OSError:
                    pass
            self.stop.wait(0.05)

    def close(self) -> None:
        self.stop.set()
        if self.prom is not None:
            self.prom.terminate()
            self.prom.wait(10)
        for p in self.proxies:
            p.stop()
        for a in (self.agent, self.prom_agent):
            a.stop()
        self.backends.close()


def watching(agent: AgentProcess, pids: list[int], seconds: float) -> dict[str, float]:
    meter = CpuMeter(pids)
    lat = []
    meter.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        body = get(agent.url + "/v1/internal/ui/service-metrics/web")
        lat.append((time.perf_counter() - t) * 1000)
        assert body["Upstreams"].get("db") is not None or any(p["Status"] == "measuring" for p in body["Proxies"]), body
        time.sleep(max(0.0, 0.6 - (time.perf_counter() - t)))
    cpu = meter.stop()
    return {"answers": len(lat), "cpu_s_per_1k": cpu / len(lat) * 1000, "p50_ms": statistics.median(lat),
            "max_ms": max(lat)}


def idle(pids: list[int], seconds: float) -> dict[str, float]:
    meter = CpuMeter(pids)
    meter.start()
    time.sleep(seconds)
    return {"cpu_s_per_min": meter.stop() / seconds * 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web", type=int, default=3, help="web instances, each with a sidecar (default 3)")
    ap.add_argument("--seconds", type=float, default=15.0, help="each arm's window (default 15)")
    ap.add_argument("--scrape", type=float, default=5.0, help="Prometheus' scrape interval (default 5 s)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("prometheus") is None:
        sys.exit("Debian's prometheus is needed (apt-get install prometheus; make test installs it)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s = Setup(Path(tmp), args.web, args.scrape)
        try:
            s.start()
            proxies = [p.proc.pid for p in s.proxies if p.proc is not None]
            assert s.agent.proc is not None and s.prom_agent.proc is not None and s.prom is not None
            builtin = [s.agent.proc.pid, *proxies]
            prom = [s.prom_agent.proc.pid, s.prom.pid, *proxies]
            arms = [Arm("built-in watching", lambda: watching(s.agent, builtin, args.seconds)),
                    Arm("prometheus watching", lambda: watching(s.prom_agent, prom, args.seconds)),
                    Arm("built-in idle", lambda: idle(builtin, args.seconds)),
                    Arm("prometheus idle", lambda: idle(prom, args.seconds))]
            load = Path("/proc/loadavg").read_text().split()[:3]
            alternate(arms, args.rounds)
            med = {a.name: {k: round(a.median(k), 4) for k in a.results[0]} for a in arms}
            b, p = med["built-in watching"], med["prometheus watching"]
            report("ui_metrics", {
                "proxies": len(proxies), "scrape_interval_s": args.scrape, "window_s": args.seconds,
                "rounds": args.rounds, "load_before": load, "load_after": Path("/proc/loadavg").read_text().split()[:3],
                "median": med,
                "ratio_cpu_per_answer_builtin_vs_prometheus": round(b["cpu_s_per_1k"] / p["cpu_s_per_1k"], 3),
                "ratio_p50_builtin_vs_prometheus": round(b["p50_ms"] / p["p50_ms"], 3),
            })
        finally:
            s.close()


if __name__ == "__main__":
    main()
