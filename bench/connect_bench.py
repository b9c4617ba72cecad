"""Connect: leaf certificates signed per second, and /v1/agent/connect/authorize requests per second
on a warm agent against an aiohttp hello-world in the same run (goal ≥ 0.7× the ceiling)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import AgentProcess, Arm, Background, alternate, free_port, http_json, report, wait_for, wrk

from proconsul.connect import ca
from proconsul.connect.spiffe import ServiceID

HERE = Path(__file__).resolve().parent


def signs_per_second(seconds: float) -> dict[str, float]:
    """What one server does per leaf: verify the CSR and sign it (the agent's key/CSR made beforehand)."""
    td = "bench.mesh"
    root = ca.generate_root(td, dt.datetime.now(dt.UTC), 1)
    csrs = [ca.make_csr(ServiceID(td, "default", "dc1", f"s{i}").uri, ca.generate_key(), f"s{i}") for i in range(200)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ca.sign_leaf(csrs[n % len(csrs)], root, td, dt.datetime.now(dt.UTC), n + 2)
        n += 1
    return {"signs_per_s": n / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sign = [signs_per_second(3)["signs_per_s"] for _ in range(args.rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), dev=True, args=["--log-level", "warn"])
        agent.start()
        hello_port = free_port()
        hello = Background([sys.executable, str(HERE / "hello_aiohttp.py"), str(hello_port)])
        try:
            roots = wait_for(lambda: http_json("GET", f"{agent.url}/v1/connect/ca/roots")["Roots"] and
                             http_json("GET", f"{agent.url}/v1/connect/ca/roots"), message="CA")
            td = roots["TrustDomain"]
            for i in range(50):
                http_json("PUT", f"{agent.url}/v1/connect/intentions/exact?source=svc{i}&destination=db",
                          {"Action": "allow" if i % 2 else "deny"})
            t0 = time.perf_counter()
            for i in range(50):
                http_json("GET", f"{agent.url}/v1/agent/connect/ca/leaf/api-leaf-{i}")
            api_leaf_s = 50 / (time.perf_counter() - t0)
            body = json.dumps({"Target": "db", "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/svc7"})
            script = Path(tmp) / "authorize.lua"
            script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                              f"wrk.body = [[{body}]]\n")
            wait_for(lambda: http_json("GET", f"http://127.0.0.1:{hello_port}/"), message="hello server")
            arms = [Arm("aiohttp hello-world", lambda: wrk(f"http://127.0.0.1:{hello_port}/", 16,
                                                           args.duration).as_dict()),
                    Arm("authorize (50 intentions)", lambda: wrk(f"{agent.url}/v1/agent/connect/authorize", 16,
                                                                 args.duration, script=str(script)).as_dict())]
            alternate(arms, args.rounds)
            report("connect", {
                "server_signs_per_s": statistics.median(sign), "api_new_leaves_per_s": api_leaf_s,
                "hello_rps": arms[0].median("rps"), "authorize_rps": arms[1].median("rps"),
                "authorize_p99_ms": arms[1].median("p99_ms"), "authorize_errors": sum(r["errors"] for r in arms[1].results),
                "ratio": arms[1].median("rps") / arms[0].median("rps"), "goal": "authorize >= 0.7x hello-world"})
        finally:
            hello.stop()
            agent.stop()


if __name__ == "__main__":
    main()
