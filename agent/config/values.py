"""Typed config values: each checker names the key and the file when a value is wrong."""

from __future__ import annotations

from typing import Any

from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.agent.config.model import ConfigError


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def as_bool(key: str, v: Any, src: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ConfigError(f"{src}: {key} must be true or false, got {v!r}")


def as_int(key: str, v: Any, src: str) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{src}: {key} must be a number, got {v!r}")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{src}: {key} must be a whole number, got {v!r}") from None


def as_duration(key: str, v: Any, src: str) -> float:
    try:
        return parse_duration(v, bare_unit=1.0)
    except DurationError as e:
        raise ConfigError(f"{src}: {key}: {e}") from None


def as_str_list(key: str, v: Any, src: str) -> list[str]:
    items = as_list(v)
    if not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{src}: {key} must be a list of strings")
    return list(items)


def as_object(key: str, item: Any, src: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConfigError(f"{src}: {key} must be an object (or a list of objects)")
    return item
