"""The web UI at scale (PERFORMANCE.md §8): 5,000 services, 20,000 instances, headless Chromium.

Registers N instances of S services on N/20 nodes (each instance with a check; 1 in 50 critical) and
I intentions through the HTTP API of a dev agent, then measures, alternating cold arms A B A B:
- first render of the services page and of the intentions page: from navigation start (a new browser
  context, so nothing cached) until the table's first row is on screen — `performance.now()` in the page;
- bytes transferred by that initial load (headers + encoded bodies of every response, from the browser's
  own accounting, page and shared worker), and the page's bytes on a warm reload (assets cached);
- agent CPU with T tabs open and idle, against the same agent with no tab (arms alternated): CPU seconds
  from /proc/<pid>/stat over the same interval. Blocking queries wait at the agent, so the two should match;
- agent CPU per page load (CPU seconds per 1,000 cold loads of each page).
There is no peer that runs here (Consul's UI needs Consul); the goals are absolute: first render < 1 s,
initial transfer < 300 KB, idle CPU with 20 tabs not measurable.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import REPO, AgentProcess, Arm, alternate, report

sys.path.insert(0, str(REPO / "tests" / "ui"))
from browser import chromium  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its threads (the agent is one process)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def seed(agent: AgentProcess, services: int, instances: int, intentions: int) -> float:
    """Register everything through the HTTP API (many keep-alive connections); returns seconds taken."""
    per_node = 20
    nodes = max(1, instances // per_node)

    def worker(chunk: range) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=60)
        for i in chunk:
            svc = f"svc-{i % services:05d}"
            sid = f"{svc}-{i // services}"
            node = i % nodes
            body = {"Node": f"node-{node:04d}", "Address": f"10.0.{node >> 8 & 255}.{node & 255}",
                    "Service": {"Service": svc, "ID": sid, "Port": 8000 + i % 1000,
                                "Tags": [f"team-{i % services % 7}", f"v{i % 3}"]},
                    "Checks": [{"CheckID": f"{sid}-alive", "Name": "alive", "ServiceID": sid,
                                "Status": "critical" if i % 50 == 0 else "passing", "Output": "HTTP 200 OK"}]}
            conn.request("PUT", "/v1/catalog/register", json.dumps(body))
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
        conn.close()

    t0 = time.monotonic()
    workers = 8
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, [range(w, instances, workers) for w in range(workers)]))
    conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=60)
    for i in range(intentions):
        body = {"SourceName": f"svc-{i % services:05d}" if i % 10 else "*",
                "DestinationName": f"svc-{(i * 7 + 1) % services:05d}", "Action": "allow" if i % 3 else "deny",
                "Description": f"rule {i}"}
        conn.request("POST", "/v1/connect/intentions", json.dumps(body))
        resp = conn.getresponse()
        resp.read()
        assert resp.status in (200, 400), (resp.status, body)  # a rare duplicate pair is refused: fine
    conn.close()
    return time.monotonic() - t0


FIRST_RENDER = """(() => { const sel = %r; new MutationObserver((_, obs) => {
  if (document.querySelector(sel)) { window.__firstRender = performance.now(); obs.disconnect(); }
}).observe(document, {subtree: true, childList: true}); })()"""
PAGE_BYTES = """(() => performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource"))
  .reduce((n, e) => n + (e.transferSize || 0), 0))()"""
WORKER_STATS = "import('%s').then((m) => m.watchStats())"


def load_page(browser: Any, base: str, path: str, row: str) -> dict[str, float]:
    """One cold load in a fresh context (nothing cached): first render and bytes; then a warm reload.

    First render: navigation start → the first row in the DOM, stamped in the page by a MutationObserver.
    Bytes: what the browser counted as transferred (headers + encoded bodies) by the page and by the
    shared worker that runs the blocking queries, once the page's first answers have all arrived.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.add_init_script(FIRST_RENDER % row)
    try:
        page.goto(base + path, wait_until="commit")
        page.locator(row).first.wait_for(timeout=60_000)
        page.wait_for_load_state("load")
        page.wait_for_timeout(500)  # the page's other first answers (long polls then stay open)
        first_render_ms = page.evaluate("window.__firstRender")
        stats = page.evaluate(WORKER_STATS % "/ui/assets/js/api.js")
        cold = page.evaluate(PAGE_BYTES) + (stats or {}).get("bytes", 0)
        page.reload(wait_until="commit")
        page.locator(row).first.wait_for(timeout=60_000)
        page.wait_for_load_state("load")
        warm_ms = page.evaluate("window.__firstRender")
        warm_assets = page.evaluate(PAGE_BYTES)
    finally:
        context.close()
    return {"first_render_ms": first_render_ms, "warm_render_ms": warm_ms, "initial_kb": cold / 1024,
            "warm_page_kb": warm_assets / 1024}


