"""The canary's pure core: settings checked (naming the field), the splitter each weight writes, and the
decisions — step after each interval within limits, promote at 100%, roll back at once on a breach, hold
while there is too little traffic to judge."""

from __future__ import annotations

import pytest

from proconsul.connect.chain import canary
from proconsul.connect.chain.canary import Health


def spec(**kw: object) -> dict[str, object]:
    return canary.spec("api", {"ToSubset": "v2", "Step": 25, "Interval": "10s", "MaxErrorRate": "1%",
                               "MaxP99": "200ms", "MinRequests": 20, **kw}, "v1")


def test_spec_and_splitter() -> None:
    s = spec()
    assert (s["FromSubset"], s["Step"], s["IntervalSeconds"], s["MaxErrorRate"], s["MaxP99Ms"]) == (
        "v1", 25.0, 10.0, 1.0, 200.0)
    assert canary.splitter(s, 25)["Splits"] == [{"Weight": 75, "ServiceSubset": "v1"},
                                                {"Weight": 25, "ServiceSubset": "v2"}]
    assert canary.splitter(s, 100)["Splits"] == [{"Weight": 100, "ServiceSubset": "v2"}]


@pytest.mark.parametrize(("body", "field"), [
    ({"ToSubset": ""}, "ToSubset"), ({"Step": 0}, "Step"), ({"Step": "x"}, "Step"), ({"Interval": "soon"}, "Interval"),
    ({"MaxErrorRate": "150%"}, "MaxErrorRate"), ({"FromSubset": "v2"}, "FromSubset"), ({"MinRequests": -1}, "MinRequests"),
])
def test_bad_settings_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(canary.CanaryError, match=field):
        spec(**body)


def healthy(n: int = 100) -> Health:
    return Health(requests=n, errors=0, p99_ms=20.0, window_s=10.0)


def test_steps_then_promotes() -> None:
    s = canary.start(spec(), None, now=0.0)
    assert s["Weight"] == 25 and s["Phase"] == "progressing"
    assert canary.decide(s, healthy(), 5.0).action == "hold", "not before the interval"
    v = canary.decide(s, healthy(), 10.0)
    assert (v.action, v.weight) == ("step", 50)
    s = canary.applied(s, v, healthy(), 10.0)
    s = canary.applied(s, canary.decide(s, healthy(), 20.0), healthy(), 20.0)
    v = canary.decide(s, healthy(), 30.0)
    assert (v.action, v.weight) == ("promote", 100)
    s = canary.applied(s, v, healthy(), 30.0)
    assert s["Phase"] == "promoted" and [e["Event"] for e in s["History"]] == ["start", "step", "step", "promote"]
    assert canary.decide(s, Health(100, 100, 1.0, 1.0), 99.0).action == "hold", "a finished canary does nothing"


def test_rolls_back_at_once_on_errors_or_latency() -> None:
    s = canary.start(spec(), None, now=0.0)
    v = canary.decide(s, Health(requests=50, errors=5, p99_ms=10.0, window_s=3.0), 1.0)
    assert v.action == "rollback" and v.weight == 0 and "error rate 10.00%" in v.reason
    v = canary.decide(s, Health(requests=50, errors=0, p99_ms=450.0, window_s=3.0), 1.0)
    assert v.action == "rollback" and "p99 450.0ms is above 200ms" in v.reason
    assert canary.applied(s, v, None, 1.0)["Phase"] == "rolled-back"


def test_too_little_traffic_holds() -> None:
    s = canary.start(spec(), None, now=0.0)
    assert canary.decide(s, Health(requests=5, errors=5, p99_ms=900.0, window_s=3.0), 1.0).action == "hold"
    v = canary.decide(s, Health(requests=5, errors=0, p99_ms=1.0, window_s=3.0), 11.0)
    assert v.action == "hold" and "waiting for traffic (5 of 20" in v.reason
    assert canary.decide(s, None, 11.0).action == "hold"
