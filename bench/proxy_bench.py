"""Data plane (PERFORMANCE.md §3): wrk → client-side proxy → mTLS → server-side proxy → nginx (3-byte body).

Arms, alternated in one run: direct nginx (the limit), an HAProxy mTLS pair (one thread each, TCP
mode), a stunnel pair, the Proconsul sidecar pair in L4 mode and in HTTP (L7) mode. For each arm:
keep-alive requests/s with p50/p99 (`wrk -t1 -c16`), new connections/s (`Connection: close`), bulk
throughput (a 1 GiB download through the pair), the proxies' CPU seconds per 1,000 requests and RSS.
`--cpus N` pins every process (proxies, nginx, wrk) to the first N cores. Goal: ≥ 1.0× HAProxy's
requests/s with p99 ≤ HAProxy's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    AgentProcess,
    Arm,
    Background,
    CpuMeter,
    alternate,
    free_port,
    need,
    pinned,
    report,
    rss_mb,
    wait_for,
    wrk,
)

from proconsul.connect import ca
from proconsul.connect.spiffe import ServiceID

REPO = Path(__file__).resolve().parent.parent


def pems(tmp: Path) -> dict[str, Path]:
    """A root and two leaves (server side, client side) for the peers' mTLS, made with our CA code."""
    now = dt.datetime.now(dt.UTC)
    td = "bench.mesh"
    root = ca.generate_root(td, now, 1)
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_text(root.row["RootCert"])
    for i, name in enumerate(("server", "client"), 2):
        key = ca.generate_key()
        leaf = ca.sign_leaf(ca.make_csr(ServiceID(td, "default", "dc1", name).uri, key, name), root, td, now, i,
                            86400.0, name)
        both = tmp / f"{name}.pem"
        both.write_text(leaf["CertPEM"] + ca.key_pem(key))
        (tmp / f"{name}-cert.pem").write_text(leaf["CertPEM"])
        (tmp / f"{name}-key.pem").write_text(ca.key_pem(key))
        out[name] = both
    return out


def nginx(tmp: Path, port: int, cpus: int | None) -> Background:
    need("nginx", "nginx-light")
    tmp.chmod(0o755)  # nginx's workers run as nobody: they must reach www/ (a 0700 temp dir gave 403s)
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("ok\n")
    with open(www / "big", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: the bulk transfer
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{port}; root {www}; location = / {{ return 200 "ok\\n"; }} }}
}}""")
    return Background(pinned(["nginx", "-c", str(conf)], cpus))


def haproxy_pair(tmp: Path, p: dict[str, Path], front: int, mid: int, app: int, cpus: int | None) -> Background:
    need("haproxy", "haproxy")
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend client_side
  bind 127.0.0.1:{front}
  default_backend to_mesh
backend to_mesh
  server s 127.0.0.1:{mid} ssl crt {p['client']} ca-file {p['ca']} verify required
frontend server_side
  bind 127.0.0.1:{mid} ssl crt {p['server']} ca-file {p['ca']} verify required
  default_backend app
backend app
  server n 127.0.0.1:{app}
""")
    # Two processes, as two sidecars would be: the same file, each binding its own frontend.
    client = tmp / "haproxy-client.cfg"
    server = tmp / "haproxy-server.cfg"
    text = conf.read_text()
    client.write_text(text.split("frontend server_side")[0])
    server.write_text(text.split("frontend client_side")[0] + "frontend server_side" +
                      text.split("frontend server_side")[1])
    return _pair(Background(pinned(["haproxy", "-f", str(client)], cpus)),
                 Background(pinned(["haproxy", "-f", str(server)], cpus)))


def stunnel_pair(tmp: Path, p: dict[str, Path], front: int, mid: int, app: int, cpus: int | None) -> Background:
    binary = need("stunnel4", "stunnel4")
    common = "foreground = yes\npid =\nsyslog = no\noutput = /dev/null\n"
    client = tmp / "stunnel-client.conf"
    client.write_text(common + f"[c]\nclient = yes\naccept = 127.0.0.1:{front}\nconnect = 127.0.0.1:{mid}\n"
                               f"cert = {p['client']}\nCAfile = {p['ca']}\nverifyChain = yes\n")
    server = tmp / "stunnel-server.conf"
    server.write_text(common + f"[s]\naccept = 127.0.0.1:{mid}\nconnect = 127.0.0.1:{app}\ncert = {p['server']}\n"
                               f"CAfile = {p['ca']}\nverifyChain = yes\nrequireCert = yes\n")
    return _pair(Background(pinned([binary, str(client)], cpus)), Background(pinned([binary, str(server)], cpus)))


class _Pair(Background):
    def __init__(self, a: Background, b: Background) -> None:  # noqa: D107 - two processes as one arm
        self.parts = [a, b]
        self.proc = a.proc

    def stop(self) -> None:
        for part in self.parts:
            part.stop()

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.parts]


def _pair(a: Background, b: Background) -> _Pair:
    return _Pair(a, b)


