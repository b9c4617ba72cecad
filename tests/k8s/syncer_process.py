"""Test support: a real `python -m proconsul.k8s_sync` process against a test API server and a dev agent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))

from kube import KubeApi  # noqa: E402
from support import AgentProcess, free_port, get_text, wait_for  # noqa: E402


class SyncerProcess:
    def __init__(self, workdir: Path, kube: KubeApi, agent: AgentProcess, *args: str) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "proconsul.k8s_sync", "--kubeconfig", str(kube.kubeconfig), "--http-addr",
                    agent.addr, "--listen", f"127.0.0.1:{self.port}", "--log-level", "debug", *args]
        self.log_path = self.workdir / f"syncer-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: bool = True, timeout: float = 20) -> SyncerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if ready:
            wait_for(self.is_ready, timeout, message=f"the syncer to be ready (log: {self.log_path})")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _get(self, path: str) -> tuple[int, str]:
        return get_text(f"http://127.0.0.1:{self.port}{path}")

    def is_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"syncer exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self._get("/health/ready")[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        status, text = self._get("/metrics")
        assert status == 200
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def instances(agent: AgentProcess, service: str, passing: bool = False) -> dict[str, dict[str, Any]]:
    """ID → {Address, Port, Tags, Meta, Status, Node} of a service's instances, from /v1/health/service."""
    status, rows = agent.get(f"/v1/health/service/{service}" + ("?passing" if passing else ""))
    assert status == 200, rows
    out = {}
    for r in rows:
        worst = "passing"
        for c in r["Checks"]:
            if c["Status"] != "passing":
                worst = c["Status"]
        out[r["Service"]["ID"]] = {"Address": r["Service"]["Address"], "Port": r["Service"]["Port"],
                                   "Tags": r["Service"]["Tags"], "Meta": r["Service"]["Meta"], "Status": worst,
                                   "Node": r["Node"]["Node"], "ModifyIndex": r["Service"]["ModifyIndex"]}
    return out


def apply(kube: KubeApi, ns: str, *objs: dict[str, Any]) -> None:
    docs = "\n---\n".join(json.dumps(o) for o in objs)
    kube.kubectl("apply", "-n", ns, "-f", "-", input=docs, check=True)


def service(name: str, *, ports: list[dict[str, Any]] | None = None, ann: dict[str, str] | None = None,
            **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "annotations": ann or {}},
            "spec": {"selector": {"app": name}, "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}],
                     **spec}}


def endpoint_slice(service_name: str, addrs: dict[str, bool], port: int = 8080, suffix: str = "a") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-{suffix}", "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": r},
                           "targetRef": {"kind": "Pod", "name": f"{service_name}-{a.replace('.', '-')}"}}
                          for a, r in addrs.items()]}
