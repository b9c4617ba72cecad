"""Debian's headless Chromium driven by Playwright (its own browser download does not work here)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
Browser = Any  # playwright.sync_api.Browser (imported lazily: the module is a test extra)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A running headless Chromium; raises when it cannot be started."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("no chromium on PATH (Debian package `chromium`, installed by `make test`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def chromium_or_skip() -> Iterator[Browser]:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("pip's playwright is not installed (it is in the test extras: pip install -e '.[test]')")
    with chromium() as b:
        yield b
