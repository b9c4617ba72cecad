"""Benchmarks are not tests, but they must keep working: run one briefly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str, results: str, timeout: float = 120) -> dict:
    """Run `bench/<script>` briefly (it must exit 0); what it wrote to `bench/results/<results>.json`."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO / "bench")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((REPO / "bench" / "results" / f"{results}.json").read_text())


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian wrk; make bench installs it)")
def test_blocking_bench_runs(tmp_path: Path) -> None:
    result = bench("blocking_bench.py", "--watchers", "50", "--rounds", "1", results="blocking_queries")
    assert result["watchers"] == 50 and result["all_returned_s_worst"] < 5


def test_run_all_refuses_unknown_names() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "run_all.py"), "nope"], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown benchmark" in out.stderr


def test_k8s_sync_bench_runs(tmp_path: Path) -> None:
    result = bench("k8s_sync_bench.py", "--services", "20", "--endpoints", "3", "--rounds", "1", "--rest", "1", "--no-peer",
                   results="k8s_sync", timeout=180)
    arm = result["median"]["k8s-sync"]
    assert result["instances"] == 60 and arm["raft_writes"] >= 1 and arm["writes_per_min_at_rest"] == 0


@pytest.mark.slow
def test_k8s_sync_federation_bench_runs(tmp_path: Path) -> None:
    result = bench("k8s_sync_federation_bench.py", "--services", "10", "--singles", "1", "--rounds", "1",
                   results="k8s_sync_federation", timeout=240)
    for arm in ("two datacenters", "one datacenter"):
        assert 0 < result["median"][arm]["all_in_b_s"] < 60 and result["median"][arm]["cpu_s_per_1k"] > 0


def test_membership_bench_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "membership_bench.py"), "--sizes", "50",
                          "--fp-seconds", "30", "--rounds", "1", "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png"),
                          "--progress", str(tmp_path / "p.json")],
                         capture_output=True, text=True, timeout=180, cwd=REPO / "bench")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "m.json").read_text())
    [row] = result["scale"]
    assert row["n"] == 50 and 50 < row["bytes_per_member_s"] < 10 * 1024 and row["detect_100_s"] < 30
    assert set(result["false_positives"]["50"]) == {"on", "off"}
    for arm in ("on", "off"):  # the last progress report of each arm is the whole run (20 s, then 30 s)
        part = json.loads((tmp_path / f"p-n50-{arm}.json").read_text())["partial"]
        whole = result["false_positives"]["50"][arm]
        assert part["seconds"] == 30.0 and (part["incidents"], part["pairs"]) == (whole["incidents"], whole["pairs"])
    speed = subprocess.run([sys.executable, str(REPO / "bench" / "membership_bench.py"), "--sizes", "50",
                            "--speed", "3", "--speed-slow", "--rounds", "1", "--json", str(tmp_path / "s.json")],
                           capture_output=True, text=True, timeout=180, cwd=REPO / "bench")
    assert speed.returncode == 0, speed.stderr[-3000:]
    [res] = json.loads((tmp_path / "s.json").read_text())["speed"]
    assert all(res[arm] > 0 for arm in ("encoded", "decoded", "decoded-gc"))


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("taskset") is None,
                    reason="wrk or taskset is missing (Debian wrk, util-linux)")
def test_http_bench_reports_cpu_per_request_pinned(tmp_path: Path) -> None:
    result = bench("http_bench.py", "--duration", "1", "--rounds", "1", "--cpus", "1",
                   results="http_health", timeout=180)
    assert result["pinned_cpus"] == 1 and len(result["load"]) == 2
    for arm in ("hello", "same_size_static", "health"):
        # a request costs well under 10 ms of CPU, and measurably more than nothing
        assert 0 < result[f"{arm}_cpu_s_per_1k"] < 10, (arm, result)


def test_gossip_encryption_bench_runs(tmp_path: Path) -> None:
    result = bench("gossip_encryption_bench.py", "--rounds", "1", "--seconds", "1", "--members", "3",
                   results="gossip_encryption")
    assert result["pools"]["encrypted"]["packets"] > 0 and result["micro_per_packet"]["ping"]["added_us"] > 0


def test_coordinates_bench_runs(tmp_path: Path) -> None:
    result = bench("coordinates_bench.py", "--members", "10", "--samples", "2000", "--rounds", "1",
                   results="coordinates")
    assert result["ack_bytes"]["with_coordinate"] > result["ack_bytes"]["without"]
    assert result["median_relative_error"]["probe"] < 0.5  # the estimates have converged


def test_l7_path_bench_runs(tmp_path: Path) -> None:
    result = bench("l7_path_bench.py", str(REPO), "--rounds", "1", "--requests", "300", results="l7_path")
    arms = result["us_per_request"][str(REPO)]
    assert set(arms) == {"plain", "log", "trace100", "trace1", "log+trace100"} and all(a["both"] > 0 for a in arms.values())


def test_gateway_log_bench_runs(tmp_path: Path) -> None:
    result = bench("gateway_log_bench.py", "--duration", "0.5", "--rounds", "1", "--concurrency", "2",
                   results="gateway_log")
    assert result["off"]["conns_per_s"] > 0 and result["on"]["cpu_s_per_1k"] > 0 and result["lines"] > 0
