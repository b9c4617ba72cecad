"""Running a proxy from the command line: `proconsul connect proxy` and `python -m proconsul.connect.proxy`.

Flags are Consul's (`-sidecar-for`, `-proxy-id`, `-http-addr`, `-token`, `-log-level`; for gateways
`consul connect envoy`'s `-gateway ingress|terminating|mesh -service NAME -register -address HOST:PORT
-wan-address HOST:PORT -deregister-after-critical 6h`; `proconsul connect gateway -ingress|-terminating|-mesh`
is the same run), with our
`-admin-bind` for the metrics listener (by default where the registration says, see admin_address.py:
Envoy's habit of 127.0.0.1:19000 for the first sidecar). Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from proconsul.connect.proxy.admin_address import ADMIN_HELP
from proconsul.connect.proxy.agent_api import AgentAPI, AgentAPIError
from proconsul.connect.proxy.durations import parse_seconds
from proconsul.connect.proxy.proxy import Proxy, ProxyError

log = logging.getLogger("proconsul.proxy")


class ProxyCLIError(Exception):
    """A one-line reason the proxy command cannot run."""


@dataclass
class Options:
    http_addr: str = ""
    proxy_id: str = ""
    sidecar_for: str = ""
    token: str = ""
    admin_bind: str = ""  # "": from the registration (admin_address.py); "off": no admin listener
    log_level: str = "info"
    gateway: str = ""  # "ingress", "terminating" or "mesh": run a gateway instead of a sidecar
    mesh_gateway: bool = False  # Consul's older spelling of -gateway mesh
    service: str = ""  # the gateway's service name (and ID); a mesh gateway's defaults to "mesh-gateway"
    register: bool = False  # register the gateway service with the agent first
    address: str = ""  # the gateway's address (listeners bind its host), HOST:PORT
    wan_address: str = ""  # mesh gateway: where other datacenters reach it (default: address)
    capture_file: str = ""  # mesh gateway: audit aid, forwarded bytes appended here
    deregister_after_critical: str = "6h"  # -register: the check's DeregisterCriticalServiceAfter (Consul's default)


def http_address(flag: str) -> str:
    return flag or os.environ.get("PROCONSUL_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or "127.0.0.1:8500"


async def sidecar_proxy_id(api: AgentAPI, service_id: str) -> str:
    """The ID of the one connect-proxy registered on this agent for `service_id` (Consul's -sidecar-for)."""
    services = await api.services()
    found = [s["ID"] for s in services.values() if s.get("Kind") == "connect-proxy"
             and (s.get("Proxy") or {}).get("DestinationServiceID") == service_id]
    if not found:
        raise ProxyCLIError(f"No sidecar proxy registered for {service_id!r} on this agent: register the service "
                            "with connect { sidecar_service {} }")
    if len(found) > 1:
        raise ProxyCLIError(f"More than one sidecar proxy registered for {service_id!r} ({', '.join(sorted(found))}):"
                            " pick one with -proxy-id")
    return found[0]


def _admin(bind: str) -> tuple[str, int | None]:
    if bind == "":
        return "", None
    if bind == "off":
        return "", -1
    host, _, port = bind.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ProxyCLIError(f"-admin-bind {bind!r} must be HOST:PORT (or \"off\")") from None


def _host_port(flag: str, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProxyCLIError(f"{flag} {value!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


GATEWAY_KINDS = ("ingress", "terminating", "mesh")
_KIND = {"ingress": "ingress-gateway", "terminating": "terminating-gateway", "mesh": "mesh-gateway"}


@dataclass(frozen=True)
class GatewayPlan:
    """What `-gateway KIND` (or `connect gateway -KIND`) runs: checked flags, its ID, addresses, registration."""

    kind: str
    service: str
    gateway_id: str
    host: str
    port: int
    registration: dict[str, Any] | None  # the body for /v1/agent/service/register when -register


def gateway_plan(opts: Options) -> GatewayPlan:
    """Check a gateway's flags (one line naming the flag when wrong) and build its registration (Consul's
    `connect envoy -register`: Kind, address, the mesh gateway's LAN/WAN tagged addresses, and for the kinds
    -address, and Consul's TCP check `<kind> listening` on it, deregistered after -deregister-after-critical —
    for every kind: an ingress gateway answers it with its ready listener on -address, as Consul's Envoy does)."""
    kind = "mesh" if opts.mesh_gateway else opts.gateway
    if kind not in GATEWAY_KINDS:
        raise ProxyCLIError(f"-gateway {kind!r}: must be one of {', '.join(GATEWAY_KINDS)}")
    if opts.sidecar_for:
        raise ProxyCLIError(f"{kind} gateways are not sidecars: drop -sidecar-for")
    if kind != "mesh" and not opts.service:
        raise ProxyCLIError(f"{kind} gateways need -service NAME (the name of their config entry)")
    if kind != "mesh" and (opts.wan_address or opts.capture_file):
        raise ProxyCLIError(f"-wan-address and -capture-file are for mesh gateways, not {kind}")
    service = opts.service or "mesh-gateway"
    gateway_id = opts.proxy_id or service
    host, port = _host_port("-address", opts.address or "127.0.0.1:8443")
    try:
        parse_seconds(opts.deregister_after_critical)
    except ValueError as e:
        raise ProxyCLIError(f"-deregister-after-critical: {e}") from None
    body: dict[str, Any] | None = None
    if opts.register:
        body = {"Kind": _KIND[kind], "Name": service, "ID": gateway_id, "Address": host, "Port": port}
        if kind == "mesh":
            wan_host, wan_port = _host_port("-wan-address", opts.wan_address or opts.address or "127.0.0.1:8443")
            body["TaggedAddresses"] = {"lan": {"Address": host, "Port": port},
                                       "wan": {"Address": wan_host, "Port": wan_port}}
        body["Check"] = {"Name": f"{_KIND[kind]} listening", "TCP": f"{host}:{port}", "Interval": "10s",
                         "DeregisterCriticalServiceAfter": opts.deregister_after_critical}
    return GatewayPlan(kind, service, gateway_id, host, port, body)


async def run_gateway(plan: GatewayPlan, opts: Options, api: AgentAPI, stop: asyncio.Event, admin_host: str,
                      admin_port: int | None) -> None:
    """Register the gateway when asked, then run its kind until `stop`."""
    if plan.registration is not None:
        await api.put("/v1/agent/service/register", plan.registration)
        log.info("registered %s gateway %s (%s:%d%s)", plan.kind, plan.gateway_id, plan.host, plan.port,
                 ", WAN {Address}:{Port}".format(**plan.registration["TaggedAddresses"]["wan"])
                 if plan.kind == "mesh" else "")
    try:
        if plan.kind == "mesh":
            from proconsul.connect.proxy.mesh_gateway import MeshGateway

            await MeshGateway(api, bind=plan.host, port=plan.port, service=plan.service,
                              capture_file=opts.capture_file, admin_address=admin_host,
                              admin_port=-1 if admin_port is None else admin_port).run(stop)
        elif plan.kind == "terminating":
            from proconsul.connect.proxy.terminating import TerminatingGateway

            await TerminatingGateway(api, plan.gateway_id, bind=plan.host, port=plan.port, admin_address=admin_host,
                                     admin_port=-1 if admin_port is None else admin_port).run(stop)
        else:
            from proconsul.connect.proxy.ingress import IngressGateway

            ready = plan.port if plan.registration is not None or opts.address else 0
            await IngressGateway(api, plan.gateway_id, bind_host=plan.host, ready_port=ready, admin_address=admin_host,
                                 admin_port=admin_port).run(stop)
    except OSError as e:
        raise ProxyCLIError(f"cannot listen on {plan.host}:{plan.port}: {e.strerror or e}") from None


async def run(opts: Options, stop: asyncio.Event | None = None) -> None:
    """Run one proxy until `stop` (or SIGINT/SIGTERM when `stop` is not given)."""
    plan = None
    if opts.gateway or opts.mesh_gateway:
        plan = gateway_plan(opts)
    elif opts.register or opts.service:
        raise ProxyCLIError("-register and -service are for gateways: add -gateway ingress|terminating|mesh")
    elif bool(opts.proxy_id) == bool(opts.sidecar_for):
        raise ProxyCLIError("give exactly one of -sidecar-for SERVICE-ID or -proxy-id PROXY-ID")
    host, port = _admin(opts.admin_bind)
    api = AgentAPI(http_address(opts.http_addr), opts.token or os.environ.get("CONSUL_HTTP_TOKEN", ""))
    stop = stop or _signals_stop()
    try:
        if plan is not None:
            await run_gateway(plan, opts, api, stop, host, port)
            return
        proxy_id = opts.proxy_id or await sidecar_proxy_id(api, opts.sidecar_for)
        await Proxy(api, proxy_id, admin_address=host, admin_port=port).run(stop)
    except AgentAPIError as e:
        raise ProxyCLIError(str(e)) from None
    except ProxyError as e:
        raise ProxyCLIError(str(e)) from None
    finally:
        await api.close()


def _signals_stop() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def setup_logging(level: str) -> None:
    levels = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "error": logging.ERROR}
    if level.lower() not in levels:
        raise ProxyCLIError(f"-log-level {level!r} must be one of trace, debug, info, warn, error")
    logging.basicConfig(level=levels[level.lower()], stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")


def execute(opts: Options) -> int:
    """Run the proxy in a fresh event loop (uvloop when present); the process exit status."""
    try:
        setup_logging(opts.log_level)
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
        asyncio.run(run(opts))
        return 0
    except ProxyCLIError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m proconsul.connect.proxy", prefix_chars="-",
                                description="Run a Connect sidecar proxy for a service registered with the local agent.")
    for names, dest, help_ in (
            (("-sidecar-for", "--sidecar-for"), "sidecar_for", "ID of the service whose sidecar this is"),
            (("-proxy-id", "--proxy-id"), "proxy_id", "ID of the connect-proxy registration"),
            (("-http-addr", "--http-addr"), "http_addr", "the local agent's HTTP address"),
            (("-token", "--token"), "token", "ACL token"),
            (("-admin-bind", "--admin-bind"), "admin_bind", ADMIN_HELP),
            (("-log-level", "--log-level"), "log_level", "trace, debug, info, warn, error"),
            (("-gateway", "--gateway"), "gateway", "run a gateway of this kind (ingress, terminating, mesh)"),
            (("-deregister-after-critical", "--deregister-after-critical"), "deregister_after_critical",
             "-register: how long the gateway's check may stay critical before it is deregistered"),
            (("-service", "--service"), "service", "the gateway's service name (mesh: mesh-gateway)"),
            (("-address", "--address"), "address", "the gateway's HOST:PORT (listeners bind HOST)"),
            (("-wan-address", "--wan-address"), "wan_address", "mesh gateway: HOST:PORT for other datacenters"),
            (("-capture-file", "--capture-file"), "capture_file", "mesh gateway: append forwarded bytes here")):
        p.add_argument(*names, dest=dest, default=getattr(Options(), dest), help=help_)
    for names, dest, help_ in ((("-mesh-gateway", "--mesh-gateway"), "mesh_gateway", "run a mesh gateway "
                                "(Consul's older spelling of -gateway mesh)"),
                               (("-register", "--register"), "register", "register the gateway service with the "
                                "agent first")):
        p.add_argument(*names, dest=dest, action="store_true", help=help_)
    args = p.parse_args(argv)
    sys.exit(execute(Options(**vars(args))))
