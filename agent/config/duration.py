"""Consul/Go duration strings ("10s", "1m30s", "250ms", "72h") to seconds and back."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class DurationError(ValueError):
    """A string that is not a Go-style duration."""


def parse_duration(text: str | int | float, *, bare_unit: float | None = None) -> float:
    """Parse a Go duration into seconds.

    A bare number has no unit and is an error, unless `bare_unit` is given (seconds per bare unit),
    for the few config keys where Consul accepts plain numbers.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        if bare_unit is None:
            raise DurationError(f"duration {text!r} needs a unit (e.g. \"10s\")")
        return float(text) * bare_unit
    if not isinstance(text, str):
        raise DurationError(f"duration must be a string, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise DurationError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if bare_unit is not None and re.fullmatch(r"\d+(\.\d+)?", s):
        return sign * float(s) * bare_unit
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise DurationError(f"invalid duration {text!r} (use e.g. \"10s\", \"1m30s\", \"250ms\")")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Seconds as a Go duration string ("1m30s", "250ms", "0s")."""
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        ms = seconds * 1000
        out = f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}µs"
    else:
        h, rem = divmod(seconds, 3600)
        m, s = divmod(rem, 60)
        out = ""
        if h:
            out += f"{int(h)}h"
        if h or m:
            out += f"{int(m)}m"
        out += f"{s:g}s"
    return ("-" if neg else "") + out