def live_update(browser: Any, agent: AgentProcess) -> dict[str, float]:
    """Register a service while a tab shows the services page; ms until its row is in the DOM."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(agent.url + "/ui/dc1/services")
        page.locator("tr[data-service]").first.wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # the blocking query is open at the agent
        name = f"aaa-live-{time.monotonic_ns()}"
        page.evaluate("""(sel) => { window.__seen = null; new MutationObserver((_, obs) => {
            if (document.querySelector(sel)) { window.__seen = performance.now(); obs.disconnect(); }
          }).observe(document.body, {subtree: true, childList: true}); }""", f"tr[data-service='{name}']")
        t_page = page.evaluate("performance.now()")
        agent.put("/v1/agent/service/register", {"Name": name, "Port": 1})
        page.locator(f"tr[data-service='{name}']").wait_for(timeout=30_000)
        seen = page.evaluate("window.__seen")
        agent.put(f"/v1/agent/service/deregister/{name}")
        return {"live_update_ms": seen - t_page}
    finally:
        context.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--instances", type=int, default=20000)
    ap.add_argument("--intentions", type=int, default=1000)
    ap.add_argument("--tabs", type=int, default=20)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds per idle-CPU arm")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), dev=True)
        agent.start()
        try:
            from common import wait_for

            wait_for(lambda: agent.get("/v1/connect/ca/roots")[1]["Roots"], timeout=30, message="the CA")
            seed_s = seed(agent, args.services, args.instances, args.intentions)
            n_ixn = len(agent.get("/v1/connect/intentions")[1])
            n_svc = len(agent.get("/v1/catalog/services")[1]) - 1  # minus "consul"
            print(f"seeded {n_svc} services, {args.instances} instances, {n_ixn} intentions in {seed_s:.1f}s",
                  flush=True)
            with chromium() as browser:
                pid = agent.proc.pid

                def page_arm(path: str, row: str) -> Any:
                    def run() -> dict[str, float]:
                        c0 = cpu_seconds(pid)
                        r = load_page(browser, agent.url, path, row)
                        r["agent_cpu_ms"] = (cpu_seconds(pid) - c0) * 1000
                        return r
                    return run

                services = Arm("services page (cold)", page_arm("/ui/dc1/services", "tr[data-service]"))
                intentions = Arm("intentions page (cold)", page_arm("/ui/dc1/intentions", "tr[data-id]"))
                alternate([services, intentions], args.rounds)

                # Live update: one tab on the services page; a new service registered through the API;
                # time until its row is on screen (its name sorts first, so it is in the first rows).
                live = Arm("live update, services page", lambda: live_update(browser, agent))

                # Idle tabs: open T tabs on the services page, let them settle, then alternate
                # "no tabs" (all closed), "T tabs of one browser" (they share one blocking query) and
                # "T separate browsers" (T blocking queries) over the same interval.
                def idle_arm(tabs: int, separate: bool = False) -> Any:
                    def run() -> dict[str, float]:
                        contexts = [browser.new_context() for _ in range(tabs if separate else 1)]
                        pages = []
                        for i in range(tabs):
                            p = contexts[i % len(contexts)].new_page()
                            p.goto(agent.url + "/ui/dc1/services", wait_until="commit")
                            pages.append(p)
                        for p in pages:
                            p.locator("tr[data-service]").first.wait_for(timeout=120_000)
                        settle = time.monotonic() + 2.0
                        while time.monotonic() < settle:  # the tabs' first answers finish arriving
                            time.sleep(0.1)
                        c0, t0 = cpu_seconds(pid), time.monotonic()
                        end = t0 + args.idle
                        while time.monotonic() < end:
                            time.sleep(0.2)
                        cpu = cpu_seconds(pid) - c0
                        elapsed = time.monotonic() - t0
                        for c in contexts:
                            c.close()
                        return {"agent_cpu_pct": 100 * cpu / elapsed, "agent_cpu_s": cpu}
                    return run

                none = Arm("agent idle, no tab", idle_arm(0))
                many = Arm(f"agent idle, {args.tabs} tabs open", idle_arm(args.tabs))
                apart = Arm(f"agent idle, {args.tabs} browsers", idle_arm(args.tabs, separate=True))
                alternate([live], args.rounds)
                alternate([none, many, apart], args.rounds)

            data: dict[str, Any] = {
                "services": n_svc, "instances": args.instances, "intentions": n_ixn, "seed_s": round(seed_s, 1),
                "load": os.getloadavg()[0],
            }
            for arm, key in ((services, "services_page"), (intentions, "intentions_page")):
                data[key] = {k: round(arm.median(k), 1) for k in arm.results[0]}
                data[key]["agent_cpu_s_per_1k_loads"] = round(arm.median("agent_cpu_ms"), 1)
            data["idle_cpu_pct_no_tabs"] = round(none.median("agent_cpu_pct"), 3)
            data[f"idle_cpu_pct_{args.tabs}_tabs"] = round(many.median("agent_cpu_pct"), 3)
            data[f"idle_cpu_pct_{args.tabs}_browsers"] = round(apart.median("agent_cpu_pct"), 3)
            data["idle_cpu_pct_difference"] = round(many.median("agent_cpu_pct") - none.median("agent_cpu_pct"), 3)
            data["live_update_ms"] = round(live.median("live_update_ms"))
            data["goals"] = {"first_render_ms": "< 1000", "initial_kb": "< 300", "idle_cpu_pct_difference": "≈ 0"}
            data["medians_over_rounds"] = args.rounds
            data["spread"] = {"services_first_render_ms": [round(r["first_render_ms"]) for r in services.results],
                              "intentions_first_render_ms": [round(r["first_render_ms"]) for r in intentions.results]}
            report("ui", data)
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
