"""Test support: start real agent processes, find free ports, wait for conditions with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
PROCONSUL = [sys.executable, "-m", "proconsul.agent.cli"]


class _PortShare:
    """This test process's share of a port range below the ephemeral range (32768+, where any outgoing
    connection may take a port before the agent it was chosen for binds it). Parallel xdist workers get
    disjoint slices, and a port handed out once is not handed out again while unused ones remain: a
    stopped agent's port reused by another test's agent would let a cluster still dialing it meet a
    stranger with the same datacenter names (seen: two WAN pools merging under `-n 2`)."""

    def __init__(self, low: int, high: int) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        index = int(worker[2:]) if worker[2:].isdigit() else 0
        count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
        span = (high - low) // count
        self.low, self.high = low + index * span, low + (index + 1) * span
        self.given: set[int] = set()

    def take(self, width: int = 1) -> int:
        """The first of `width` consecutive ports, all free for TCP and UDP on 127.0.0.1 right now."""
        import random

        rng = random.Random()
        for attempt in range(400):
            base = rng.randrange(self.low, self.high - width)
            if attempt < 300 and any(p in self.given for p in range(base, base + width)):
                continue
            if all(_bindable(p) for p in range(base, base + width)):
                self.given.update(range(base, base + width))
                return base
        raise RuntimeError(f"no free port found in {self.low}-{self.high}")


def _bindable(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            s.bind(("127.0.0.1", port))
            u.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


_SINGLE_PORTS = _PortShare(10000, 20000)
_PORT_BLOCKS = _PortShare(20000, 32000)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now, from this worker's share (_PortShare)."""
    return _SINGLE_PORTS.take()


def free_port_block(n: int = 16) -> int:
    """The first of `n` consecutive ports free right now, from this worker's share (_PortShare)."""
    return _PORT_BLOCKS.take(n)


def get_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of one GET, an HTTP error status included (an admin or readiness endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as e:  # the condition may raise until the thing it waits for exists
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" + (f" (last error: {last_exc})"
                                                                               if last_exc else ""))


async def until(condition: Callable[[], Any], timeout: float = 10.0, message: str = "condition",
                interval: float = 0.02) -> None:
    """`wait_for` for code on an event loop: poll `condition` between loop turns until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


class AgentProcess:
    """A real `proconsul agent` child process with its own ports and data dir."""

    def __init__(self, workdir: Path, *, dev: bool = True, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.dev = dev
        self.http_port = free_port()
        self.dns_port = free_port()
        self.server_port = free_port()
        self.serf_lan_port = free_port()
        self.serf_wan_port = free_port()
        self.extra_args = list(args or [])
        self.env = env
        # Sidecar proxies get ports from a block of this agent's own, not Consul's shared 21000-21255,
        # so agents of tests running side by side never hand out the same port.
        self.sidecar_min_port = free_port_block()
        self.sidecar_max_port = self.sidecar_min_port + 15
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "agent.log"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def command(self) -> list[str]:
        cmd = [*PROCONSUL, "agent", "--http-port", str(self.http_port), "--dns-port", str(self.dns_port),
               "--server-port", str(self.server_port), "--serf-lan-port", str(self.serf_lan_port),
               "--serf-wan-port", str(self.serf_wan_port)]
        if self.dev:
            cmd.append("--dev")
        ports = self.workdir / "test-sidecar-ports.json"
        ports.parent.mkdir(parents=True, exist_ok=True)
        ports.write_text(json.dumps({"ports": {"sidecar_min_port": self.sidecar_min_port,
                                               "sidecar_max_port": self.sidecar_max_port}}))
        return cmd + ["--config-file", str(ports)] + self.extra_args

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it answers with a known leader. A port chosen for it that
        another test's process took in the meantime is chosen again (at most twice)."""
        for attempt in range(3):
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.start_background()
            try:
                self.wait_ready(timeout)
                return
            except AssertionError:
                exited = self.proc is not None and self.proc.poll() is not None
                if attempt == 2 or not exited or "address already in use" not in self.log()[log_start:]:
                    raise
                self.http_port, self.dns_port = free_port(), free_port()
                self.server_port, self.serf_lan_port, self.serf_wan_port = free_port(), free_port(), free_port()

    def start_background(self) -> None:
        """Start the process without waiting (for clusters whose members need each other to be ready)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     env=env, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/v1/status/leader")[1] not in ("", None)
            except (OSError, urllib.error.URLError):
                return False

        wait_for(up, timeout, message=f"agent on {self.addr} to answer")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                timeout: float = 30.0) -> tuple[int, Any, dict[str, str]]:
        """(status, decoded JSON or text, headers) for one HTTP call to the agent."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, payload, headers = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            status, payload, headers = e.code, e.read(), dict(e.headers)
        ctype = headers.get("Content-Type", "")
        if "json" in ctype and payload:
            return status, json.loads(payload), headers
        return status, payload.decode(errors="replace"), headers

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, body, _ = self.request("GET", path, **kw)
        return status, body

    def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, out, _ = self.request("PUT", path, body, **kw)
        return status, out


