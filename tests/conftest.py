"""Shared fixtures: real agent processes on free 127.0.0.1 ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))

from support import AgentProcess  # noqa: E402


@pytest.fixture
def dev_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A fresh `proconsul agent --dev` process with its own HTTP and DNS ports."""
    proc = AgentProcess(tmp_path, dev=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shared_dev_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One dev agent for a whole test module (tests must not depend on each other's data)."""
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), dev=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
