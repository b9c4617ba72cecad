"""L7 traffic management (issue 19): the cost of applying a discovery chain per request.

wrk → client-side sidecar → mTLS → server-side sidecar(s) → nginx (3-byte body). Arms, alternated in one
run (A B C D, ≥ 3 rounds, medians):
  l7-plain      the same processes in HTTP mode with the default chain (one resolver, round robin over
                the two instances)
  l7-chain      a service-router (a PathPrefix route and a header route before the catch-all) and an
                80/20 service-splitter between subsets v1/v2 (two instances, chosen by Filter over Meta)
  l7-chain-log  the same chain with proxy-defaults AccessLogs on (JSON lines to a file)
  l7-chain-trace100 / -trace1   the same chain with tracing on (proxy-defaults Config.tracing, OTLP/HTTP to
                a sink process), sampling 100% and 1% of new traces
  ingress       wrk → the ingress gateway (HTTP, by Host) → the server sidecars → nginx: one hop in
                place of the client sidecar, through the same chain
  haproxy       HAProxy in HTTP mode on both sides, mTLS between them, the same path route and an
                80/20 weighted split (the peer the issue names)
  base:…        with `--base GIT_REF`: the chain arms again with the sidecars of another checkout (e.g.
                main), each run next to its counterpart (the A/B of a change, in the same run)
  grpc-direct / grpc-chain / h1-chain-h2load   gRPC-shaped unary calls (POST, application/grpc, a 5-byte
                message) by h2load (-c4 -m4: 16 streams in flight) straight to an nginx h2c server, and
                through the same router + splitter chain with `Protocol = "grpc"` (sidecars parse HTTP/2 on
                both sides); the peer: h2load --h1 (16 connections) through the HTTP/1.1 chain to nginx
For each: keep-alive requests/s, p50/p99 (`wrk -t1 -c16`), and the arm's CPU seconds per 1,000
requests over all its processes. Goals: chain ≥ 0.9× plain; access logs ≥ 0.95× without; tracing at
100% ≥ 0.85× and at 1% ≥ 0.97× without; ≥ 1.0× HAProxy's requests/s with p99 ≤ HAProxy's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import (
    AgentProcess,
    Arm,
    Background,
    CpuMeter,
    alternate,
    code_at,
    free_port,
    need,
    pinned,
    report,
    wait_for,
)
from proxy_bench import _curl, _pair, measure, nginx, pems
from shop_chain import chain_entries


class ChainArm:
    """A dev agent; nginx registered twice (Meta version v1 and v2, each with a sidecar); a client whose
    sidecar has the upstream; with `chain`, the router and splitter written as config entries."""

    def __init__(self, tmp: Path, app: int, cpus: int | None, chain: bool, protocol: str = "http",
                 env: dict[str, str] | None = None, label: str = "", ingress: bool = True) -> None:
        """`env`: the environment of the sidecars (another checkout's code, see common.code_at)."""
        self.agent = AgentProcess(tmp / f"agent-{chain}-{protocol}{label}", args=["--log-level", "warn"])
        self.agent.start()
        self.front = free_port()
        self.log_path = tmp / f"access{label}.log"
        self._tracing_sink = ""  # the sink's /count while tracing was last on
        kw = {"env": {**os.environ, **env}} if env else {}
        a = self.agent
        entries = chain_entries(protocol)
        for e in entries[:2] + entries[2:] * chain:
            assert a.put("/v1/config", e)[0] == 200, e
        ids = []
        for v in ("v1", "v2"):
            sid = f"shop-{v}"
            ids.append(sid)
            assert a.put("/v1/agent/service/register", {"Name": "shop", "ID": sid, "Port": app, "Meta": {"version": v},
                                                        "Connect": {"SidecarService": {"Port": free_port()}}})[0] == 200
        assert a.put("/v1/agent/service/register", {"Name": "client", "Port": 1, "Connect": {"SidecarService": {
            "Port": free_port(), "Proxy": {"Upstreams": [{"DestinationName": "shop", "LocalBindPort": self.front}]}}}}
                     )[0] == 200
        self.procs = [Background(pinned([sys.executable, "-m", "proconsul.agent.cli", "connect", "proxy",
                                         "-sidecar-for", sid, "-http-addr", a.addr, "-admin-bind", "off",
                                         "-log-level", "warn"], cpus), **kw) for sid in (*ids, "client")]
        wait_for(lambda: len(a.get("/v1/health/connect/shop?passing")[1]) == 2, 20, message="both sidecars healthy")
        curl = _curl if protocol == "http" else _curl_h2
        wait_for(lambda: curl(f"http://127.0.0.1:{self.front}/") == "ok\n", 20, message="traffic through the chain")
        self.ingress_port = 0
        self.gateway: Background | None = None
        if chain and ingress and protocol == "http":
            self.ingress_port = free_port()
            assert a.put("/v1/config", {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
                {"Port": self.ingress_port, "Protocol": "http", "Services": [{"Name": "shop"}]}]})[0] == 200
            self.gateway = Background(pinned([sys.executable, "-m", "proconsul.agent.cli", "connect", "proxy",
                                              "-gateway", "ingress", "-service", "ig", "-register", "-address",
                                              f"127.0.0.1:{free_port()}", "-http-addr", a.addr, "-admin-bind", "off",
                                              "-log-level", "warn"], cpus))
            wait_for(lambda: _curl(f"http://127.0.0.1:{self.ingress_port}/", "shop.ingress.mesh") == "ok\n", 20,
                     message="traffic through the ingress gateway")

    def tracing(self, endpoint: str, percent: float) -> None:
        """Tracing on (to `endpoint`, sampling `percent`): returns once the sink has had a batch of spans sent
        after the change. Off (empty endpoint): returns once requests stop producing batches."""
        if endpoint:
            sink = self._tracing_sink = endpoint.rsplit("/v1/", 1)[0] + "/count"
            before = _posts(sink)
            assert self.agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": {
                "otlp_endpoint": endpoint, "sampling_percent": percent}}})[0] == 200
            # The exporters post once a second: enough requests for a few sampled ones, then wait for the POST.
            wait_for(lambda: _requests(self.front, max(20, int(300 / percent))) and _posts(sink) > before, 20,
                     message="spans reach the sink")
        else:
            self.agent.request("DELETE", "/v1/config/proxy-defaults/global")
            wait_for(lambda: self._tracing_sink == "" or self._no_spans(self._tracing_sink), 20,
                     message="tracing off")

    def _no_spans(self, sink: str) -> bool:
        _requests(self.front, 300)
        before = _posts(sink)
        time.sleep(1.5)  # the exporter's interval (1 s): a span made before now would have been posted by then
        return _posts(sink) == before

    def access_logs(self, on: bool) -> None:
        if on:
            assert self.agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": {
                "Enabled": True, "Type": "file", "Path": str(self.log_path)}})[0] == 200
            size = self.log_path.stat().st_size if self.log_path.exists() else 0
            wait_for(lambda: _curl(f"http://127.0.0.1:{self.front}/") == "ok\n" and self.log_path.exists()
                     and self.log_path.stat().st_size > size, 10, message="access-log lines")
        else:
            self.agent.request("DELETE", "/v1/config/proxy-defaults/global")
            wait_for(lambda: self._quiet(), 10, message="access logs off")

    def _quiet(self) -> bool:
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        for _ in range(5):
            _curl(f"http://127.0.0.1:{self.front}/")
        time.sleep(0.3)  # the log's batch interval (0.25 s): a line written now would be on disk by then
        return (self.log_path.stat().st_size if self.log_path.exists() else 0) == before

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    @property
    def ingress_pids(self) -> list[int]:
        """The gateway and the two server-side sidecars (the client sidecar idles in this arm)."""
        assert self.gateway is not None
        return [self.gateway.proc.pid, self.procs[0].proc.pid, self.procs[1].proc.pid]

    def stop(self) -> None:
        for p in [*self.procs, *([self.gateway] if self.gateway else [])]:
            p.stop()
        self.agent.stop()