# ---------------------------------------------------------------------- the CLI, as a user runs it
CLI = [sys.executable, "-m", "proconsul.agent.cli"]


def agent_certs(tmp_path: Path) -> Path:
    """A CA and a dc1 server certificate made by `proconsul tls` (as Consul's `consul tls`), in tmp_path/certs."""
    d = tmp_path / "certs"
    d.mkdir()
    for args in (["tls", "ca", "create"], ["tls", "cert", "create", "--server"]):
        subprocess.run([*CLI, *args], cwd=d, check=True, capture_output=True, timeout=60)
    return d


def run(agent: AgentProcess | None, *args: str, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("PROCONSUL_HTTP_ADDR", None)
    full_env.pop("CONSUL_HTTP_ADDR", None)
    if agent is not None:
        full_env["PROCONSUL_HTTP_ADDR"] = agent.addr
    full_env.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin, env=full_env, timeout=60)


def ok(agent: AgentProcess | None, *args: str, **kw) -> str:
    res = run(agent, *args, **kw)
    assert res.returncode == 0, f"{args}: {res.stderr}"
    return res.stdout


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# ---------------------------------------------------------------------- clusters of real server processes
class ServerCluster:
    """N `proconsul agent --server --bootstrap-expect N` processes that find each other by retry-join."""

    def __init__(self, workdir: Path, n: int = 3, *, extra_args: list[str] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "cluster.json"
        config_path.write_text(json.dumps({"enable_debug": True, **(config or {})}))
        lan = [free_port() for _ in range(n)]
        self.servers: list[AgentProcess] = []
        for i in range(n):
            args = ["--server", "--bootstrap-expect", str(n), "--node", f"s{i}", "--data-dir",
                    str(self.workdir / f"s{i}" / "data"), "--retry-interval", "1s", "--config-file", str(config_path)]
            for j in range(n):
                if j != i:
                    args += ["--retry-join", f"127.0.0.1:{lan[j]}"]
            a = AgentProcess(self.workdir / f"s{i}", dev=False, args=args + list(extra_args or []))
            a.serf_lan_port = lan[i]
            self.servers.append(a)

    def start(self, timeout: float = 30.0) -> None:
        """Start every server and wait for each to know a leader; if one does not, stop them all (a test
        that calls this before its own try/finally would otherwise leave them running)."""
        for a in self.servers:
            a.start_background()
        try:
            for a in self.servers:
                a.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for a in self.servers:
            a.stop()

    def running(self) -> list[AgentProcess]:
        return [a for a in self.servers if a.proc is not None and a.proc.poll() is None]

    def leader(self, timeout: float = 15.0, among: list[AgentProcess] | None = None) -> AgentProcess:
        """The server that says it leads, once all running servers agree on it."""
        def agreed() -> AgentProcess | None:
            group = among or self.running()
            seen = set()
            for a in group:
                try:
                    seen.add(a.get("/v1/status/leader")[1])
                except OSError:
                    return None
            if len(seen) != 1 or "" in seen:
                return None
            addr = seen.pop()
            return next((a for a in self.running() if addr.endswith(f":{a.server_port}")), None)

        return wait_for(agreed, timeout, message="the servers to agree on a leader")

    def client(self, name: str, via: int = 0) -> AgentProcess:
        """A client agent (not started) that joins through server `via`'s LAN port."""
        workdir = self.workdir / name
        return AgentProcess(workdir, dev=False, args=[
            "--node", name, "--data-dir", str(workdir / "data"), "--retry-interval", "1s",
            "--retry-join", f"127.0.0.1:{self.servers[via].serf_lan_port}"])

    def followers(self) -> list[AgentProcess]:
        lead = self.leader()
        return [a for a in self.running() if a is not lead]


# ---------------------------------------------------------------------- raw HTTP/1.1 (the lean front)
class Conn:
    """One keep-alive HTTP/1.1 connection, written and read as raw bytes."""

    def __init__(self, agent: AgentProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
        self.buf = b""

    def send(self, data: bytes, answers: int = 1) -> list[bytes]:
        self.sock.sendall(data)
        out: list[bytes] = []
        while len(out) < answers:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"(?i)\r\nContent-Length: (\d+)", self.buf[:end])
                size = end + 4 + (int(m.group(1)) if m else 0)
                if len(self.buf) >= size:
                    out.append(self.buf[:size])
                    self.buf = self.buf[size:]
                    continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            self.buf += chunk
        return out

    def get(self, target: str, headers: str = "") -> bytes:
        return self.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())[0]

    def close(self) -> None:
        self.sock.close()


def lean_answers(agent: AgentProcess, token: str = "") -> int:
    _, metrics = agent.get(f"/v1/agent/metrics?token={token}" if token else "/v1/agent/metrics")
    return int(sum(c["Count"] for c in metrics["Counters"] if c["Name"].endswith("http.lean_answers")))
