"""A small declarative schema for config entries: field names matched as Consul's decoder matches them
(PascalCase, snake_case or any case: `path_prefix`, `PathPrefix`, `pathprefix`), unknown fields refused,
values type-checked, and the entry written back in Consul's canonical PascalCase with durations as Go
strings. Errors name the field by its path (`Routes[0].Match.HTTP.PathPrefix`).

Pure: no I/O. Maps whose keys the user chooses (subset names, header names, `Meta`) keep their keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proconsul.connect.chain import durations


class SchemaError(ValueError):
    """A value that does not fit its field; `path` is where (empty at the top)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def canon(key: str) -> str:
    """How field names are compared: case and underscores do not matter (Consul's decoder agrees)."""
    return key.replace("_", "").replace("-", "").lower()


class Type:
    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Type):
    choices: tuple[str, ...] = ()
    lower: bool = False

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise SchemaError(path, f"must be a string, not {_show(value)}")
        if self.lower:
            value = value.lower()
        if self.choices and value not in self.choices:
            raise SchemaError(path, f"{value!r} is not one of {', '.join(repr(c) for c in self.choices if c)}")
        return value


@dataclass(frozen=True)
class Int(Type):
    lo: int = 0
    hi: int = 2**32 - 1

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, bool):
            raise SchemaError(path, f"must be a whole number, not {_show(value)}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int):
            raise SchemaError(path, f"must be a whole number, not {_show(value)}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(path, f"must be between {self.lo} and {self.hi}, got {value}")
        return value


@dataclass(frozen=True)
class Float(Type):
    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise SchemaError(path, f"must be a number, not {_show(value)}")
        try:
            return float(value)
        except ValueError:
            raise SchemaError(path, f"must be a number, not {_show(value)}") from None


@dataclass(frozen=True)
class Bool(Type):
    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise SchemaError(path, f"must be true or false, not {_show(value)}")
        return value


@dataclass(frozen=True)
class Duration(Type):
    """A Go duration, stored as Go prints it ("15s")."""

    def check(self, value: Any, path: str) -> Any:
        try:
            return durations.format(durations.parse(value))
        except ValueError as e:
            raise SchemaError(path, str(e)) from None


@dataclass(frozen=True)
class Opaque(Type):
    """Kept as given (proxy-defaults' `Config`, Envoy extensions): a JSON object or anything."""

    object_only: bool = True

    def check(self, value: Any, path: str) -> Any:
        if self.object_only and not isinstance(value, Mapping):
            raise SchemaError(path, f"must be an object, not {_show(value)}")
        return value


@dataclass(frozen=True)
class List(Type):
    item: Type

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, Mapping) and isinstance(self.item, Obj):
            value = [value]  # HCL blocks written once decode as one object (Consul's weak decoding agrees)
        if not isinstance(value, list):
            raise SchemaError(path, f"must be a list, not {_show(value)}")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Map(Type):
    """An object whose keys the user chooses (subset names, header names); values checked."""

    value: Type

    def check(self, value: Any, path: str) -> Any:
        value = _one_object(value, path)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(path, f"keys must be strings, not {_show(k)}")
            out[k] = self.value.check(v, f"{path}[{k!r}]")
        return out


@dataclass(frozen=True)
class Obj(Type):
    """An object with known fields (Consul's names); anything else is refused."""

    fields: dict[str, Type]
    _by_canon: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_canon.update({canon(k): k for k in self.fields})

    def check(self, value: Any, path: str) -> Any:
        value = _one_object(value, path)
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = self._by_canon.get(canon(k)) if isinstance(k, str) else None
            if name is None:
                where = f" in {path}" if path else ""
                raise SchemaError(path, f"unknown field {k!r}{where}") if path else SchemaError(
                    "", f"unknown field {k!r}")
            if v is None:
                continue  # JSON null: as if absent (Go's decoder leaves the zero value)
            out[name] = self.fields[name].check(v, f"{path}.{name}" if path else name)
        return out


def _one_object(value: Any, path: str) -> Mapping[str, Any]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        value = value[0]  # an HCL block decodes as a list of one object
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"must be an object, not {_show(value)}")
    return value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return repr(value)
