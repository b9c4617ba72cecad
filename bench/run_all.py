"""Run every benchmark in turn (`make bench`); each prints its medians and ratios and saves JSON
under bench/results/. Pass names to run a subset: `python bench/run_all.py dns http`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {"http": "http_bench.py", "blocking": "blocking_bench.py", "scale": "scale_bench.py",
           "dns": "dns_bench.py", "checks": "checks_bench.py", "connect": "connect_bench.py", "raft": "raft_bench.py",
           "failover": "failover_bench.py", "ui": "ui_bench.py", "ui_metrics": "ui_metrics_bench.py",
           "membership": "membership_bench.py", "gossip-encryption": "gossip_encryption_bench.py",
           "traffic": "traffic_bench.py", "gateway-log": "gateway_log_bench.py",
           "federation": "federation_bench.py", "k8s_sync": "k8s_sync_bench.py",
           "k8s_sync_federation": "k8s_sync_federation_bench.py", "coordinates": "coordinates_bench.py"}


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    failed = []
    for name in names:
        print(f"=== {name} ({BENCHES[name]})", flush=True)
        if subprocess.run([sys.executable, str(HERE / BENCHES[name])], cwd=HERE).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"benchmarks that failed to run: {', '.join(failed)}")


if __name__ == "__main__":
    main()
