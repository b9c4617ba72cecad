"""Automated canaries (beyond Consul, Linkerd and Istio, which need Flagger or Argo Rollouts): a splitter's
weight that moves to a new subset step by step while the canary's golden metrics — read from its own
sidecars — stay within limits, and goes back at once when they do not. Pure: the canary's state, what
its proxies measured and the time in; what to do out. The agent's leader runs it (agent/api/canary.py)
and each step is an ordinary `service-splitter` write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proconsul.connect.chain import durations

PHASES = ("progressing", "promoted", "rolled-back", "aborted")
HISTORY_MAX = 50


class CanaryError(ValueError):
    """A canary request that cannot be used (the message names the field)."""


@dataclass(frozen=True, slots=True)
class Health:
    """What the canary subset's sidecars measured of their callers' requests lately."""

    requests: int
    errors: int  # answered 5xx (or not answered)
    p99_ms: float | None
    window_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "hold", "step", "promote", "rollback"
    weight: float  # the canary's weight after the action
    reason: str


def _percent(value: Any, field: str) -> float:
    text = str(value).strip()
    try:
        v = float(text[:-1]) if text.endswith("%") else float(text)
    except ValueError:
        raise CanaryError(f"{field} {value!r} must be a percentage such as 1% or 0.5") from None
    if not 0 <= v <= 100:
        raise CanaryError(f"{field} {value!r} must be between 0 and 100")
    return v


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        return durations.parse(str(value))
    except ValueError as e:
        raise CanaryError(f"{field}: {e}") from None


def spec(service: str, body: dict[str, Any], default_subset: str) -> dict[str, Any]:
    """A canary's settings from a start request (`ToSubset`, `FromSubset`, `Step`, `Interval`, `MaxErrorRate`,
    `MaxP99`, `MinRequests`), checked; `default_subset` is the resolver's DefaultSubset (the usual from)."""
    to = str(body.get("ToSubset") or "")
    if not to:
        raise CanaryError("ToSubset is required: the subset to move traffic to")
    frm = str(body.get("FromSubset") or default_subset or "")
    if not frm:
        raise CanaryError(f"FromSubset is required: service-resolver {service!r} has no DefaultSubset to start from")
    if frm == to:
        raise CanaryError(f"FromSubset and ToSubset are both {to!r}")
    step = _percent(body.get("Step", 10), "Step")
    if not 0 < step <= 100:
        raise CanaryError(f"Step {body.get('Step')!r} must be above 0 and at most 100")
    interval = _seconds(body.get("Interval", "30s"), "Interval")
    if interval < 1:
        raise CanaryError("Interval must be at least 1s")
    max_p99 = _seconds(body["MaxP99"], "MaxP99") if body.get("MaxP99") not in (None, "", 0) else 0.0
    min_requests = body.get("MinRequests", 10)
    if not isinstance(min_requests, int) or min_requests < 0:
        raise CanaryError(f"MinRequests {min_requests!r} must be a whole number, 0 or more")
    return {"Service": service, "FromSubset": frm, "ToSubset": to, "Step": step, "IntervalSeconds": interval,
            "MaxErrorRate": _percent(body.get("MaxErrorRate", 1), "MaxErrorRate"),
            "MaxP99Ms": round(max_p99 * 1000, 3), "MinRequests": min_requests}


def splitter(s: dict[str, Any], weight: float) -> dict[str, Any]:
    """The `service-splitter` entry that sends `weight` percent to the canary subset."""
    weight = round(min(100.0, max(0.0, weight)), 2)
    splits = [{"Weight": round(100 - weight, 2), "ServiceSubset": s["FromSubset"]},
              {"Weight": weight, "ServiceSubset": s["ToSubset"]}]
    return {"Kind": "service-splitter", "Name": s["Service"], "Splits": [x for x in splits if x["Weight"] > 0],
            "Meta": {"proconsul-canary": f"{s['ToSubset']}@{weight:g}%"}}


def start(s: dict[str, Any], previous_splitter: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """A new canary's state: the first step taken now."""
    return {**s, "Phase": "progressing", "Weight": min(100.0, s["Step"]), "StartedAt": now, "LastStepAt": now,
            "Previous": previous_splitter, "LastHealth": None, "Reason": f"started at {min(100.0, s['Step']):g}%",
            "History": [{"At": now, "Weight": min(100.0, s["Step"]), "Event": "start"}]}


def breach(s: dict[str, Any], h: Health) -> str:
    """Why `h` breaks the canary's limits ("" when it does not); judged once MinRequests have been seen."""
    if h.requests < s["MinRequests"] or h.requests == 0:
        return ""
    if h.error_rate * 100 > s["MaxErrorRate"]:
        return (f"error rate {h.error_rate * 100:.2f}% over {h.requests} requests is above "
                f"{s['MaxErrorRate']:g}%")
    if s["MaxP99Ms"] and h.p99_ms is not None and h.p99_ms > s["MaxP99Ms"]:
        return f"p99 {h.p99_ms:.1f}ms is above {s['MaxP99Ms']:g}ms"
    return ""


def decide(s: dict[str, Any], h: Health | None, now: float) -> Verdict:
    """The next move of a progressing canary: roll back at once on a breach; step up (or promote at 100%)
    once Interval has passed since the last step with enough requests measured within limits; else hold."""
    weight = float(s["Weight"])
    if s["Phase"] != "progressing":
        return Verdict("hold", weight, s.get("Reason", ""))
    if h is not None:
        why = breach(s, h)
        if why:
            return Verdict("rollback", 0.0, why)
    if now - s["LastStepAt"] < s["IntervalSeconds"]:
        return Verdict("hold", weight, f"at {weight:g}%, next step after {s['IntervalSeconds']:g}s")
    if h is None or h.requests < max(1, s["MinRequests"]):
        seen = h.requests if h is not None else 0
        return Verdict("hold", weight, f"at {weight:g}%, waiting for traffic ({seen} of {max(1, s['MinRequests'])} "
                                       "requests measured)")
    nxt = min(100.0, weight + s["Step"])
    if nxt >= 100:
        return Verdict("promote", 100.0, f"promoted: {h.requests} requests, {h.error_rate * 100:.2f}% errors"
                       + (f", p99 {h.p99_ms:.1f}ms" if h.p99_ms is not None else ""))
    return Verdict("step", nxt, f"stepped to {nxt:g}%: {h.requests} requests, {h.error_rate * 100:.2f}% errors"
                   + (f", p99 {h.p99_ms:.1f}ms" if h.p99_ms is not None else ""))


def applied(s: dict[str, Any], v: Verdict, h: Health | None, now: float) -> dict[str, Any]:
    """The state after `v` has been carried out."""
    out = {**s, "LastHealth": None if h is None else {"Requests": h.requests, "Errors": h.errors,
                                                      "P99Ms": h.p99_ms, "WindowSeconds": h.window_s},
           "Reason": v.reason, "Weight": v.weight}
    if v.action in ("step", "promote", "rollback"):
        out["LastStepAt"] = now
        out["History"] = [*s["History"], {"At": now, "Weight": v.weight, "Event": v.action, "Reason": v.reason}
                          ][-HISTORY_MAX:]
    if v.action == "promote":
        out["Phase"] = "promoted"
    elif v.action == "rollback":
        out["Phase"] = "rolled-back"
    return out
