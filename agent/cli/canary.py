"""`proconsul canary …`: automated canaries — a splitter weight that moves to a new subset on its own while the
canary's golden metrics hold, and goes back when they do not (agent/api/canary.py)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, run, table

canary_app = typer.Typer(help="Automated canaries: step a service's traffic to a new subset while it stays healthy.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(canary_app, name="canary")


Service = Annotated[str, typer.Argument(help="The service (its service-resolver defines the subsets).")]


def _show(state: dict[str, Any]) -> None:
    h = state.get("LastHealth") or {}
    typer.echo(f"canary {state['Service']}: {state['Phase']}, {state['Weight']:g}% to {state['ToSubset']} "
               f"(from {state['FromSubset']}; step {state['Step']:g}% every {state['IntervalSeconds']:g}s; limits: "
               f"errors ≤ {state['MaxErrorRate']:g}%"
               + (f", p99 ≤ {state['MaxP99Ms']:g}ms" if state.get("MaxP99Ms") else "") + ")")
    typer.echo(f"  {state.get('Reason', '')}")
    if h:
        p99 = "-" if h.get("P99Ms") is None else f"{h['P99Ms']:.1f}ms"
        typer.echo(f"  last measured: {h['Requests']} requests, {h['Errors']} errors, p99 {p99} over "
                   f"{h['WindowSeconds']:g}s")
    rows = [[time.strftime("%H:%M:%S", time.localtime(e["At"])), e["Event"], f"{e['Weight']:g}%", e.get("Reason", "")]
            for e in state.get("History") or []]
    if rows:
        table(None, ["Time", "Event", "Weight", "Why"], rows)


@canary_app.command("start")
def start(
    service: Service,
    to_subset: Annotated[str, typer.Option("-to-subset", "--to-subset", help="The subset to move traffic to.")],
    from_subset: Annotated[str, typer.Option("-from-subset", "--from-subset",
                                             help="The subset traffic comes from (default: the resolver's "
                                                  "DefaultSubset).")] = "",
    step: Annotated[float, typer.Option("-step", "--step", help="Percent added at each step.")] = 10,
    interval: Annotated[str, typer.Option("-interval", "--interval", help="Time between steps (Go duration).")] = "30s",
    max_error_rate: Annotated[str, typer.Option("-max-error-rate", "--max-error-rate",
                                                help="Roll back above this share of 5xx (e.g. 1%).")] = "1%",
    max_p99: Annotated[str, typer.Option("-max-p99", "--max-p99",
                                         help="Roll back above this p99 latency (e.g. 200ms; empty: no limit).")] = "",
    min_requests: Annotated[int, typer.Option("-min-requests", "--min-requests",
                                              help="Requests measured before a step or a verdict.")] = 10,
    http_addr: HttpAddr = None,
    fmt: Format = "table",
) -> None:
    """Start a canary: the first step is written at once, then the leader steps on its own."""
    check_format(fmt)
    body = {"ToSubset": to_subset, "FromSubset": from_subset, "Step": step, "Interval": interval,
            "MaxErrorRate": max_error_rate, "MaxP99": max_p99, "MinRequests": min_requests}
    run(lambda: _out(client(http_addr).put(f"/v1/connect/canary/{service}", body=body).json(), fmt))


def _out(state: dict[str, Any], fmt: str) -> None:
    print_json(state) if fmt == "json" else _show(state)


@canary_app.command("status")
def status(service: Annotated[str, typer.Argument(help="The service; all canaries when omitted.")] = "",
           http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Where a canary stands: phase, weight, last measurement, the steps taken."""
    check_format(fmt)

    def body() -> None:
        c = client(http_addr)
        if service:
            return _out(c.get(f"/v1/connect/canary/{service}").json(), fmt)
        states = c.get("/v1/connect/canaries").json()
        if fmt == "json":
            return print_json(states)
        table("canaries", ["Service", "Phase", "Weight", "To", "From", "Why"],
              [[s["Service"], s["Phase"], f"{s['Weight']:g}%", s["ToSubset"], s["FromSubset"], s.get("Reason", "")]
               for s in states])

    run(body)


@canary_app.command("promote")
def promote(service: Service, http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Send all traffic to the canary subset now."""
    check_format(fmt)
    run(lambda: _out(client(http_addr).call("POST", f"/v1/connect/canary/{service}/promote").json(), fmt))


@canary_app.command("abort")
def abort(service: Service, http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Stop the canary and put the splitter back as it was before it."""
    check_format(fmt)
    run(lambda: _out(client(http_addr).call("POST", f"/v1/connect/canary/{service}/abort").json(), fmt))