SINK = """
import sys
from aiohttp import web
posts = [0]
async def ok(request):
    await request.read()
    posts[0] += 1
    return web.Response()
async def count(request):
    return web.Response(text=str(posts[0]))
app = web.Application(client_max_size=64 << 20)
app.router.add_post("/v1/traces", ok)
app.router.add_get("/count", count)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _posts(count_url: str) -> int:
    with urllib.request.urlopen(count_url, timeout=5) as r:
        return int(r.read())


def _requests(port: int, n: int) -> bool:
    """`n` keep-alive GETs through the chain's front (quicker than curl for the 1% arm's hundreds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(n):
            conn.request("GET", "/")
            conn.getresponse().read()
    finally:
        conn.close()
    return True


def _curl_h2(url: str) -> str:
    try:
        return subprocess.run(["curl", "-s", "--max-time", "2", "--http2-prior-knowledge", url],
                              capture_output=True, text=True).stdout
    except OSError:
        return ""


def nginx_h2c(tmp: Path, port: int, cpus: int | None) -> Background:
    """nginx answering every request (a POST too) with 200 "ok" over cleartext HTTP/2 (prior knowledge)."""
    need("nginx", "nginx-light")
    conf = tmp / "nginx-h2c.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx-h2c.pid; error_log {tmp}/nginx-h2c-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path {tmp}/h2body; proxy_temp_path {tmp}/h2proxy; fastcgi_temp_path {tmp}/h2fcgi;
  uwsgi_temp_path {tmp}/h2uwsgi; scgi_temp_path {tmp}/h2scgi;
  server {{ listen 127.0.0.1:{port} http2; location / {{ return 200 "ok\n"; }} }}
}}""")
    return Background(pinned(["nginx", "-c", str(conf)], cpus))


GRPC_CALL = b"\x00\x00\x00\x00\x05hello"  # one uncompressed 5-byte gRPC message


def measure_h2load(port: int, pids: list[int], duration: float, cpus: int | None, body: Path,
                   h1: bool = False) -> dict[str, float]:
    """h2load's requests/s and mean latency for gRPC-shaped calls (or, with `h1`, the same POSTs over
    HTTP/1.1 keep-alive), and the CPU seconds per 1,000 of the arm's processes."""
    need("h2load", "nghttp2-client")
    conc = ["-c", "16", "-m", "1", "--h1"] if h1 else ["-c", "4", "-m", "4"]
    meter = CpuMeter(pids)
    meter.start()
    out = subprocess.run(pinned(["h2load", "-D", str(max(1, round(duration))), "-t", "1", *conc, "-d", str(body),
                                 "-H", "content-type: application/grpc", "-H", "te: trailers",
                                 f"http://127.0.0.1:{port}/"], cpus),
                         capture_output=True, text=True, timeout=duration + 60).stdout
    cpu = meter.stop()
    finished = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    ok = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    assert finished is not None and ok is not None and mean is not None, f"h2load said:\n{out}"
    rps = float(finished.group(1))
    total, succeeded = int(ok.group(1)), int(ok.group(2))
    assert succeeded >= 0.99 * total, f"{total - succeeded} of {total} requests failed:\n{out}"
    unit = mean.group(1)
    mean_ms = float(unit[:-2]) if unit.endswith("ms") else float(unit[:-2]) / 1000 if unit.endswith("us") \
        else float(unit[:-1]) * 1000
    return {"rps": rps, "mean_ms": mean_ms, "cpu_s_per_1k": cpu / max(1.0, rps * duration) * 1000}


