"""`proconsul connect …`: the service mesh — its certificate authority, the sidecar proxy and the gateways, tap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, fail, print_json, run, table
from proconsul.connect.proxy.admin_address import ADMIN_HELP

connect_app = typer.Typer(help="Connect: the service mesh — its CA, sidecar proxies, gateways and tap.", no_args_is_help=True)
ca_app = typer.Typer(help="Read and change the Connect CA's configuration.", no_args_is_help=True)
connect_app.add_typer(ca_app, name="ca")



@ca_app.command("get-config")
def ca_get_config(http_addr: HttpAddr = None) -> None:
    """Print the Connect CA configuration as JSON."""
    run(lambda: print_json(client(http_addr).get("/v1/connect/ca/configuration").json()))


@ca_app.command("set-config")
def ca_set_config(
    config_file: Annotated[str, typer.Option("--config-file", help="JSON file with Provider and Config.")],
    http_addr: HttpAddr = None,
) -> None:
    """Change the CA configuration; a new PrivateKey/RootCert rotates the root (cross-signed)."""

    def body() -> None:
        try:
            data = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CLIError(f"cannot read {config_file}: {e}") from None
        client(http_addr).put("/v1/connect/ca/configuration", body=data)
        typer.echo("Configuration updated!")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(connect_app, name="connect")


# Flags `connect proxy` and `connect gateway` share (Consul's `consul connect envoy` spellings).
HttpAddrFlag = Annotated[str, typer.Option("-http-addr", "--http-addr", help="The local agent's HTTP address.")]
TokenFlag = Annotated[str, typer.Option("-token", "--token", help="ACL token (or CONSUL_HTTP_TOKEN).")]
AdminBindFlag = Annotated[str, typer.Option("-admin-bind", "--admin-bind", help=ADMIN_HELP)]
LogLevelFlag = Annotated[str, typer.Option("-log-level", "--log-level", help="trace, debug, info, warn, error.")]
ProxyIdFlag = Annotated[str, typer.Option("-proxy-id", "--proxy-id",
                                          help="ID of the proxy's (gateway's) registration; a gateway's defaults "
                                               "to -service.")]
ServiceFlag = Annotated[str, typer.Option("-service", "--service",
                                          help="The gateway's service name (mesh: default mesh-gateway).")]
RegisterFlag = Annotated[bool, typer.Option("-register", "--register",
                                            help="Register the gateway service with the agent first.")]
AddressFlag = Annotated[str, typer.Option("-address", "--address",
                                          help="The gateway's HOST:PORT (default 127.0.0.1:8443); its listeners "
                                               "bind HOST.")]
WanAddressFlag = Annotated[str, typer.Option("-wan-address", "--wan-address",
                                             help="Mesh gateway: HOST:PORT other datacenters reach it at "
                                                  "(default -address).")]
DeregisterFlag = Annotated[str, typer.Option("-deregister-after-critical", "--deregister-after-critical",
                                             help="With -register: how long the gateway's check may stay critical "
                                                  "before the agent deregisters it (terminating, mesh).")]
CaptureFlag = Annotated[str, typer.Option("-capture-file", "--capture-file",
                                          help="Mesh gateway, audit aid: append every byte it forwards here.")]


def _run_proxy(**options: Any) -> None:
    from proconsul.connect.proxy.cli import Options, execute

    raise typer.Exit(execute(Options(**options)))


@connect_app.command("proxy")
def proxy(
    sidecar_for: Annotated[str, typer.Option("-sidecar-for", "--sidecar-for",
                                             help="ID of the service whose sidecar proxy to run.")] = "",
    proxy_id: ProxyIdFlag = "",
    http_addr: HttpAddrFlag = "",
    token: TokenFlag = "",
    admin_bind: AdminBindFlag = "",
    log_level: LogLevelFlag = "info",
    gateway: Annotated[str, typer.Option("-gateway", "--gateway",
                                         help="Run a gateway of this kind instead of a sidecar: ingress, terminating "
                                              "or mesh (the same as `connect gateway -KIND`).")] = "",
    mesh_gateway: Annotated[bool, typer.Option("-mesh-gateway", "--mesh-gateway",
                                               help="Consul's older spelling of -gateway mesh.")] = False,
    service: ServiceFlag = "",
    register_: RegisterFlag = False,
    address: AddressFlag = "",
    wan_address: WanAddressFlag = "",
    deregister_after_critical: DeregisterFlag = "6h",
    capture_file: CaptureFlag = "",
) -> None:
    """Run the built-in sidecar proxy (mTLS in front of the service, upstream listeners for its dependencies),
    or with -gateway ingress|terminating|mesh a gateway (as `consul connect envoy -gateway=...`)."""
    _run_proxy(http_addr=http_addr, proxy_id=proxy_id, sidecar_for=sidecar_for, token=token, admin_bind=admin_bind,
               log_level=log_level, gateway=gateway, mesh_gateway=mesh_gateway, service=service, register=register_,
               address=address, wan_address=wan_address, deregister_after_critical=deregister_after_critical,
               capture_file=capture_file)


@connect_app.command("gateway")
def gateway(
    ingress: Annotated[bool, typer.Option("-ingress", "--ingress",
                                          help="An ingress gateway: outside traffic into the mesh, by Host (http) "
                                               "or port (tcp), as its ingress-gateway config entry says.")] = False,
    terminating: Annotated[bool, typer.Option("-terminating", "--terminating",
                                              help="A terminating gateway: mesh services reach the services outside "
                                                   "the mesh its terminating-gateway config entry links.")] = False,
    mesh: Annotated[bool, typer.Option("-mesh", "--mesh",
                                       help="A mesh gateway: traffic between datacenters, routed by SNI without "
                                            "terminating TLS.")] = False,
    service: ServiceFlag = "",
    register_: RegisterFlag = False,
    address: AddressFlag = "",
    wan_address: WanAddressFlag = "",
    proxy_id: ProxyIdFlag = "",
    http_addr: HttpAddrFlag = "",
    token: TokenFlag = "",
    admin_bind: AdminBindFlag = "",
    deregister_after_critical: DeregisterFlag = "6h",
    log_level: LogLevelFlag = "info",
    capture_file: CaptureFlag = "",
) -> None:
    """Run a gateway: exactly one of -ingress, -terminating or -mesh (Consul: `consul connect envoy
    -gateway=KIND`; `connect proxy -gateway KIND` is the same command).

    \b
    proconsul connect gateway -ingress -service ingress-gw -register -address 127.0.0.1:8443
    proconsul connect gateway -terminating -service tgw -register -address 127.0.0.1:8444
    proconsul connect gateway -mesh -register -address 10.0.0.5:8443 -wan-address 203.0.113.10:8443
    """
    kinds = [k for k, on in (("ingress", ingress), ("terminating", terminating), ("mesh", mesh)) if on]
    if len(kinds) != 1:
        raise fail("give exactly one of -ingress, -terminating or -mesh"
                   + (f" (not {' and '.join('-' + k for k in kinds)})" if kinds else ""))
    _run_proxy(http_addr=http_addr, proxy_id=proxy_id, token=token, admin_bind=admin_bind, log_level=log_level,
               gateway=kinds[0], service=service, register=register_, address=address, wan_address=wan_address,
               deregister_after_critical=deregister_after_critical, capture_file=capture_file)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds else "-"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@connect_app.command("proxy-stats")
def proxy_stats(
    admin_addr: Annotated[str, typer.Option("-admin-addr", "--admin-addr",
                                            help="The proxy's admin listener (default: found through the agent "
                                                 "with -sidecar-for or -proxy-id, else 127.0.0.1:19000).")] = "",
    sidecar_for: Annotated[str, typer.Option("-sidecar-for", "--sidecar-for",
                                             help="Read the sidecar proxy of this service ID.")] = "",
    proxy_id: Annotated[str, typer.Option("-proxy-id", "--proxy-id", help="Read this connect-proxy.")] = "",
    http_addr: HttpAddr = None,
    fmt: Format = "table",
) -> None:
    """Golden metrics of a running sidecar proxy: per inbound source and per upstream."""
    import urllib.request

    check_format(fmt)

    def body() -> None:
        addr = admin_addr or _admin_of(http_addr, sidecar_for, proxy_id)
        try:
            with urllib.request.urlopen(f"http://{addr}/stats", timeout=5) as resp:
                stats = json.loads(resp.read())
        except OSError as e:
            raise CLIError(f"cannot read proxy stats from {addr}: {getattr(e, 'reason', e)}") from None
        if fmt == "json":
            return print_json(stats)
        rows = []
        for direction, links in (("inbound from", stats["Inbound"]), ("upstream to", stats["Upstreams"])):
            for peer, s in links.items():
                rows.append([direction, peer, s["Connections"], s["Active"], s["Refused"], s["Failed"],
                             s["Requests"] or "-", f"{s['SuccessRate'] * 100:.1f}%", _ms(s["LatencyP50"]),
                             _ms(s["LatencyP99"]), _bytes(s["BytesIn"]), _bytes(s["BytesOut"])])
        table(f"proxy {stats['ProxyID']} for {stats['Service']} (public port {stats['PublicPort']})",
              ["Direction", "Peer", "Conns", "Open", "Refused", "Failed", "Requests", "Success", "p50", "p99",
               "Bytes in", "Bytes out"], rows)
        for name, inst in stats["UpstreamInstances"].items():
            ejected = ", ".join(inst["Ejected"]) or "none"
            typer.echo(f"upstream {name}: {inst['Healthy']} healthy instance(s), ejected: {ejected}")

    run(body)


@connect_app.command("tap")
def tap(
    service: Annotated[str, typer.Argument(help="The service whose sidecars' requests to watch.")],
    path_prefix: Annotated[str, typer.Option("-path-prefix", "--path-prefix",
                                             help="Only requests whose path starts with this.")] = "",
    status: Annotated[str, typer.Option("-status", "--status",
                                        help="Only this status class (5xx, 4xx, …) or code (503).")] = "",
    method: Annotated[str, typer.Option("-method", "--method", help="Only this HTTP method.")] = "",
    direction: Annotated[str, typer.Option("-direction", "--direction",
                                           help="inbound (callers of the service) or outbound (its upstream "
                                                "calls); default both.")] = "",
    max_rps: Annotated[float, typer.Option("-max-rps", "--max-rps",
                                           help="Requests per second each proxy sends at most (sampled past "
                                                "it).")] = 100.0,
    count: Annotated[int, typer.Option("-count", "--count", help="Stop after this many requests (0: never).")] = 0,
    http_addr: HttpAddr = None,
    fmt: Format = "table",
) -> None:
    """Watch, live, the HTTP requests passing a service's sidecar proxies (method, path, status, latency, source,
    route); nothing is recorded while nobody watches."""
    check_format(fmt)

    def body() -> None:
        params = {"path_prefix": path_prefix, "status": status, "method": method, "direction": direction,
                  "max_rps": f"{max_rps:g}"}
        if fmt != "json":
            typer.echo(f"{'TIME':12} {'DIR':3} {'SOURCE':14} {'METHOD':6} {'STATUS':6} {'LATENCY':>9}  "
                       f"{'UPSTREAM':14} {'ROUTE':12} PATH")
        seen = 0
        for line in client(http_addr).stream(f"/v1/agent/connect/tap/{service}",
                                             params={k: v for k, v in params.items() if v}):
            if not line.strip():
                continue  # a heartbeat
            ev = json.loads(line)
            if fmt == "json":
                typer.echo(line)
            elif "error" in ev:
                typer.echo(f"! {ev['proxy']}: {ev['error']}", err=True)
                continue
            else:
                typer.echo(_tap_line(ev))
            if "error" not in ev:
                seen += 1
                if count and seen >= count:
                    return

    run(body)


def _tap_line(ev: dict[str, Any]) -> str:
    import time as _time

    when = _time.strftime("%H:%M:%S", _time.localtime(ev["time"])) + f".{int(ev['time'] * 1000) % 1000:03d}"
    arrow = "in" if ev["direction"] == "inbound" else "out"
    flags = f" [{ev['flags']}]" if ev.get("flags") not in (None, "", "-") else ""
    left = ""
    if ev.get("sampled_out") or ev.get("dropped") or ev.get("relay_dropped"):
        left = f"  (+{ev.get('sampled_out', 0)} sampled out, {ev.get('dropped', 0) + ev.get('relay_dropped', 0)} " \
               "dropped)"
    return (f"{when:12} {arrow:3} {ev['source'] or '-':14} {ev['method']:6} {ev['status']:<6} "
            f"{ev['latency_ms']:>7.1f}ms  {ev['upstream'] or '-':14} {ev['route'] or '-':12} {ev['path']}"
            f"{flags}{left}")


def _admin_of(http_addr: str | None, sidecar_for: str, proxy_id: str) -> str:
    """The admin listener of a proxy registered with the agent (the rule the proxy binds by)."""
    from proconsul.connect.proxy.admin_address import admin_address
    from proconsul.connect.proxy.config import ProxyConfigError

    if not sidecar_for and not proxy_id:
        return "127.0.0.1:19000"
    services = client(http_addr).get("/v1/agent/services").json()
    found = [s for s in services.values() if s.get("Kind") == "connect-proxy" and (
        s["ID"] == proxy_id if proxy_id else (s.get("Proxy") or {}).get("DestinationServiceID") == sidecar_for)]
    if len(found) != 1:
        what = f"proxy {proxy_id!r}" if proxy_id else f"a sidecar proxy for {sidecar_for!r}"
        raise CLIError(f"{what}: {'none' if not found else 'more than one'} registered with this agent"
                       + (" (pick one with -proxy-id)" if found else ""))
    try:
        where = admin_address(found[0])
    except ProxyConfigError as e:
        raise CLIError(f"{found[0]['ID']}: {e}") from None
    host = "127.0.0.1" if where.host in ("0.0.0.0", "::") else where.host
    return f"[{host}]:{where.port}" if ":" in host else f"{host}:{where.port}"
