"""DNS: a Proconsul dev agent vs dnsmasq serving the same 100 names (PERFORMANCE.md §2).

Both serve 100 service names with one healthy instance each (dnsmasq from a hosts file, Proconsul
from its catalog); `dnsperf -c 4` with the same query file against each, arms alternating, medians
and the ratio. Goal: ≥ 1.0× dnsmasq's queries/s with 0 lost. Also: SRV queries/s over the same 100
names, a service with 1,000 instances (A without EDNS0: 3 answers; SRV with EDNS0: as many as fit
4,096 bytes), the server CPU seconds per 1,000 queries of each arm (utime+stime from /proc), and how
soon a health change shows in DNS. `--cpus N` pins both servers and dnsperf to the first N cores.
Installs dnsperf and dnsmasq when run as root (Debian packages dnsperf, dnsmasq-base).
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    AgentProcess,
    Arm,
    Background,
    CpuMeter,
    add_baseline_options,
    alternate,
    baseline,
    free_port,
    http_json,
    loadavg,
    need,
    pin,
    pinned,
    report,
    wait_for,
)
from dnslib import DNSRecord

N = 100
BIG = 1000


def dnsperf(port: int, queries: Path, seconds: int, pid: int, clients: int = 4,
            extra: tuple[str, ...] = (), cpus: int | None = None) -> dict[str, float]:
    meter = CpuMeter([pid])
    meter.start()
    out = subprocess.run(pinned([need("dnsperf", "dnsperf"), "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                                 "-c", str(clients), "-l", str(seconds), *extra], cpus),
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = meter.stop()
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1))
    return {"qps": qps, "sent": sent, "lost": lost, "avg_latency_ms": avg * 1000,
            "cpu_s_per_1k": cpu * 1000 / max(sent, 1), "load1": loadavg()[0]}


def udp_ask(port: int, name: str) -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(DNSRecord.question(name).pack(), ("127.0.0.1", port))
        return sorted(str(rr.rdata) for rr in DNSRecord.parse(s.recvfrom(4096)[0]).rr)


def health_change_ms(agent: AgentProcess, rounds: int = 5) -> list[float]:
    """Flip svc-0's check and time until a DNS answer reflects it (after the HTTP write returned)."""
    out = []
    for i in range(rounds * 2):
        status = "critical" if i % 2 == 0 else "passing"
        want: list[str] = [] if status == "critical" else ["10.0.0.1"]
        udp_ask(agent.dns_port, "svc-0.service.mesh")  # make sure the old answer is cached
        http_json("PUT", f"{agent.url}/v1/catalog/register", {
            "Node": "node-0", "Address": "10.0.0.1", "SkipNodeUpdate": True,
            "Checks": [{"CheckID": "c0", "ServiceID": "svc-0", "Status": status}]})
        t0 = time.perf_counter()
        wait_for(lambda w=want: udp_ask(agent.dns_port, "svc-0.service.mesh") == w, 5, 0.001, "the change")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def seed(agent: AgentProcess) -> None:
    """The same catalog in every agent: N one-instance services and the BIG-instance service."""
    for i in range(N):
        http_json("PUT", f"{agent.url}/v1/catalog/register", {
            "Node": f"node-{i}", "Address": f"10.0.{i // 250}.{i % 250 + 1}",
            "Service": {"Service": f"svc-{i}", "Port": 8080},
            "Checks": [{"CheckID": f"c{i}", "ServiceID": f"svc-{i}", "Status": "passing"}]})
    for i in range(BIG):
        http_json("PUT", f"{agent.url}/v1/catalog/register", {
            "Node": f"big-{i}", "Address": f"10.9.{i // 250}.{i % 250 + 1}",
            "Service": {"Service": "big", "Port": 9000}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra-rounds", type=int, default=2, help="rounds of the SRV and 1,000-instance arms")
    ap.add_argument("--cpus", type=int, default=None, help="pin both servers and dnsperf to the first N cores")
    add_baseline_options(ap)
    args = ap.parse_args()
    cpus = args.cpus
    need("dnsmasq", "dnsmasq-base")
    need("dnsperf", "dnsperf")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hosts = tmp / "hosts"
        hosts.write_text("".join(f"10.0.{i // 250}.{i % 250 + 1} svc-{i}.service.mesh\n" for i in range(N)))
        a_queries = tmp / "a.txt"
        a_queries.write_text("".join(f"svc-{i}.service.mesh A\n" for i in range(N)))
        srv_queries = tmp / "srv.txt"
        srv_queries.write_text("".join(f"svc-{i}.service.mesh SRV\n" for i in range(N)))
        big_a = tmp / "big_a.txt"
        big_a.write_text("big.service.mesh A\n")
        big_srv = tmp / "big_srv.txt"
        big_srv.write_text("big.service.mesh SRV\n")
        mport = free_port()
        dnsmasq = Background(pinned(["dnsmasq", "--keep-in-foreground", f"--port={mport}", "--listen-address=127.0.0.1",
                              "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                              "--cache-size=10000", "--user=root", "--pid-file=" + str(tmp / "pid")], cpus))
        agent = AgentProcess(tmp / "agent", dev=True, args=["--log-level", "warn"])
        agent.start()
        label, env = baseline(args, tmp) or ("", None)
        base = AgentProcess(tmp / "base", dev=True, args=["--log-level", "warn"], env=env) if env else None
        try:
            apid = agent.proc.pid  # type: ignore[union-attr]
            mpid = dnsmasq.proc.pid
            pin([apid], cpus)
            load = [loadavg()]
            seed(agent)
            if base is not None:
                base.start()
                pin([base.proc.pid], cpus)  # type: ignore[union-attr]
                seed(base)
                dnsperf(base.dns_port, a_queries, 1, base.proc.pid)  # type: ignore[union-attr]
            wait_for(lambda: dnsperf(mport, a_queries, 1, mpid)["qps"] > 0, 20, 0.5, "dnsmasq to answer")
            dnsperf(agent.dns_port, a_queries, 1, apid)  # warm the wire cache
            print(f"A queries for {N} names, {args.rounds} rounds of {args.seconds}s, arms alternating:")
            arms = [Arm("dnsmasq A", lambda: dnsperf(mport, a_queries, args.seconds, mpid, cpus=cpus)),
                    Arm("proconsul A", lambda: dnsperf(agent.dns_port, a_queries, args.seconds, apid, cpus=cpus))]
            if base is not None:
                bpid = base.proc.pid  # type: ignore[union-attr]
                arms.append(Arm(f"proconsul@{label} A",
                                lambda: dnsperf(base.dns_port, a_queries, args.seconds, bpid, cpus=cpus)))
            alternate(arms, args.rounds)
            load.append(loadavg())
            print("SRV and a 1,000-instance service:")
            srv = Arm("proconsul SRV", lambda: dnsperf(agent.dns_port, srv_queries, args.seconds, apid, cpus=cpus))
            big = Arm("proconsul 1,000-inst. A", lambda: dnsperf(agent.dns_port, big_a, args.seconds, apid, cpus=cpus))
            big_e = Arm("proconsul 1,000-inst. SRV+EDNS",
                        lambda: dnsperf(agent.dns_port, big_srv, args.seconds, apid, extra=("-e",), cpus=cpus))
            alternate([srv, big, big_e], args.extra_rounds)
            change = health_change_ms(agent)
            dm, pc = arms[:2]
            vs_base = {} if base is None else {
                "base_qps": arms[2].median("qps"), "base_cpu_s_per_1k": arms[2].median("cpu_s_per_1k"),
                "vs_base": pc.median("qps") / arms[2].median("qps"),
                "cpu_vs_base": pc.median("cpu_s_per_1k") / arms[2].median("cpu_s_per_1k")}
            report("dns", {
                "seconds": args.seconds, "rounds": args.rounds, "pinned_cpus": cpus, "load": load,
                "dnsmasq_qps": dm.median("qps"), "dnsmasq_lost": sum(r["lost"] for r in dm.results),
                "proconsul_qps": pc.median("qps"), "proconsul_lost": sum(r["lost"] for r in pc.results),
                "ratio": pc.median("qps") / dm.median("qps"),
                "dnsmasq_qps_all": [round(r["qps"]) for r in dm.results],
                "proconsul_qps_all": [round(r["qps"]) for r in pc.results],
                "dnsmasq_avg_latency_ms": dm.median("avg_latency_ms"),
                "proconsul_avg_latency_ms": pc.median("avg_latency_ms"),
                "dnsmasq_cpu_s_per_1k": dm.median("cpu_s_per_1k"),
                "proconsul_cpu_s_per_1k": pc.median("cpu_s_per_1k"),
                "cpu_ratio": pc.median("cpu_s_per_1k") / dm.median("cpu_s_per_1k"),
                "proconsul_srv_qps": srv.median("qps"), "proconsul_srv_lost": sum(r["lost"] for r in srv.results),
                "proconsul_1000_instance_a_qps": big.median("qps"),
                "proconsul_1000_instance_a_lost": sum(r["lost"] for r in big.results),
                "proconsul_1000_instance_srv_edns_qps": big_e.median("qps"),
                "proconsul_1000_instance_srv_edns_lost": sum(r["lost"] for r in big_e.results),
                "health_change_visible_ms_median": round(statistics.median(change), 2),
                "health_change_visible_ms_max": round(max(change), 2),
                "goal": ">= 1.0x dnsmasq, 0 lost; health change visible within 1 s", **vs_base})
        finally:
            agent.stop()
            if base is not None:
                base.stop()
            dnsmasq.stop()


if __name__ == "__main__":
    main()
