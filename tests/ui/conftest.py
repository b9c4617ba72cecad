"""Fixtures for the web UI's tests: one real dev agent and one headless Chromium per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess

sys.path.append(str(Path(__file__).parent))

from browser import Browser, chromium_or_skip  # noqa: E402


@pytest.fixture(scope="module")
def ui_agent(shared_dev_agent: AgentProcess) -> AgentProcess:
    """The module's dev agent (tests/conftest.py), under the name the UI's tests use."""
    return shared_dev_agent


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_or_skip() as b:
        yield b
