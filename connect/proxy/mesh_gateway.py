"""The mesh gateway: routes mTLS connections between datacenters by SNI, without terminating TLS.

`proconsul connect proxy -gateway mesh` (or `-mesh-gateway`) listens on one port. For each connection it reads the first
TLS record, takes the ClientHello's server name (`sni.py`) and, for Consul's service names
`<svc>.default.<dc>.internal.<trust-domain>`:

- `<dc>` is ours: dials a healthy sidecar of `<svc>` here (`/v1/health/connect/<svc>`: none with a critical
  check; a warning one too only with the subset's `OnlyPassing`, as Consul's); for a subset's name,
  `<subset>.<svc>.default.<dc>…`, only the sidecars its service-resolver Filter selects;
- `<dc>` is another: dials a healthy mesh gateway of that datacenter at its WAN address
  (`/v1/health/service/<gateway-name>?passing&dc=<dc>`, `TaggedAddresses.wan`).

The buffered ClientHello is written to the target and from then on the bytes flow both ways
untouched (the same `Side` protocols as the sidecar's L4 path): the gateway holds no key and cannot
read the traffic; the two sidecars authenticate each other end to end and the destination checks
intentions. A target that refuses is skipped for the next one. Anything that is not a ClientHello
with a name we route is closed. Targets are followed with blocking queries, started on first use.
With proxy-defaults' AccessLogs on, each connection gets a line when it closes (gateway_log.py):
`upstream_cluster` is the server name, `upstream_host` the sidecar or gateway it went to.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from proconsul.connect.proxy.addresses import mesh_gateway_address, tagged_address, weight
from proconsul.connect.proxy.admin_http import json_route, prometheus_route, ready_route, start_admin
from proconsul.connect.proxy.agent_api import AgentAPI, AgentAPIError
from proconsul.connect.proxy.balancer import weighted_order
from proconsul.connect.proxy.forward import Side
from proconsul.connect.proxy.gateway_log import GatewayAccessLog, peer_address
from proconsul.connect.proxy.gateway_metrics import GatewayCounters
from proconsul.connect.proxy.sni import (
    MAX_HELLO,
    Incomplete,
    NotClientHello,
    client_hello_sni,
    parse_sni_name,
)

log = logging.getLogger("proconsul.gateway")

HELLO_TIMEOUT = 10.0
FAILED_FOR = 10.0  # a target that refused is tried last for this long
DIAL_TIMEOUT = 5.0
FIRST_ANSWER_TIMEOUT = 10.0
RESOLVER_TTL = 5.0  # a service-resolver's subsets are read again after this long


@dataclass
class _Targets:
    addresses: list[tuple[tuple[str, int], int]] = field(default_factory=list)  # ((host, port), weight)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class GatewayInbound(Side):
    """A connection to the gateway: held until its ClientHello names a target, then spliced."""

    __slots__ = ("gw", "_hello", "_routing", "_timer", "started", "peer_address", "received", "sent", "flag", "sni",
                 "service", "host", "datacenter")

    def __init__(self, gw: MeshGateway) -> None:
        super().__init__()
        self.gw = gw
        self._hello = b""
        self._routing = False
        self._timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.peer_address = self.sni = self.service = self.host = ""  # for the access-log line
        self.datacenter = ""  # the destination's, once the ClientHello named it
        self.received = self.sent = 0
        self.flag = "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.started = time.monotonic()
        if self.gw.access.log is not None:  # nothing looked up for the log while it is off
            self.peer_address = peer_address(transport)
        self._timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT, self._too_slow)
        self.gw.counters.opened()

    def _too_slow(self) -> None:
        if not self._routing:
            self.refuse()

    def refuse(self, flag: str = "NR") -> None:
        self.flag = flag
        self.abort()

    def data_received(self, data: bytes) -> None:
        self.gw.capture(data)
        self.received += len(data)
        if self._routing:
            return super().data_received(data)
        self._hello += data
        try:
            sni = client_hello_sni(self._hello)
        except Incomplete:
            if len(self._hello) > MAX_HELLO:
                self.refuse()
            return
        except NotClientHello as e:
            log.info("mesh gateway: dropped a connection: %s", e)
            self.refuse()
            return
        self._routing = True
        self.sni = sni or ""
        if self._timer is not None:
            self._timer.cancel()
        self._pending.append(self._hello)
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self.gw.route(self, sni or ""))
        self.gw.tasks.add(task)
        task.add_done_callback(self.gw.tasks.discard)

    def count_sent(self, n: int) -> None:
        self.sent += n

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.gw is not None:
            unrouted = not self.host  # refused, or closed before a ClientHello named a target (a TCP check)
            flag = "NR" if unrouted and self.flag == "-" else self.flag
            self.gw.access.connection(self.started, received=self.received, sent=self.sent, peer=self.peer_address,
                                      cluster=self.sni, service=self.service, host=self.host, flag=flag,
                                      listener=unrouted and not self.sni)
            self.gw.counters.closed(self.datacenter, self.received, self.sent, flag)
        self.gw = None  # type: ignore[assignment]  # no cycle through the gateway once closed
        super().connection_lost(exc)


class CapturingSide(Side):
    """The gateway's side towards the target; bytes coming back are captured too when asked."""

    __slots__ = ("gw",)

    def __init__(self, gw: MeshGateway) -> None:
        super().__init__()
        self.gw = gw

    def data_received(self, data: bytes) -> None:
        self.gw.capture(data)
        super().data_received(data)


