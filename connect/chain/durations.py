"""Go `time.Duration` values as Consul's config entries carry them: strings ("15s", "1m30s", "250ms") or
numbers of nanoseconds (what Go's JSON decoder makes of a bare number), written back as Go prints them."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse(value: object) -> float:
    """Seconds in a Go duration (a string, or a number of nanoseconds). ValueError says what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    s = value.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{value!r} is not a duration (use e.g. \"250ms\", \"15s\", \"1m30s\")")
    return sign * total


def format(seconds: float) -> str:  # noqa: A001 - the module's verb, as in `durations.format`
    """Seconds as Go's Duration.String() writes them: "0s", "250ms", "15s", "1m30s", "1h0m0s"."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    ns = round(abs(seconds) * 1e9)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1e3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1e6)}ms"
    h, rest = divmod(ns, 3_600_000_000_000)
    m, rest = divmod(rest, 60_000_000_000)
    s = _trim(rest / 1e9)
    if h:
        return f"{sign}{h}h{m}m{s}s"
    if m:
        return f"{sign}{m}m{s}s"
    return f"{sign}{s}s"


def _trim(x: float) -> str:
    return f"{x:.9f}".rstrip("0").rstrip(".")
