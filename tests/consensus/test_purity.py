"""TigerBeetle's rule: the pure Raft core never touches the clock, global randomness, disk or network."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONSENSUS = Path(__file__).resolve().parents[2] / "consensus"
PURE = ["core.py", "log.py", "messages.py", "progress.py", "errors.py"]
BANNED_MODULES = {"time", "random", "os", "socket", "asyncio", "threading", "datetime", "secrets", "uuid",
                  "pathlib", "io", "select", "selectors", "subprocess", "pickle"}
BANNED_CALLS = {"open", "print", "input", "hash", "id"}


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_and_calls(name: str) -> None:
    tree = ast.parse((CONSENSUS / name).read_text(), name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in BANNED_MODULES, f"{name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert (node.module or "").split(".")[0] not in BANNED_MODULES, f"{name} imports from {node.module}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in BANNED_CALLS, f"{name} calls {node.func.id}() at line {node.lineno}"


def test_no_pickle_anywhere_in_consensus() -> None:
    for path in CONSENSUS.glob("*.py"):
        assert "pickle" not in path.read_text(), f"{path.name} mentions pickle"
