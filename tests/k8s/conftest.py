"""Fixtures for the Kubernetes tests: the test API server (or a real cluster), kubectl, namespaces.

Set PROCONSUL_K8S_KUBECONFIG=/path/to/kubeconfig to run the same tests against a real cluster; tests that
need a test-server hook (forced compaction, dropped watches) then skip with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))

from kube import KubeApi, start_test_apiserver  # noqa: E402


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """One Kubernetes API for a test module: the test server, or the real cluster named by the env switch."""
    real = os.environ.get("PROCONSUL_K8S_KUBECONFIG")
    if real:
        yield KubeApi(Path(real), None)
        return
    api = start_test_apiserver(tmp_path_factory.mktemp("kube"))
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def ns(kube: KubeApi) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (tests never share objects)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    # `kubectl create` sends protobuf, which the test server does not decode; apply sends JSON.
    kube.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n",
                 check=True)
    try:
        yield name
    finally:
        subprocess.run(kube.kubectl_cmd("delete", "namespace", name, "--wait=false"), capture_output=True,
                       timeout=60)