def measure_host(port: int, host: str, pids: list[int], duration: float, cpus: int | None) -> dict[str, float]:
    from common import wrk

    meter = CpuMeter(pids)
    meter.start()
    r = wrk(f"http://127.0.0.1:{port}/", 16, duration, extra=["-H", f"Host: {host}"], cpus=cpus)
    cpu = meter.stop()
    out = r.as_dict()
    out["cpu_s_per_1k"] = cpu / max(1.0, r.rps * duration) * 1000
    return out


HAPROXY_HTTP = """
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s"""


def haproxy_l7(tmp: Path, certs: dict[str, Path], front: int, app: int, cpus: int | None) -> Background:
    """HAProxy pair in HTTP mode: the client side routes /admin to one backend and splits the rest 80/20
    over two mTLS servers (the server side, two frontends), which forward to nginx."""
    need("haproxy", "haproxy")
    mid1, mid2, mid3 = free_port(), free_port(), free_port()
    ssl = f"ssl crt {certs['client']} ca-file {certs['ca']} verify required"
    client = tmp / "haproxy-l7-client.cfg"
    client.write_text(HAPROXY_HTTP + f"""
frontend client_side
  bind 127.0.0.1:{front}
  acl admin path_beg /admin
  acl canary req.hdr(x-canary) -m str 1
  use_backend admin if admin
  use_backend v2 if canary
  default_backend split
backend split
  balance roundrobin
  server v1 127.0.0.1:{mid1} {ssl} weight 80
  server v2 127.0.0.1:{mid2} {ssl} weight 20
backend v2
  server v2 127.0.0.1:{mid2} {ssl}
backend admin
  server a 127.0.0.1:{mid3} {ssl}
""")
    server = tmp / "haproxy-l7-server.cfg"
    server.write_text(HAPROXY_HTTP + f"""
frontend server_side
  bind 127.0.0.1:{mid1} ssl crt {certs['server']} ca-file {certs['ca']} verify required
  bind 127.0.0.1:{mid2} ssl crt {certs['server']} ca-file {certs['ca']} verify required
  bind 127.0.0.1:{mid3} ssl crt {certs['server']} ca-file {certs['ca']} verify required
  default_backend app
backend app
  server n 127.0.0.1:{app}
""")
    return _pair(Background(pinned(["haproxy", "-f", str(client)], cpus)),
                 Background(pinned(["haproxy", "-f", str(server)], cpus)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=None, help="pin every process to the first N cores")
    ap.add_argument("--arms", default="", help="comma-separated arm names to run (default: all)")
    ap.add_argument("--base", metavar="GIT_REF", default="",
                    help="also run the chain arms (l7-chain, -log, -trace100, -trace1) with the sidecars of GIT_REF "
                         "(e.g. main), as arms named base:…, alternated with the rest (A/B of a change)")
    args = ap.parse_args()
    need("curl", "curl")
    load_before = open("/proc/loadavg").read().split()[:3]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        app = free_port()
        web = nginx(tmp, app, args.cpus)
        wait_for(lambda: _curl(f"http://127.0.0.1:{app}/") == "ok\n", 10, message="nginx")
        certs = pems(tmp)
        hp_front = free_port()
        plain = ChainArm(tmp, app, args.cpus, chain=False)
        chain = ChainArm(tmp, app, args.cpus, chain=True)
        base = ChainArm(tmp, app, args.cpus, chain=True, env=code_at(args.base, tmp), label="-base",
                        ingress=False) if args.base else None
        hp = haproxy_l7(tmp, certs, hp_front, app, args.cpus)
        wait_for(lambda: _curl(f"http://127.0.0.1:{hp_front}/") == "ok\n", 10, message="haproxy")
        wanted = set(args.arms.split(",")) if args.arms else None
        grpc_arms = wanted is None or bool(wanted & {"grpc-direct", "grpc-chain", "h1-chain-h2load"})
        h2app, grpc, body = free_port(), None, tmp / "grpc-call.bin"
        body.write_bytes(GRPC_CALL)
        h2web = nginx_h2c(tmp, h2app, args.cpus) if grpc_arms else None
        if grpc_arms:
            wait_for(lambda: _curl_h2(f"http://127.0.0.1:{h2app}/") == "ok\n", 10, message="nginx h2c")
            grpc = ChainArm(tmp, h2app, args.cpus, chain=True, protocol="grpc")
        sink_port = free_port()
        sink = Background([sys.executable, "-c", SINK, str(sink_port)])
        sink_url = f"http://127.0.0.1:{sink_port}/v1/traces"
        results: dict[str, Any] = {}
        try:
            def chain_arm(arm: ChainArm, logs: bool, trace: float = 0.0) -> dict[str, float]:
                if logs:
                    arm.access_logs(True)
                if trace:
                    arm.tracing(sink_url, trace)
                try:
                    return measure(arm.front, arm.pids, args.duration, args.cpus, False)
                finally:
                    if logs:
                        arm.access_logs(False)
                    if trace:
                        arm.tracing("", 0)

            def chain_arms(arm: ChainArm, prefix: str = "") -> list[Arm]:
                return [Arm(prefix + "l7-chain", lambda: chain_arm(arm, False)),
                        Arm(prefix + "l7-chain-log", lambda: chain_arm(arm, True)),
                        Arm(prefix + "l7-chain-trace100", lambda: chain_arm(arm, False, 100.0)),
                        Arm(prefix + "l7-chain-trace1", lambda: chain_arm(arm, False, 1.0))]

            ours = chain_arms(chain)
            theirs = chain_arms(base, "base:") if base is not None else []
            arms = [Arm("l7-plain", lambda: measure(plain.front, plain.pids, args.duration, args.cpus, False)),
                    *[a for i, arm in enumerate(ours) for a in (arm, *theirs[i:i + 1])],  # each next to its base
                    Arm("ingress", lambda: measure_host(chain.ingress_port, "shop.ingress.mesh", chain.ingress_pids,
                                                        args.duration, args.cpus)),
                    Arm("haproxy", lambda: measure(hp_front, hp.pids, args.duration, args.cpus, False))]
            if grpc is not None and h2web is not None:
                g, nginx_pid = grpc, h2web.proc.pid
                arms += [Arm("grpc-direct", lambda: measure_h2load(h2app, [nginx_pid], args.duration, args.cpus,
                                                                   body)),
                         Arm("grpc-chain", lambda: measure_h2load(g.front, [*g.pids, nginx_pid], args.duration,
                                                                  args.cpus, body)),
                         Arm("h1-chain-h2load", lambda: measure_h2load(chain.front, [*chain.pids, web.proc.pid],
                                                                       args.duration, args.cpus, body, h1=True))]
            if args.arms:
                arms = [a for a in arms if a.name in args.arms.split(",")]
            alternate(arms, args.rounds)
            results = {a.name: {k: a.median(k) for k in a.results[0]} for a in arms}
        finally:
            plain.stop()
            chain.stop()
            if base is not None:
                base.stop()
            hp.stop()
            sink.stop()
            web.stop()
            if grpc is not None:
                grpc.stop()
            if h2web is not None:
                h2web.stop()
    ratios = {  # name: (arm, its peer, the figure)
        "chain_vs_plain_rps": ("l7-chain", "l7-plain", "rps"),
        "chain_cpu_per_1k_vs_plain": ("l7-chain", "l7-plain", "cpu_s_per_1k"),
        "access_log_vs_off_rps": ("l7-chain-log", "l7-chain", "rps"),
        "access_log_cpu_per_1k_vs_off": ("l7-chain-log", "l7-chain", "cpu_s_per_1k"),
        "tracing100_vs_off_rps": ("l7-chain-trace100", "l7-chain", "rps"),
        "tracing100_cpu_per_1k_vs_off": ("l7-chain-trace100", "l7-chain", "cpu_s_per_1k"),
        "tracing1_vs_off_rps": ("l7-chain-trace1", "l7-chain", "rps"),
        "tracing1_cpu_per_1k_vs_off": ("l7-chain-trace1", "l7-chain", "cpu_s_per_1k"),
        "ingress_hop_vs_sidecar_hop_rps": ("ingress", "l7-chain", "rps"),
        "chain_vs_haproxy_rps": ("l7-chain", "haproxy", "rps"),
        "chain_p99_vs_haproxy": ("l7-chain", "haproxy", "p99_ms"),
        "base_chain_vs_haproxy_rps": ("base:l7-chain", "haproxy", "rps"),
        "base_access_log_cpu_per_1k_vs_off": ("base:l7-chain-log", "base:l7-chain", "cpu_s_per_1k"),
        "base_tracing100_cpu_per_1k_vs_off": ("base:l7-chain-trace100", "base:l7-chain", "cpu_s_per_1k"),
        "base_tracing100_vs_off_rps": ("base:l7-chain-trace100", "base:l7-chain", "rps"),
        "base_tracing1_cpu_per_1k_vs_off": ("base:l7-chain-trace1", "base:l7-chain", "cpu_s_per_1k"),
        **{f"{a}_cpu_per_1k_vs_base": (a, f"base:{a}", "cpu_s_per_1k") for a in
           ("l7-chain", "l7-chain-log", "l7-chain-trace100", "l7-chain-trace1")},
        **{f"{a}_rps_vs_base": (a, f"base:{a}", "rps") for a in
           ("l7-chain", "l7-chain-log", "l7-chain-trace100", "l7-chain-trace1")},
        "grpc_chain_vs_direct_rps": ("grpc-chain", "grpc-direct", "rps"),
        "grpc_chain_vs_h1_chain_rps": ("grpc-chain", "h1-chain-h2load", "rps"),
        "grpc_chain_cpu_per_1k_vs_h1_chain": ("grpc-chain", "h1-chain-h2load", "cpu_s_per_1k"),
    }
    summary = {name: results[a][k] / results[b][k] for name, (a, b, k) in ratios.items()
               if a in results and b in results}
    report("traffic", {"results": results, "summary": summary, "load_before": load_before,
                       "load_after": open("/proc/loadavg").read().split()[:3]})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
