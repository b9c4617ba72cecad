"""Go-style duration strings in proxy settings ("250ms", "30s", "1m30s") to seconds.

The proxy is a separate program that talks to the agent only over HTTP, so it keeps this small
reader of its own rather than importing the agent's config code.
"""

from __future__ import annotations

import re

_SCALE = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TERM = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_seconds(text: str) -> float:
    """Seconds in `text`; ValueError says what a duration looks like."""
    s = text.strip()
    terms = _TERM.findall(s)
    if not s or "".join(n + u for n, u in terms) != s:
        raise ValueError(f"{text!r} is not a duration (use e.g. \"250ms\", \"30s\", \"1m30s\")")
    seconds = sum(float(n) * _SCALE[u] for n, u in terms)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds
