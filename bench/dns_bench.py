"""DNS: a Proconsul dev agent vs dnsmasq serving the same 100 names (PERFORMANCE.md §2).

Both serve 100 service names with one healthy instance each (dnsmasq from a hosts file, Proconsul
from its catalog); dnsperf -c 4 -l 8 with the same query file against each, arms alternating.
Goal: ≥ 1.0× dnsmasq's queries/s with 0 lost. Also: SRV queries/s, and A queries for a service
with 1,000 instances.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from common import AgentProcess, Arm, Background, alternate, free_port, http_json, need, report, wait_for

N = 100


def dnsperf(port: int, queries: Path, seconds: int, clients: int = 4) -> dict[str, float]:
    out = subprocess.run([need("dnsperf", "dnsperf"), "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                          "-c", str(clients), "-l", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1))
    return {"qps": qps, "sent": sent, "lost": lost, "avg_latency_ms": avg * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    need("dnsmasq", "dnsmasq-base")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hosts = tmp / "hosts"
        hosts.write_text("".join(f"10.0.{i // 250}.{i % 250 + 1} svc-{i}.service.mesh\n" for i in range(N)))
        a_queries = tmp / "a.txt"
        a_queries.write_text("".join(f"svc-{i}.service.mesh A\n" for i in range(N)))
        srv_queries = tmp / "srv.txt"
        srv_queries.write_text("".join(f"svc-{i}.service.mesh SRV\n" for i in range(N)))
        big_queries = tmp / "big.txt"
        big_queries.write_text("big.service.mesh A\n")
        mport = free_port()
        dnsmasq = Background(["dnsmasq", "--keep-in-foreground", f"--port={mport}", "--listen-address=127.0.0.1",
                              "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                              "--cache-size=10000", "--user=root", "--pid-file=" + str(tmp / "pid")])
        agent = AgentProcess(tmp / "agent", dev=True, args=["--log-level", "warn"])
        agent.start()
        try:
            for i in range(N):
                http_json("PUT", f"{agent.url}/v1/catalog/register", {
                    "Node": f"node-{i}", "Address": f"10.0.{i // 250}.{i % 250 + 1}",
                    "Service": {"Service": f"svc-{i}", "Port": 8080},
                    "Checks": [{"CheckID": f"c{i}", "ServiceID": f"svc-{i}", "Status": "passing"}]})
            for i in range(1000):
                http_json("PUT", f"{agent.url}/v1/catalog/register", {
                    "Node": f"big-{i}", "Address": f"10.9.{i // 250}.{i % 250 + 1}",
                    "Service": {"Service": "big", "Port": 9000}})
            wait_for(lambda: dnsperf(mport, a_queries, 1)["qps"] > 0, 20, 0.5, "dnsmasq to answer")
            arms = [Arm("dnsmasq A", lambda: dnsperf(mport, a_queries, args.seconds)),
                    Arm("proconsul A", lambda: dnsperf(agent.dns_port, a_queries, args.seconds))]
            alternate(arms, args.rounds)
            srv = Arm("proconsul SRV", lambda: dnsperf(agent.dns_port, srv_queries, args.seconds))
            big = Arm("proconsul 1,000-instance A", lambda: dnsperf(agent.dns_port, big_queries, args.seconds))
            alternate([srv, big], 1)
            report("dns", {
                "seconds": args.seconds, "rounds": args.rounds,
                "dnsmasq_qps": arms[0].median("qps"), "dnsmasq_lost": sum(r["lost"] for r in arms[0].results),
                "proconsul_qps": arms[1].median("qps"), "proconsul_lost": sum(r["lost"] for r in arms[1].results),
                "proconsul_avg_latency_ms": arms[1].median("avg_latency_ms"),
                "dnsmasq_avg_latency_ms": arms[0].median("avg_latency_ms"),
                "ratio": arms[1].median("qps") / arms[0].median("qps"),
                "proconsul_srv_qps": srv.median("qps"), "proconsul_srv_lost": srv.results[0]["lost"],
                "proconsul_1000_instance_a_qps": big.median("qps"), "big_lost": big.results[0]["lost"],
                "goal": ">= 1.0x dnsmasq, 0 lost"})
        finally:
            agent.stop()
            dnsmasq.stop()


if __name__ == "__main__":
    main()
