"""The wheel carries every module of every component folder as proconsul.<component>.<module>.

The wheel is built and unpacked, and a child Python imports each module from the unpacked copy with
the editable-install finder removed, so a component folder missing from pyproject's package list
(or a sub-folder that is not listed) fails here instead of on a user's machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = {"agent": "agent", "catalog": "catalog", "consensus": "consensus", "connect": "connect", "dns": "dns",
              "ui": "ui", "k8s-sync": "k8s_sync"}

CHILD = r"""
import importlib, json, sys
root = sys.argv[1]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_hooks = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path = [root] + [p for p in sys.path if "editable" not in p and "/work/" not in p or "site-packages" in p]
for name in list(sys.modules):
    if name.startswith("proconsul"):
        del sys.modules[name]
failures = {}
for mod in json.loads(sys.argv[2]):
    try:
        m = importlib.import_module(mod)
        if not m.__file__.startswith(root):
            failures[mod] = f"imported from {m.__file__}, not from the wheel"
    except Exception as e:
        failures[mod] = f"{type(e).__name__}: {e}"
print(json.dumps(failures))
"""


def test_every_module_imports_from_the_wheel(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path, timeout=300)
    wheel = next(tmp_path.glob("proconsul-*.whl"))
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    modules = []
    for folder, pkg in COMPONENTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            modules.append(".".join(["proconsul", pkg, *rel.parts]))
    assert "proconsul.agent.cli.main" in modules and "proconsul.catalog.store" in modules
    out = subprocess.run([sys.executable, "-c", CHILD, str(unpacked), json.dumps(modules)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert failures == {}, failures


def test_component_folders_have_no_top_init() -> None:
    for folder in COMPONENTS:
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow real packages"
