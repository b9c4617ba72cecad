"""No import cycles between our modules, and the pure cores import nothing that reaches the outside world.

The graph is built with `ast` from every component folder, counting every import: module level,
function level and `if TYPE_CHECKING:` alike (a type-only import is still a dependency in the wrong
direction). Direction is broken with callbacks and small protocols, never by importing upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Component folder -> import name under the `proconsul` root (pyproject's package-dir mapping).
COMPONENTS = {"agent": "agent", "catalog": "catalog", "consensus": "consensus", "connect": "connect", "dns": "dns",
              "ui": "ui", "k8s-sync": "k8s_sync", "membership": "membership"}

# Pure cores (DESIGN.md §6): time and randomness come in as arguments; no clock, randomness, event loop,
# sockets, threads, processes or files. A folder name means every module below it.
PURE = ["consensus/core.py", "consensus/progress.py", "consensus/log.py", "dns/answer.py", "dns/wan_view.py",
        "agent/cluster/vivaldi.py",
        "connect/intentions.py", "catalog", "membership/core.py", "membership/view.py", "membership/codec.py",
        "membership/config.py", "membership/suspicion.py", "membership/health.py", "membership/broadcast.py",
        "membership/errors.py", "agent/cluster/coordinates.py", "connect/chain/compiler.py",
        "connect/chain/canary.py", "connect/chain/entries.py", "agent/acl/authorizer.py", "agent/acl/rules.py",
        "agent/acl/enforce.py", "connect/proxy/gateway_resolver.py", "connect/proxy/balancer.py",
        "connect/proxy/addresses.py"]
BANNED_MODULES = {"time", "random", "asyncio", "socket", "selectors", "threading", "subprocess", "os", "pathlib",
                  "shutil", "tempfile", "io", "datetime", "uuid", "secrets", "ssl"}
BANNED_CALLS = {"open", "input", "print"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in COMPONENTS.items():
        base = REPO / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join(["proconsul", pkg, *parts])] = path
    return out


def _imported(name: str, path: Path, tree: ast.AST) -> list[tuple[str, int]]:
    """(module imported, line) for every import in a module, relative imports resolved."""
    package = name.rsplit(".", 1)[0] if path.stem != "__init__" else name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, node.lineno))
            found += [(f"{mod}.{a.name}", node.lineno) for a in node.names]  # `from pkg import module`
    return found


def _graph() -> dict[str, dict[str, int]]:
    mods = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, line in _imported(name, path, tree):
            if target in mods and target != name:
                graph[name].setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sccs:
        members = set(comp)
        start = min(comp)
        # Breadth-first search back to the start inside the component gives one readable cycle.
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        cycles.append(list(reversed(path)))
    return cycles


def test_graph_sees_imports() -> None:
    graph = _graph()
    assert "proconsul.catalog.store" in graph["proconsul.agent.agent"] or any(
        t.startswith("proconsul.catalog") for t in graph["proconsul.agent.agent"])
    assert "proconsul.consensus.core" in graph["proconsul.consensus.node"]


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    lines = []
    for cycle in cycles:
        hops = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
        lines.append(" -> ".join(hops + [cycle[-1]]))
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def _pure_files() -> list[Path]:
    files = []
    for entry in PURE:
        path = REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_pure_cores_stay_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        bad += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in BANNED_MODULES]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS:
            bad.append(f"line {node.lineno}: calls {node.func.id}()")
    assert not bad, f"{path.relative_to(REPO)} must stay pure (time and randomness are inputs): " + "; ".join(bad)


def test_agent_top_level_holds_only_the_agent() -> None:
    """Everything else in the agent lives in a folder named for its concern (docs/architecture.md)."""
    loose = sorted(p.name for p in (REPO / "agent").glob("*.py") if p.name not in ("agent.py", "version.py"))
    assert not loose, (
        f"agent/ should hold only agent.py and version.py beside its sub-packages; move {loose} into the "
        "folder of its concern (api/, cli/, checks/, cluster/, config/, connect/, local/, observe/)")
