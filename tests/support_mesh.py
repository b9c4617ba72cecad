"""Test support for the mesh: real sidecar proxy processes and real backends (HTTP, websocket, TCP echo).

Backends run in a thread with their own event loop, on free 127.0.0.1 ports; each HTTP backend answers
with its own name and counts the requests it saw, so tests can tell where traffic went.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
from support import CLI, AgentProcess, free_port, wait_for


class Backends:
    """HTTP (+ websocket echo at /ws) and raw TCP echo servers in one background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.AbstractServer] = []
        self.hits: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.in_flight = 0  # requests being answered now, over every backend (circuit-breaking tests)
        self.peak_in_flight = 0

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def http(self, name: str, status: int = 200, ssl_context: Any = None) -> int:
        """An HTTP backend answering `name` (and echoing websockets at /ws); returns its port.

        `/slow?ms=N` answers after N ms; the answer carries the request's headers; the status is
        `self.status[name]` at the time of the request (tests flip it). With `ssl_context`, HTTPS."""
        port = free_port()
        self.status[name] = status

        async def handler(request: web.Request) -> web.StreamResponse:
            self.hits[name] = self.hits.get(name, 0) + 1
            if request.path == "/slow":
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    await asyncio.sleep(int(request.query.get("ms", "1000")) / 1000)
                finally:
                    self.in_flight -= 1
            if request.path == "/ws":
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                async for msg in ws:
                    await ws.send_str(msg.data)
                return ws
            body = await request.read()
            return web.Response(status=self.status[name], text=json.dumps({
                "backend": name, "path": request.path, "body": len(body),
                "headers": {k.lower(): v for k, v in request.headers.items()}}), content_type="application/json")

        async def start() -> None:
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
            self._runners.append(runner)

        self._call(start())
        return port

    def tcp_echo(self) -> int:
        port = free_port()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def data_received(self, data: bytes) -> None:
                self.t.write(data)  # type: ignore[attr-defined]

        async def start() -> None:
            self._servers.append(await self.loop.create_server(Echo, "127.0.0.1", port))

        self._call(start())
        return port

    def close(self) -> None:
        async def stop() -> None:
            for r in self._runners:
                await r.cleanup()
            for s in self._servers:
                s.close()

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ProxyProcess:
    """`proconsul connect proxy -sidecar-for SERVICE` as a child process, with its admin port."""

    def __init__(self, agent: AgentProcess, workdir: Path, *, sidecar_for: str = "", proxy_id: str = "",
                 registered_admin_port: int = 0) -> None:
        """`registered_admin_port`: the registration names the admin port (Proxy.Config.envoy_prometheus_bind_addr);
        no -admin-bind is given, as a user who registered it would not."""
        self.agent = agent
        self.admin_flag = not registered_admin_port
        self.admin_port = registered_admin_port or free_port()
        name = sidecar_for or proxy_id
        self.log_path = Path(workdir) / f"proxy-{name}.log"
        self.args = ["-sidecar-for", sidecar_for] if sidecar_for else ["-proxy-id", proxy_id]
        self.command = "proxy"  # `connect gateway` for gateways started with the spelling
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        admin = ["-admin-bind", f"127.0.0.1:{self.admin_port}"] if self.admin_flag else []
        self.proc = subprocess.Popen([*CLI, "connect", self.command, *self.args, "-http-addr", self.agent.addr, *admin,
                                      "-log-level", "debug"],
                                     stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     start_new_session=True)
        log.close()
        wait_for(self.ready, timeout, message=f"proxy {' '.join(self.args[:2])} to be ready")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"proxy exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def admin(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            data = r.read()
        return json.loads(data) if path != "/metrics" else data.decode()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class GatewayProcess(ProxyProcess):
    """`proconsul connect gateway -KIND -service NAME -register -address ADDRESS` (ingress or terminating)."""

    def __init__(self, agent: AgentProcess, workdir: Path, kind: str, name: str, address: str) -> None:
        super().__init__(agent, workdir, proxy_id=name)
        self.command = "gateway"
        self.args = [f"-{kind}", "-service", name, "-register", "-address", address]


def sidecar_with_metrics(agent: AgentProcess, workdir: Path, name: str, port: int,
                         upstreams: dict[str, int] | None = None, service_id: str = "") -> ProxyProcess:
    """Register `name` (on `port`) with a sidecar whose admin listener is named in its registration
    (Proxy.Config.envoy_prometheus_bind_addr, where the agent finds it), and run that sidecar."""
    admin, sid = free_port(), service_id or name
    status, body, _ = agent.request("PUT", "/v1/agent/service/register", {
        "Name": name, "ID": sid, "Port": port, "Connect": {"SidecarService": {"Proxy": {
            "Upstreams": [{"DestinationName": u, "LocalBindPort": p} for u, p in (upstreams or {}).items()],
            "Config": {"envoy_prometheus_bind_addr": f"127.0.0.1:{admin}"}}}}})
    assert status == 200, body
    return ProxyProcess(agent, workdir, sidecar_for=sid, registered_admin_port=admin).start()


def mesh_service(agent: AgentProcess, workdir: Path, name: str, port: int, protocol: str = "") -> ProxyProcess:
    """Register `name` (on `port`) with a default sidecar (and, given `protocol`, its service-defaults
    Protocol), and run that sidecar."""
    if protocol:
        assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": name, "Protocol": protocol})[0] == 200
    assert agent.put("/v1/agent/service/register", {"Name": name, "Port": port,
                                                    "Connect": {"SidecarService": {}}})[0] == 200
    return ProxyProcess(agent, workdir, sidecar_for=name).start()


def passing_instances(agent: AgentProcess, service: str) -> int:
    status, body = agent.get(f"/v1/health/connect/{service}?passing")
    return len(body) if status == 200 else 0


def wait_passing(agent: AgentProcess, service: str, n: int = 1, timeout: float = 15.0) -> None:
    wait_for(lambda: passing_instances(agent, service) >= n, timeout,
             message=f"{n} passing sidecar(s) of {service}")


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send `payload` on a new connection and read until as many bytes came back (or the peer closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        return got


def ws_echo(port: int, messages: list[str]) -> list[str]:
    """Send `messages` over one websocket to `/ws` on `port`; what came back, in order."""
    import aiohttp

    async def talk() -> list[str]:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            out = []
            for m in messages:
                await ws.send_str(m)
                out.append((await ws.receive(timeout=5)).data)
            return out

    return asyncio.run(talk())


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, json.loads(r.read())


__all__ = ["Backends", "ProxyProcess", "exchange", "http_get", "wait_passing", "passing_instances", "sys", "ws_echo",
           "sidecar_with_metrics"]


class OTLPReceiver:
    """An OTLP/HTTP traces endpoint inside the test (on the backends' loop), decoding with opentelemetry-proto."""

    def __init__(self, backends: Backends) -> None:
        from aiohttp import web
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[tuple[str, Any]] = []  # (service.name, Span)
        self.port = free_port()

        async def traces(request: web.Request) -> web.Response:
            req = ExportTraceServiceRequest.FromString(await request.read())
            for rs in req.resource_spans:
                svc = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                self.spans += [(svc, s) for ss in rs.scope_spans for s in ss.spans]
            return web.Response(body=b"", content_type="application/x-protobuf")

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/traces", traces)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            backends._runners.append(runner)

        backends._call(start())

    def of_trace(self, trace_id: bytes) -> list[tuple[str, Any]]:
        return [(svc, s) for svc, s in self.spans if s.trace_id == trace_id]
