"""Access-log lines at a mesh gateway: connections per second through it with proxy-defaults AccessLogs on
(a JSON line per connection to a file) vs off, and the gateway's CPU seconds per 1,000 connections.

A dev agent, one `proconsul connect gateway -mesh`, and a TCP echo server registered as the sidecar of `echo`.
Each client connection sends a TLS ClientHello naming `echo.default.dc1.internal.<trust domain>` (made once
with the ssl module), reads it back from the echo server through the gateway, and closes: the gateway's
whole per-connection path (accept, read the SNI, dial, splice, close, and the log line when on). Arms
alternate (off, on, off, on, …); medians; load average alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import AgentProcess, Arm, CpuMeter, alternate, free_port, loadavg, report, wait_for


def client_hello(server_name: str) -> bytes:
    """The first flight of a TLS client naming `server_name` (what a sidecar sends a gateway)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def echo_server(port: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        writer.write(data)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def clients(port: int, hello: bytes, duration: float, concurrency: int) -> int:
    """Connections completed (hello out, hello back, closed) in `duration` seconds."""
    done = 0
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hello)
            got = await reader.readexactly(len(hello))
            assert got == hello
            writer.close()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gwlog-bench-"))
    agent = AgentProcess(tmp / "agent")
    agent.start()
    loop = asyncio.new_event_loop()
    echo_port, gw_port = free_port(), free_port()
    server = loop.run_until_complete(echo_server(echo_port))
    gw_log = tmp / "gateway.log"
    gw = None
    try:
        wait_for(lambda: agent.get("/v1/connect/ca/roots")[1].get("TrustDomain"), 20, message="the CA")
        td = agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]
        assert agent.put("/v1/agent/service/register", {
            "Kind": "connect-proxy", "Name": "echo-sidecar-proxy", "Port": echo_port,
            "Proxy": {"DestinationServiceName": "echo"}})[0] == 200
        with open(gw_log, "ab") as out:
            gw = subprocess.Popen([sys.executable, "-m", "proconsul.agent.cli", "connect", "gateway", "-mesh",
                                   "-register", "-address", f"127.0.0.1:{gw_port}", "-http-addr", agent.addr],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        hello = client_hello(f"echo.default.dc1.internal.{td}")

        def through() -> bool:
            return loop.run_until_complete(clients(gw_port, hello, 0.05, 1)) > 0

        wait_for(through, 30, message="a connection through the gateway")
        lines = tmp / "access.log"

        def arm(on: bool) -> dict[str, float]:
            said = gw_log.read_text().count("access logs: ")
            entry = {"Kind": "proxy-defaults", "Name": "global"}
            if on:
                entry["AccessLogs"] = {"Enabled": True, "Type": "file", "Path": str(lines)}
            assert agent.put("/v1/config", entry)[0] == 200
            if on or said:  # the gateway says each change ("access logs: file …" / "access logs: off")
                wait_for(lambda: gw_log.read_text().count("access logs: ") > said, 10, message="the setting")
            before = lines.stat().st_size if lines.exists() else 0
            meter = CpuMeter([gw.pid])
            meter.start()
            n = loop.run_until_complete(clients(gw_port, hello, args.duration, args.concurrency))
            cpu = meter.stop()
            if on:
                wait_for(lambda: lines.stat().st_size > before, 5, message="the lines written")
            return {"conns_per_s": n / args.duration, "cpu_s_per_1k": cpu * 1000 / max(n, 1),
                    "load1": loadavg()[0]}

        arms = [Arm("access logs off", lambda: arm(False)), Arm("access logs on (file)", lambda: arm(True))]
        alternate(arms, args.rounds)
        off, on = arms
        report("gateway_log", {
            "off": {k: off.median(k) for k in ("conns_per_s", "cpu_s_per_1k", "load1")},
            "on": {k: on.median(k) for k in ("conns_per_s", "cpu_s_per_1k", "load1")},
            "ratio_conns_on_vs_off": on.median("conns_per_s") / off.median("conns_per_s"),
            "ratio_cpu_on_vs_off": on.median("cpu_s_per_1k") / off.median("cpu_s_per_1k"),
            "lines": sum(1 for _ in open(lines)) if lines.exists() else 0})
    finally:
        if gw is not None and gw.poll() is None:
            os.killpg(gw.pid, signal.SIGTERM)
            gw.wait(10)
        server.close()
        loop.close()
        agent.stop()


if __name__ == "__main__":
    main()
