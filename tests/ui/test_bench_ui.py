"""bench/ui_bench.py keeps working (a tiny catalog, one round): benchmarks are not tests, but must run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_ui_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "ui_bench.py"), "--services", "20", "--instances", "40",
                          "--intentions", "5", "--tabs", "2", "--idle", "0.5", "--rounds", "1"],
                         capture_output=True, text=True, timeout=180, cwd=REPO / "bench")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((REPO / "bench" / "results" / "ui.json").read_text())
    assert result["services"] == 20 and result["intentions"] == 5
    for page in ("services_page", "intentions_page"):
        assert 0 < result[page]["first_render_ms"] < 30_000 and 0 < result[page]["initial_kb"] < 300
    assert result["live_update_ms"] > 0


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
def test_ui_metrics_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "ui_metrics_bench.py"), "--web", "1", "--seconds", "1.3",
                          "--scrape", "1", "--rounds", "1"], capture_output=True, text=True, timeout=180,
                         cwd=REPO / "bench")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((REPO / "bench" / "results" / "ui_metrics.json").read_text())
    assert result["proxies"] == 2 and result["median"]["built-in watching"]["answers"] >= 2
    assert result["ratio_cpu_per_answer_builtin_vs_prometheus"] > 0
