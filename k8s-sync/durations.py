"""Go-style durations for flags (`30s`, `1m30s`, `500ms`), as consul-k8s takes them."""

from __future__ import annotations

import re

from .errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str, flag: str = "duration") -> float:
    """Seconds in a Go duration string; a bare number is seconds."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise ConfigError(f"{flag} {text!r} is not a duration such as 30s, 1m30s or 500ms")
    return total