class MeshGateway:
    def __init__(self, api: AgentAPI, *, bind: str, port: int, service: str = "mesh-gateway",
                 capture_file: str = "", rng: random.Random | None = None, admin_address: str = "",
                 admin_port: int = -1) -> None:
        self.api = api
        self.bind = bind
        self.port = port
        self.service = service  # the name mesh gateways are registered under, here and in other datacenters
        self.rng = rng or random.Random()
        self.datacenter = ""
        self.trust_domain = ""
        self._targets: dict[tuple[str, str, str, bool], _Targets] = {}  # (service, dc, filter, only passing)
        self._resolvers: dict[str, tuple[float, dict[str, Any]]] = {}  # service -> (loop time read, its resolver)
        self._failed: dict[tuple[str, int], float] = {}  # target -> loop time it last refused
        self._stop = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.counters = GatewayCounters(service)
        self.admin_address, self.admin_port = admin_address or "127.0.0.1", admin_port
        self._admin: web.AppRunner | None = None
        self.ready = asyncio.Event()
        self.access = GatewayAccessLog()  # proxy-defaults' AccessLogs: a line per connection
        self._capture: BinaryIO | None = open(Path(capture_file), "ab") if capture_file else None  # noqa: SIM115

    def capture(self, data: bytes) -> None:
        """Audit aid (`-capture-file`): every byte the gateway forwards, both ways, appended to a file."""
        if self._capture is not None:
            self._capture.write(data)
            self._capture.flush()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        if self.admin_port != -1:
            self._admin, self.admin_port = await start_admin(self.admin_address, self.admin_port, {
                "/stats": json_route(self.counters.snapshot), "/metrics": prometheus_route(self.counters.prometheus),
                "/ready": ready_route(self.ready)})
            log.info("mesh gateway admin (metrics, stats) on http://%s:%d", self.admin_address, self.admin_port)
        try:
            await self._serve(stop)
        finally:
            if self._admin is not None:
                await self._admin.cleanup()

    async def _serve(self, stop: asyncio.Event) -> None:
        info = await self.api.self_info()
        self.datacenter = info["Config"]["Datacenter"]
        roots_ready = asyncio.Event()

        def on_roots(body: dict[str, Any]) -> None:
            self.trust_domain = (body.get("TrustDomain") or "").lower()
            if self.trust_domain:
                roots_ready.set()

        watch = asyncio.get_running_loop().create_task(self.api.watch("/v1/agent/connect/ca/roots", {}, on_roots,
                                                                      stop))
        self.tasks.add(watch)
        self.tasks.add(asyncio.get_running_loop().create_task(self.access.watch(self.api, stop)))
        await _either(roots_ready, stop)
        server = await asyncio.get_running_loop().create_server(lambda: GatewayInbound(self), self.bind, self.port)
        log.info("mesh gateway for %s listening on %s:%d (trust domain %s)", self.datacenter, self.bind,
                 self.port, self.trust_domain)
        self.ready.set()
        try:
            await stop.wait()
        finally:
            server.close()
            for task in list(self.tasks):
                task.cancel()
            if self._capture is not None:
                self._capture.close()
            self.access.close()

    async def route(self, inbound: GatewayInbound, sni: str) -> None:
        target = parse_sni_name(sni, self.trust_domain)
        if target is None:
            log.info("mesh gateway: no route for server name %r", sni)
            inbound.refuse("NR")
            return
        inbound.service = target.service
        inbound.datacenter = target.datacenter
        local = target.datacenter == self.datacenter
        if local and target.subset:
            addresses = await self._subset_addresses(target.service, target.subset)
        else:
            addresses = await self._addresses(target.service if local else self.service,
                                              "" if local else target.datacenter, local)
        loop = asyncio.get_running_loop()
        order = weighted_order(addresses, self.rng)
        now = loop.time()
        order.sort(key=lambda a: now - self._failed.get(a, -FAILED_FOR) < FAILED_FOR)  # recently refused: last
        for host, port in order:
            if inbound.closed:
                return
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    _, outbound = await loop.create_connection(lambda: CapturingSide(self), host, port)
            except (OSError, TimeoutError) as e:
                self.counters.dial_failures += 1
                self._failed[(host, port)] = loop.time()
                log.info("mesh gateway: %s:%d (for %s) did not answer: %s; trying the next", host, port, sni, e)
                continue
            self._failed.pop((host, port), None)
            if local:
                self.counters.routed_local += 1
            else:
                self.counters.routed_remote += 1
            inbound.host = f"{host}:{port}"
            outbound.on_bytes = inbound.count_sent
            inbound.join(outbound)
            return
        log.warning("mesh gateway: nowhere to send %s (%s)", sni,
                    "no healthy instance here" if local else f"no reachable gateway in {target.datacenter}")
        inbound.refuse("UF" if order else "UH")

    async def _subset_addresses(self, service: str, subset: str) -> list[tuple[tuple[str, int], int]]:
        """A subset of a service here (`v2.web.default.<our dc>…`): its sidecars that pass the subset's
        Filter in the service's service-resolver (replicated from the primary), as Consul's gateways do.
        An unknown subset has no instances: the connection is closed, never sent to the whole service."""
        now = asyncio.get_running_loop().time()
        cached = self._resolvers.get(service)
        if cached is None or now - cached[0] > RESOLVER_TTL:
            try:
                entry, _ = await self.api.get(f"/v1/config/service-resolver/{service}")
            except AgentAPIError as e:
                log.info("mesh gateway: no service-resolver for %s (subset %s): %s", service, subset, e)
                entry = {}
            cached = self._resolvers[service] = (now, entry or {})
        spec = (cached[1].get("Subsets") or {}).get(subset)
        if spec is None:
            log.info("mesh gateway: service %s has no subset %r", service, subset)
            return []
        return await self._addresses(service, "", True, str(spec.get("Filter") or ""), bool(spec.get("OnlyPassing")))

    async def _addresses(self, service: str, datacenter: str, local: bool, filter_: str = "",
                         only_passing: bool = False) -> list[tuple[tuple[str, int], int]]:
        """Where to send for `service` here (its sidecars: as Consul's gateways, one with a critical check is left
        out, one with a warning check only with `only_passing`), or for another datacenter (its passing mesh
        gateways), each with its weight (`addresses.weight`)."""
        key = (service, datacenter, filter_, only_passing)
        entry = self._targets.get(key)
        if entry is None:
            entry = self._targets[key] = _Targets()
            path = f"/v1/health/connect/{service}" if local else f"/v1/health/service/{service}"
            params = {**({} if local else {"passing": "1"}), **({"dc": datacenter} if datacenter else {}),
                      **({"filter": filter_} if filter_ else {})}

            def update(body: list[dict[str, Any]], entry: _Targets = entry) -> None:
                weighed = ((_address(e, wan=not local), weight(e.get("Service") or {}, e.get("Checks") or [],
                                                                 only_passing)) for e in body or [])
                entry.addresses = [(a, w) for a, w in weighed if a is not None and w]
                entry.ready.set()

            task = asyncio.get_running_loop().create_task(self.api.watch(path, params, update, self._stop))
            self.tasks.add(task)
        if not entry.ready.is_set():
            try:
                await asyncio.wait_for(entry.ready.wait(), FIRST_ANSWER_TIMEOUT)
            except TimeoutError:
                return []
        return entry.addresses


def _address(entry: dict[str, Any], *, wan: bool) -> tuple[str, int] | None:
    """A remote datacenter's gateway at its `wan` address, or a sidecar here at its own."""
    return mesh_gateway_address(entry, local=False) if wan else tagged_address(entry, "")


async def _either(event: asyncio.Event, stop: asyncio.Event) -> None:
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