class ProconsulPair:
    """A dev agent, nginx registered with a sidecar, a client service with an upstream, and two proxies."""

    def __init__(self, tmp: Path, app: int, cpus: int | None, protocol: str) -> None:
        self.agent = AgentProcess(tmp / f"agent-{protocol}", args=["--log-level", "warn"])
        self.agent.start()
        self.front = free_port()
        a = self.agent
        svc, client = f"nginx-{protocol}", f"client-{protocol}"
        if protocol == "http":
            assert a.put("/v1/config", {"Kind": "service-defaults", "Name": svc, "Protocol": "http"})[0] == 200
        assert a.put("/v1/agent/service/register", {"Name": svc, "Port": app, "Connect": {"SidecarService": {
            "Port": free_port()}}})[0] == 200
        assert a.put("/v1/agent/service/register", {"Name": client, "Port": 1, "Connect": {"SidecarService": {
            "Port": free_port(), "Proxy": {"Upstreams": [{"DestinationName": svc, "LocalBindPort": self.front}]}}}}
                     )[0] == 200
        self.procs = []
        for sid in (svc, client):
            self.procs.append(Background(pinned([sys.executable, "-m", "proconsul.agent.cli", "connect", "proxy",
                                                 "-sidecar-for", sid, "-http-addr", a.addr, "-admin-bind", "off",
                                                 "-log-level", "warn"], cpus)))
        wait_for(lambda: a.get(f"/v1/health/connect/{svc}?passing")[1], 20, message="sidecar healthy")
        wait_for(lambda: _curl(f"http://127.0.0.1:{self.front}/") == "ok\n", 20, message="traffic through the pair")

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.agent.stop()


def _curl(url: str, host: str = "") -> str:
    try:
        return subprocess.run(["curl", "-s", "--max-time", "2", *(["-H", f"Host: {host}"] if host else []), url],
                              capture_output=True, text=True).stdout
    except OSError:
        return ""


def bulk_mib_s(port: int) -> float:
    """MiB/s of a 1 GiB download; 0 when the transfer was not a whole 200 (so a broken arm cannot look fast)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}",
                          f"http://127.0.0.1:{port}/big"], capture_output=True, text=True, timeout=300).stdout.split()
    if len(out) != 3 or out[0] != "200" or int(float(out[1])) != 1 << 30:
        print(f"  bulk transfer through port {port} failed: {' '.join(out)}", flush=True)
        return 0.0
    return float(out[2]) / (1 << 20)


def measure(port: int, pids: list[int], duration: float, cpus: int | None, close: bool) -> dict[str, float]:
    meter = CpuMeter(pids)
    meter.start()
    extra = ["-H", "Connection: close"] if close else None
    r = wrk(f"http://127.0.0.1:{port}/", 16, duration, extra=extra, cpus=cpus)
    cpu = meter.stop()
    out = r.as_dict()
    out["cpu_s_per_1k"] = cpu / max(1.0, r.rps * duration) * 1000 if pids else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=None, help="pin every process to the first N cores")
    ap.add_argument("--no-bulk", action="store_true", help="skip the 1 GiB transfers")
    args = ap.parse_args()
    need("curl", "curl")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        app = free_port()
        web = nginx(tmp, app, args.cpus)
        wait_for(lambda: _curl(f"http://127.0.0.1:{app}/") == "ok\n", 10, message="nginx")
        certs = pems(tmp)
        ports = {name: (free_port(), free_port()) for name in ("haproxy", "stunnel")}
        peers: dict[str, Any] = {
            "haproxy": haproxy_pair(tmp, certs, *ports["haproxy"], app, args.cpus),
            "stunnel": stunnel_pair(tmp, certs, *ports["stunnel"], app, args.cpus),
            "proconsul-l4": ProconsulPair(tmp, app, args.cpus, "tcp"),
            "proconsul-l7": ProconsulPair(tmp, app, args.cpus, "http"),
        }
        fronts = {"direct": app, "haproxy": ports["haproxy"][0], "stunnel": ports["stunnel"][0],
                  "proconsul-l4": peers["proconsul-l4"].front, "proconsul-l7": peers["proconsul-l7"].front}
        for name in ("haproxy", "stunnel"):
            wait_for(lambda n=name: _curl(f"http://127.0.0.1:{fronts[n]}/") == "ok\n", 10, message=name)
        pids = {"direct": [], **{k: v.pids for k, v in peers.items()}}
        results: dict[str, Any] = {}
        try:
            for close in (False, True):
                label = "new_connections" if close else "keepalive"
                arms = [Arm(name, lambda n=name, c=close: measure(fronts[n], pids[n], args.duration, args.cpus, c))
                        for name in fronts]
                print(f"== {label}", flush=True)
                alternate(arms, args.rounds)
                results[label] = {a.name: {k: a.median(k) for k in a.results[0]} for a in arms}
            if not args.no_bulk:
                print("== bulk (1 GiB through each pair)", flush=True)
                arms = [Arm(n, lambda n=n: {"mib_s": bulk_mib_s(fronts[n])}) for n in fronts]
                alternate(arms, 1)
                results["bulk"] = {a.name: a.median("mib_s") for a in arms}
            results["rss_mb"] = {k: [round(rss_mb(p), 1) for p in v] for k, v in pids.items() if v}
        finally:
            for p in peers.values():
                p.stop()
            web.stop()
    ka = results["keepalive"]
    summary = {
        "pinned_cpus": args.cpus,
        "l4_vs_haproxy_rps": ka["proconsul-l4"]["rps"] / ka["haproxy"]["rps"],
        "l4_p99_vs_haproxy": ka["proconsul-l4"]["p99_ms"] / ka["haproxy"]["p99_ms"],
        "l7_vs_l4_rps": ka["proconsul-l7"]["rps"] / ka["proconsul-l4"]["rps"],
        "l4_vs_stunnel_rps": ka["proconsul-l4"]["rps"] / ka["stunnel"]["rps"],
        "new_conn_l4_vs_haproxy": results["new_connections"]["proconsul-l4"]["rps"] /
        results["new_connections"]["haproxy"]["rps"],
    }
    report("proxy", {"results": results, "summary": summary, "load": open("/proc/loadavg").read().split()[:3]})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
