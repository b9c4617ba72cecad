"""`proconsul troubleshoot upstream SOURCE DESTINATION`: walk the path a mesh connection takes and name
the first broken link.

The steps, each from the agent's HTTP API: the source service and its sidecar are registered here; the
sidecar declares the upstream; the sidecar is healthy; the CA has an active root and the source can get
a leaf; the destination has healthy Connect-capable instances (and if not, which checks fail); an
intention (or the default policy) allows source → destination. Exit status 0 when every step passes,
1 otherwise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import Client, CLIError, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, run

troubleshoot_app = typer.Typer(help="Find why services cannot talk through the mesh.", no_args_is_help=True)


@dataclass
class Step:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"Step": self.name, "OK": self.ok, "Detail": self.detail}


def _sidecar(services: dict[str, Any], source: str) -> dict[str, Any] | None:
    for s in services.values():
        proxy = s.get("Proxy") or {}
        if s.get("Kind") == "connect-proxy" and source in (proxy.get("DestinationServiceID"),
                                                           proxy.get("DestinationServiceName")):
            return s
    return None


def _health_detail(entries: list[dict[str, Any]]) -> str:
    failing = []
    for e in entries:
        for chk in e.get("Checks") or []:
            if chk.get("Status") != "passing":
                failing.append(f"{e['Node']['Node']}/{e['Service']['ID']}: {chk['Name']} is {chk['Status']}"
                               + (f" ({chk['Output'].strip()[:80]})" if chk.get("Output") else ""))
    return "; ".join(failing[:5]) or "no instance registered"


def walk(api: Client, source: str, destination: str) -> list[Step]:
    """The steps in order; the walk stops at the first broken one."""
    steps: list[Step] = []

    def add(name: str, ok: bool, detail: str) -> bool:
        steps.append(Step(name, ok, detail))
        return ok

    services = api.get("/v1/agent/services").json()
    src = next((s for s in services.values() if s["ID"] == source or s["Service"] == source), None)
    if not add("source registered", src is not None,
               f"{source} is registered on this agent" if src else
               f"no service {source!r} on this agent: run this on the agent where {source} is registered"):
        return steps
    sidecar = _sidecar(services, src["ID"]) or _sidecar(services, src["Service"])
    if not add("sidecar registered", sidecar is not None,
               f"{sidecar['ID']} listens on port {sidecar['Port']}" if sidecar else
               f"{source} has no sidecar proxy: register it with connect {{ sidecar_service {{}} }}"):
        return steps
    assert sidecar is not None
    upstreams = (sidecar.get("Proxy") or {}).get("Upstreams") or []
    up = next((u for u in upstreams if u.get("DestinationName") == destination), None)
    if not add("upstream declared", up is not None,
               f"{destination} on local port {up.get('LocalBindPort')}" if up else
               f"{sidecar['ID']} has no upstream for {destination!r} (it has: "
               f"{', '.join(u.get('DestinationName', '?') for u in upstreams) or 'none'})"):
        return steps
    checks = [c for c in api.get("/v1/agent/checks").json().values() if c["ServiceID"] == sidecar["ID"]]
    bad = [c for c in checks if c["Status"] != "passing"]
    if not add("sidecar healthy", not bad,
               "all its checks pass" if not bad else
               "; ".join(f"{c['Name']} is {c['Status']}" + (f" ({c['Output'].strip()[:80]})" if c["Output"] else "")
                         for c in bad) + f" — is `proconsul connect proxy -sidecar-for {src['ID']}` running?"):
        return steps
    roots = api.get("/v1/agent/connect/ca/roots").json()
    if not add("CA roots", bool(roots.get("ActiveRootID")),
               f"active root {roots.get('ActiveRootID', '')[:23]}…, trust domain {roots.get('TrustDomain')}"
               if roots.get("ActiveRootID") else "the CA has no active root (is a server leader elected?)"):
        return steps
    leaf = api.get(f"/v1/agent/connect/ca/leaf/{src['Service']}").json()
    expires = dt.datetime.fromisoformat(leaf["ValidBefore"].replace("Z", "+00:00"))
    if not add("source certificate", expires > dt.datetime.now(dt.UTC),
               f"{leaf['ServiceURI']} valid until {leaf['ValidBefore']}"):
        return steps
    params = {"passing": "1"}
    if up.get("Datacenter"):
        params["dc"] = up["Datacenter"]
    healthy = api.get(f"/v1/health/connect/{destination}", params=params).json()
    if not healthy:
        everything = api.get(f"/v1/health/connect/{destination}",
                             params={k: v for k, v in params.items() if k != "passing"}).json()
        add("destination instances", False,
            f"no healthy Connect-capable instance of {destination}: {_health_detail(everything)}")
        return steps
    add("destination instances", True, f"{len(healthy)} healthy: " + ", ".join(
        f"{e['Service']['Address'] or e['Node']['Address']}:{e['Service']['Port']}" for e in healthy[:5]))
    allowed = api.get("/v1/connect/intentions/check", params={"source": src["Service"],
                                                              "destination": destination}).json()["Allowed"]
    matching = api.get("/v1/connect/intentions/match", params={"by": "destination", "name": destination}).json()
    governing = next((i for i in matching.get(destination, []) if i["SourceName"] in (src["Service"], "*")), None)
    if governing is None:
        detail = "no intention matches: the default policy " + ("allows" if allowed else "denies")
    else:
        action = governing.get("Action") or "L7 permissions"
        detail = (f"intention {governing['SourceName']} => {governing['DestinationName']} "
                  f"(precedence {governing['Precedence']}, {action}) decides")
    add("intention", allowed or bool(governing and governing.get("Permissions")), detail)
    return steps


@troubleshoot_app.command("upstream")
def upstream(source: Annotated[str, typer.Argument(help="The calling service (ID or name), registered here.")],
             destination: Annotated[str, typer.Argument(help="The upstream service it calls.")],
             http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Check every link from SOURCE's sidecar to DESTINATION and name the first broken one."""
    check_format(fmt)
    outcome: list[Step] = []

    def body() -> None:
        try:
            outcome.extend(walk(client(http_addr), source, destination))
        except (KeyError, ValueError) as e:
            raise CLIError(f"unexpected answer from the agent: {e}") from None

    run(body)
    if fmt == "json":
        print_json([s.to_json() for s in outcome])
    else:
        for s in outcome:
            typer.echo(f"{'✓' if s.ok else '✗'} {s.name}: {s.detail}")
        broken = next((s for s in outcome if not s.ok), None)
        typer.echo(f"\nThe first broken link: {broken.name}." if broken else
                   f"\nEvery link from {source} to {destination} is in place.")
    if any(not s.ok for s in outcome):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(troubleshoot_app, name="troubleshoot")
