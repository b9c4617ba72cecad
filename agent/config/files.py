"""Config files: JSON or HCL (python-hcl2) read into a dict of Consul's keys; a config dir's files in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from proconsul.agent.config.model import ConfigError


def _hcl_unwrap(obj: Any) -> Any:
    """python-hcl2 wraps every block in a list; Consul's files mean a single object."""
    if isinstance(obj, dict):  # python-hcl2 ≥ 7 marks blocks with "__is_block__": not a config key
        return {_hcl_unwrap(k): _hcl_unwrap(v) for k, v in obj.items() if k != "__is_block__"}  # "*" = {…}: key *
    if isinstance(obj, list):
        return [_hcl_unwrap(v) for v in obj]
    if isinstance(obj, str) and len(obj) >= 2 and obj[0] == obj[-1] == '"':
        return obj[1:-1]
    return obj


def _hcl_single_blocks(obj: Any) -> Any:
    """HCL gives every block as a list of objects; a list of exactly one object means that object. (Keys
    that hold lists of objects — services, checks, upstreams, bootstrap entries — accept either.)"""
    if isinstance(obj, dict):
        return {k: _hcl_single_blocks(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) == 1 and isinstance(obj[0], dict):
            return _hcl_single_blocks(obj[0])
        return [_hcl_single_blocks(v) for v in obj]
    return obj


def parse_text(text: str, fmt: str, src: str) -> dict[str, Any]:
    """Config text in `fmt` ("json" or "hcl") to a dict of Consul keys; errors name `src`."""
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{src}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    elif fmt == "hcl":
        import hcl2

        try:
            data = _hcl_single_blocks(_hcl_unwrap(hcl2.loads(text)))
        except Exception as e:  # python-hcl2 raises lark errors of many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{src}: invalid HCL: {first}") from None
    else:
        raise ConfigError(f"{src}: config format must be json or hcl, not {fmt!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: the top level must be an object")
    return data


def load_file(path: str | Path, fmt: str = "") -> dict[str, Any]:
    """Read one JSON or HCL config file into a dict of Consul keys; `fmt` overrides the extension
    (Consul's -config-format)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    if not fmt:
        fmt = {".json": "json", ".hcl": "hcl"}.get(p.suffix, "")
        if not fmt:
            raise ConfigError(f"{p}: config files must end in .json or .hcl (or pass -config-format json|hcl)")
    return parse_text(text, fmt, str(p))


def config_dir_files(directory: str | Path, fmt: str = "") -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"config dir {d} is not a directory")
    return sorted(f for f in d.iterdir() if f.is_file() and (fmt or f.suffix in (".json", ".hcl")))
