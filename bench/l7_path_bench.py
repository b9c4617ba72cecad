"""The HTTP/1.1 L7 path's own CPU per request, without sockets, one checkout against another.

`traffic_bench.py` measures whole processes under wrk: honest, but on a shared 2-core machine its CPU per
request moves with the load (how many events one wake of the loop serves, caches, preemption). This drives
the proxy's request path in-process instead — the client side (`UpstreamFront`: parse, discovery chain
with router and 80/20 splitter, pick, pooled connection, re-framing) and the server side (`InboundFront`:
parse, XFCC, to the application) — with transports that only keep what is written, and feeds each request
and its response straight through: what is left is the Python work per request, with access logs and/or
tracing (at 100% or 1% sampling; spans encoded as the exporter would) on or off. TLS, the kernel and the event loop are not in it.

Each checkout runs in its own process (its code loaded as `proconsul` from that tree, see
common.tree_env), arms alternated A B A B, `--rounds` rounds (in each, every arm three times, its least CPU kept),
CPU (process time) per request, medians of the rounds:

    .venv/bin/python bench/l7_path_bench.py main . --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shop_chain import chain_entries

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 04 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")
ENTRIES = chain_entries("http")
ARMS = ("plain", "log", "trace100", "trace1", "log+trace100")


class Sink:
    """A transport that keeps nothing but who wrote last (the Back whose request needs an answer)."""

    def __init__(self, owner: Any = None, last: list[Any] | None = None) -> None:
        self.owner = owner
        self.last = last

    def write(self, data: bytes) -> None:
        if self.last is not None:
            self.last[0] = self.owner

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool:
        return False


def _runtime(service: str, upstreams: tuple[Any, ...], arm: str, log_path: str) -> Any:
    from proconsul.connect.proxy.accesslog import AccessLog
    from proconsul.connect.proxy.config import ProxyConfig
    from proconsul.connect.proxy.runtime import Runtime
    from proconsul.connect.proxy.tracing import Tracer, TracingSettings

    cfg = ProxyConfig(proxy_id=f"{service}-sidecar-proxy", proxy_name=f"{service}-sidecar-proxy", service=service,
                      service_id=service, bind_address="127.0.0.1", bind_port=1, local_address="127.0.0.1",
                      local_port=2, upstreams=upstreams, protocol="http")
    rt = Runtime(cfg, datacenter="dc1", rng=random.Random(7))
    if "log" in arm:
        rt.access_log = AccessLog({"Enabled": True, "Type": "file", "Path": log_path})
    if "trace" in arm:
        pct = 100.0 if "trace100" in arm else 1.0
        rt.tracer = Tracer(service, TracingSettings("http://127.0.0.1:1/v1/traces", pct), rt.rng)
    return rt


def _drain(rt: Any) -> None:
    """What the exporter does with queued spans: encode them (the POST is not made)."""
    tr = rt.tracer
    batch = getattr(sys.modules[type(tr).__module__], "BATCH_MAX", 512) if tr is not None else 0
    if tr is not None and len(tr.queue) >= batch:
        tr.encode([tr.queue.popleft() for _ in range(batch)])


async def _measure(arm: str, n: int, log_path: str) -> dict[str, float]:
    from proconsul.connect.chain import compiler, entries
    from proconsul.connect.proxy import http
    from proconsul.connect.proxy.balancer import Instance
    from proconsul.connect.proxy.config import Upstream
    from proconsul.connect.proxy.dial import instance_key
    from proconsul.connect.proxy.routing import RouteTable

    # the client's sidecar: the chain, two instances (v1, v2), one pooled connection to each
    up = Upstream("shop", 9000, protocol="http")
    crt = _runtime("client", (up,), arm, log_path)
    idx = compiler.index_entries([entries.validate(dict(e)) for e in ENTRIES])
    table = RouteTable.from_chain(compiler.compile_chain(idx, "shop", datacenter="dc1", trust_domain="td"))
    insts = {v: Instance(f"node/shop-{v}", "127.0.0.1", 21000 + i, "shop") for i, v in enumerate(("v1", "v2"))}
    for t in crt.set_chain(up.key, table):
        v = t.id.split(".")[0]
        crt.target_pools[(up.key, t.id)].set_instances([insts[v]] if v in insts else [])
    last: list[Any] = [None]
    link = crt.metrics.upstream_link("shop")
    for inst in insts.values():
        back = http.Back(link, instance_key(inst))
        back.connection_made(Sink(back, last))
        crt.http_connections.give(back)
    client = http.UpstreamFront(crt, up)
    client.connection_made(Sink())
    # the server's sidecar: a caller's connection, the application's kept-alive connection
    srt = _runtime("shop", (), arm, log_path)
    server = http.InboundFront(srt)
    server.transport = Sink()
    server.uri = server.source = "spiffe://td/ns/default/dc/dc1/svc/client"
    server.link = http._Counts(srt.metrics.inbound_link(server.source), inbound=True)
    server._xfcc = f"x-forwarded-client-cert: By=spiffe://td/svc/shop;URI={server.uri}\r\n".encode()
    app = http.Back(None)
    app.connection_made(Sink(app, last))
    server.app = app

    out = {}
    for name, front, rt in (("client", client, crt), ("server", server, srt)):
        for _ in range(n // 10):  # warm: caches, pools, first-use paths
            front.data_received(REQUEST)
            last[0].data_received(RESPONSE)
        c0 = time.process_time()
        for i in range(n):
            front.data_received(REQUEST)
            last[0].data_received(RESPONSE)
            if not i & 255:
                _drain(rt)
        out[name] = (time.process_time() - c0) / n * 1e6
        # every request went through and was answered 200 (else this measured something else)
        done = n + n // 10
        assert front.link.link.requests == done and front.link.link.responses_2xx == done, name
        assert rt.access_log is None or rt.access_log.lines == done, name
    for rt in (crt, srt):
        if rt.access_log is not None:
            rt.access_log.close()
    out["both"] = out["client"] + out["server"]
    return out


def worker(n: int) -> None:
    """One round of every arm in this process (its `proconsul` is the tree on PYTHONPATH); JSON out."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    with tempfile.TemporaryDirectory() as d:
        log_path = str(Path(d) / "access.log")
        res: dict[str, dict[str, float]] = {}
        for _ in range(3):  # the arms alternate here too; each keeps its least CPU (noise only ever adds)
            for arm in ARMS:
                got = asyncio.run(_measure(arm, n, log_path))
                res[arm] = {k: min(v, res.get(arm, got)[k]) for k, v in got.items()}
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs="+", type=Path,
                    help="source trees or git refs to compare (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.requests)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import code_at, loadavg, report, tree_env

    results: dict[str, list[dict[str, Any]]] = {str(c): [] for c in args.checkouts}
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as d:
        envs = {str(c): {**os.environ, **(tree_env(c, Path(d) / f"shim-{i}") if c.is_dir() else code_at(str(c), Path(d)))}
                for i, c in enumerate(args.checkouts)}
        for r in range(args.rounds):
            for c in args.checkouts:
                proc = subprocess.run([sys.executable, __file__, "--worker", "--requests", str(args.requests), "x"],
                                      env=envs[str(c)], capture_output=True, text=True, check=True)
                res = json.loads(proc.stdout)
                results[str(c)].append(res)
                print(f"  round {r + 1} {str(c):<24} " + "  ".join(
                    f"{arm}={res[arm]['both']:.1f}µs" for arm in ARMS), flush=True)
    summary: dict[str, Any] = {"load_before": load_before, "load_after": loadavg(), "us_per_request": {}}
    for c, rounds in results.items():
        med = {arm: {side: statistics.median(x[arm][side] for x in rounds) for side in ("client", "server", "both")}
               for arm in ARMS}
        summary["us_per_request"][c] = med
        summary.setdefault("overhead_vs_plain", {})[c] = {arm: med[arm]["both"] / med["plain"]["both"]
                                                          for arm in ARMS[1:]}
    base = str(args.checkouts[0])
    summary["vs_first"] = {c: {arm: summary["us_per_request"][c][arm]["both"] / summary["us_per_request"][base][arm]
                               ["both"] for arm in ARMS} for c in results if c != base}
    report("l7_path", summary)


if __name__ == "__main__":
    main()
