"""Scale: how the state store grows from 1,000 to 100,000 service instances.

PERFORMANCE.md §5. For each size, in a fresh process: register N instances (N/5 nodes × 5 services,
each service name with 50 instances) through the same commands the API issues, then report RSS,
snapshot and restore time, and the latency of a health query for one 50-instance service, as a
ratio to the same query on a 100-instance catalog. Then the real thing through the HTTP API:
50,000 instances registered into a dev agent, its RSS, and GET /v1/health/service latency.
Goals: server RSS ≤ 400 MB at 50k, snapshot + restore ≤ 5 s, query latency within 1.5× of 100 instances.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import AgentProcess, http_json, report, rss_mb

CHILD = r'''
import json, sys, time, statistics
from proconsul.catalog import commands as c
from proconsul.catalog.store import StateStore
from proconsul.catalog.queries import QUERIES

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

n = int(sys.argv[1])
base = rss()
s = StateStore()
idx = 0
for node in range(n // 5):
    idx += 1
    s.apply(idx, c.Register(node={"Node": f"node-{node}", "Address": f"10.{node >> 16 & 255}.{node >> 8 & 255}.{node & 255}"},
                            checks=[{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}]))
    for k in range(5):
        svc_no = (node * 5 + k) // 50
        sid = f"svc-{svc_no}-{node}-{k}"
        idx += 1
        s.apply(idx, c.Register(node={"Node": f"node-{node}"}, skip_node_update=True,
                                service={"Service": f"svc-{svc_no}", "ID": sid, "Port": 8000 + k, "Tags": ["v1"]},
                                checks=[{"CheckID": f"{sid}-check", "ServiceID": sid, "Status": "passing"}]))
grown = rss()
q = QUERIES["health.service"]
args = {"name": "svc-1", "passing": True, "tags": None, "node_meta": None}
lat = []
for _ in range(200):
    t = time.perf_counter(); q.run(s, args); lat.append(time.perf_counter() - t)
t = time.perf_counter(); snap = s.snapshot(); snap_s = time.perf_counter() - t
t = time.perf_counter(); s2 = StateStore(); s2.restore(snap); restore_s = time.perf_counter() - t
assert q.run(s2, args) == q.run(s, args)
print(json.dumps({"instances": n, "rss_mb": grown, "store_mb": grown - base, "snapshot_s": snap_s,
                  "snapshot_mb": len(snap) / 1e6, "restore_s": restore_s,
                  "health_query_us": statistics.median(lat) * 1e6}))
'''


def in_process(n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def through_api(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), dev=True, args=["--log-level", "warn"])
        agent.start()
        try:
            idle = rss_mb(agent.proc.pid)

            def node(i: int) -> None:
                for k in range(5):
                    sid = f"svc-{(i * 5 + k) // 50}-{i}-{k}"
                    http_json("PUT", f"{agent.url}/v1/catalog/register", {
                        "Node": f"node-{i}", "Address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                        "Service": {"Service": f"svc-{(i * 5 + k) // 50}", "ID": sid, "Port": 8000 + k},
                        "Checks": [{"CheckID": f"{sid}-check", "ServiceID": sid, "Status": "passing"}]})

            t = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(node, range(n // 5)))
            reg_s = time.monotonic() - t
            lat = []
            for i in range(50):
                url = f"{agent.url}/v1/health/service/svc-{i}?passing"
                t = time.perf_counter()
                with urllib.request.urlopen(url) as resp:
                    assert len(json.loads(resp.read())) == 50
                lat.append(time.perf_counter() - t)
            lat.sort()
            return {"instances": n, "register_s": reg_s, "writes_per_s": n / reg_s,
                    "agent_rss_mb": rss_mb(agent.proc.pid), "idle_rss_mb": idle,
                    "health_http_p50_ms": lat[len(lat) // 2] * 1000}
        finally:
            agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100,1000,10000,50000,100000")
    ap.add_argument("--api-instances", type=int, default=50_000)
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        r = in_process(n)
        rows.append(r)
        print("  in-process", r, flush=True)
    base = rows[0]["health_query_us"]
    for r in rows:
        r["health_query_vs_smallest"] = r["health_query_us"] / base
    api = through_api(args.api_instances) if args.api_instances else None
    print("  via API", api)
    report("scale", {"in_process": rows, "api": api,
                     "goal": "RSS <= 400 MB at 50k, snapshot+restore <= 5 s, query within 1.5x of 100 instances"})


if __name__ == "__main__":
    main()
