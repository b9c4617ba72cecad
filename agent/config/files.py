"""Config files: JSON or HCL (python-hcl2) read into a dict of Consul's keys; a config dir's files in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from proconsul.agent.config.model import ConfigError


def _hcl_unwrap(obj: Any) -> Any:
    """python-hcl2 wraps every block in a list; Consul's files mean a single object."""
    if isinstance(obj, dict):
        return {k: _hcl_unwrap(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hcl_unwrap(v) for v in obj]
    if isinstance(obj, str) and len(obj) >= 2 and obj[0] == obj[-1] == '"':
        return obj[1:-1]
    return obj


_BLOCKS = {"service", "check", "ports", "dns_config", "ui_config", "connect", "node_meta", "addresses",
           "performance", "telemetry", "limits"}


def _hcl_single_blocks(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in _BLOCKS and isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict):
            v = v[0]
        out[k] = v
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Read one JSON or HCL config file into a dict of Consul keys."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    elif p.suffix == ".hcl":
        import hcl2

        try:
            data = _hcl_single_blocks(_hcl_unwrap(hcl2.loads(text)))
        except Exception as e:  # python-hcl2 raises lark errors of many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{p}: invalid HCL: {first}") from None
    else:
        raise ConfigError(f"{p}: config files must end in .json or .hcl")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be an object")
    return data


def config_dir_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"config dir {d} is not a directory")
    return sorted(f for f in d.iterdir() if f.suffix in (".json", ".hcl") and f.is_file())
