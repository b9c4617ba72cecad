"""Attach the DNS server to an agent: settings from its config, a read view over its state store.

The view reads the agent's own state store (servers and dev agents), so a lookup never waits on
the network. The store's change notification drives the wire cache: a change to one service's
instances or checks drops that service's cached answers (and the few answers that depend on the
whole catalog), so a health change is visible as soon as it is applied.

Client agents (no local store) arrive with clustering; they will get a view over a local copy
kept fresh by blocking queries to a server, with the same `CatalogView` interface.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from proconsul.catalog import prepared_query as pq
from proconsul.catalog.errors import NotFound
from proconsul.catalog.store import ACL_TABLES, CHECKS, NODES, PASSING, SERVICES, StateStore, aggregate_status
from proconsul.catalog.translate import service_port

from .answer import Answerer, DNSSettings, Instance, Node, QueryAnswer
from .errors import DNSServiceError, ListenError, RemoteDNSError
from .forward import ForwardingHandler
from .server import DNSHandler, bind_sockets, parse_recursor, serve

log = logging.getLogger("proconsul.dns")

_CATALOG_TABLES = frozenset({NODES, SERVICES, CHECKS})
MAX_MEMO = 10_000


def _str_map(value: Any) -> dict[str, str]:
    """Tagged addresses as tag -> address (service ones are {"Address", "Port"} objects in Consul)."""
    out: dict[str, str] = {}
    for k, v in (value or {}).items():
        addr = v.get("Address") if isinstance(v, dict) else v
        if isinstance(addr, str) and addr:
            out[str(k)] = addr
    return out


def _instance(node: dict[str, Any], svc: dict[str, Any], checks: list[dict[str, Any]]) -> Instance:
    weights = svc.get("Weights") or {}
    return Instance(
        node=node["Node"], node_address=node["Address"], service_address=svc.get("Address") or "",
        port=int(svc.get("Port") or 0), tags=tuple(svc.get("Tags") or ()),
        status=aggregate_status(checks), weight_passing=int(weights.get("Passing", 1)),
        weight_warning=int(weights.get("Warning", 1)), node_tagged=_str_map(node.get("TaggedAddresses")),
        service_tagged=_str_map(svc.get("TaggedAddresses")),
        wan_port=service_port(0, svc.get("TaggedAddresses") or {}))


class StoreView:
    """The answering core's CatalogView over a local StateStore."""

    def __init__(self, store: StateStore, node_name: str = "",
                 duration: Callable[[str], float] | None = None, may_read: Callable[[str, str], bool] | None = None,
                 extra_tables: tuple[str, ...] = ()) -> None:
        """`may_read(kind, name)` hides what the agent's DNS token may not read ("node" or "service"); the
        answers then also depend on `extra_tables` (the ACL tables), whose changes invalidate them."""
        self.store = store
        self.node_name = node_name  # what a query's Near = "_agent" means
        self.duration = duration  # Go duration text -> seconds (a prepared query's DNS TTL)
        self._may = may_read
        self._extra = frozenset(extra_tables)
        self.datacenter = store.datacenter
        self._by_address: dict[str, list[tuple[str, str]]] | None = None
        # (lower name, connect) -> instances, kept until a change touches that service (any change: connect)
        self._instances: dict[tuple[str, bool], tuple[Instance, ...]] = {}
        self._ingress: dict[str, tuple[Instance, ...]] = {}  # lower name -> gateway instances exposing it
        self._callbacks: list[Callable[[set[str] | None], None]] = []
        store.subscribe(self._changed)

    def watch(self, callback: Callable[[set[str] | None], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self, changes: Any) -> None:
        if self._extra & changes.tables:  # the DNS token's rights may have changed: every answer may differ
            self._by_address = None
            for cb in self._callbacks:
                cb(None)
        if not _CATALOG_TABLES & changes.tables:
            # Prepared query answers depend on the whole catalog and the queries; <svc>.ingress answers on the
            # ingress-gateway config entries: either change drops the answers that depend on everything.
            stale = pq.TABLE in changes.tables
            if "config_entries" in changes.tables and self._ingress:
                self._ingress.clear()
                stale = True
            if stale:
                for cb in self._callbacks:
                    cb(set())
            return  # KV, sessions, intentions…: nothing DNS answers from
        self._ingress.clear()
        self._by_address = None
        services = set(changes.services) if changes.services else None
        if services is None:
            self._instances.clear()
        else:
            for key in [k for k in self._instances if k[1] or k[0] in services]:
                del self._instances[key]
        for cb in self._callbacks:
            cb(services)

    def index(self) -> int:
        return self.store.table_index(NODES, SERVICES, CHECKS, *self._extra)

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        if self._may is not None:
            if not self._may("service", name):
                return []
            return [i for i in self._service_instances(name, connect) if self._may("node", i.node)]
        return self._service_instances(name, connect)

    def _service_instances(self, name: str, connect: bool) -> list[Instance]:
        key = (name.lower(), connect)
        cached = self._instances.get(key)
        if cached is None:
            if len(self._instances) >= MAX_MEMO:  # questions for ever-new names must not grow it forever
                self._instances.clear()
            cached = self._instances[key] = tuple(self._read_instances(name, connect))
        return list(cached)

    def ingress_instances(self, name: str) -> list[Instance]:
        key = name.lower()
        cached = self._ingress.get(key)
        if cached is None:
            if len(self._ingress) >= MAX_MEMO:
                self._ingress.clear()
            _, rows = self.store.table_list("config_entries")
            # A wildcard listener stands for the catalog's typical services (Consul's gateway-services), not for
            # any name asked.
            typical = key != "consul" and any(not svc.get("Kind") or svc["Kind"] == "typical"
                                              for _, svc in self.store.service_instances(key)[1])
            gateways = sorted(r["Name"] for r in rows if r.get("Kind") == "ingress-gateway" and any(
                str(svc.get("Name", "")).lower() == key or (svc.get("Name") == "*" and typical)
                for lst in r.get("Listeners") or [] for svc in lst.get("Services") or []))
            found: list[Instance] = []
            for gw in gateways:
                found += [_instance(node, svc, checks) for node, svc, checks in self.store.health_service(gw)[1]]
            cached = self._ingress[key] = tuple(found)
        return list(cached)

    def _read_instances(self, name: str, connect: bool) -> list[Instance]:
        if connect:
            _, pairs = self.store.service_instances(name)
            # Sidecars name their destination as registered; DNS names are case-insensitive.
            canonical = pairs[0][1]["Service"] if pairs else name
            _, entries = self.store.health_service(canonical, connect=True)
        else:
            _, entries = self.store.health_service(name)
        return [_instance(node, svc, checks) for node, svc, checks in entries]

    def prepared_query(self, name: str) -> QueryAnswer | None:
        try:
            _, result = pq.execute(self.store, name, self.datacenter)
        except NotFound:
            return None
        failover = None
        if not result["Nodes"]:  # the definition (templates rendered) to run in its failover datacenters
            query = pq.resolve(self.store.table_list(pq.TABLE)[1], name)
            failover = query if query is not None and pq.has_failover(query) else None
        return self.query_answer(result, failover)

    def query_answer(self, result: dict[str, Any], failover: dict[str, Any] | None = None) -> QueryAnswer:
        """A prepared query's execute answer (here or from another datacenter) as DNS answers it."""
        ttl_text = (result.get("DNS") or {}).get("TTL") or ""
        try:
            ttl = int(self.duration(ttl_text)) if ttl_text and self.duration else None
        except ValueError:  # vetted when the query was written; an old row must not break DNS
            ttl = None
        near = self.node_name if result["Near"] == "_agent" else result["Near"]
        return QueryAnswer(result["Service"], tuple(_instance(n["Node"], n["Service"], n["Checks"])
                                                    for n in result["Nodes"]), ttl, near, failover)

    def node(self, name: str) -> Node | None:
        _, row = self.store.get_node(name)
        if row is None or (self._may is not None and not self._may("node", row["Node"])):
            return None
        return Node(row["Node"], row["Address"], _str_map(row.get("TaggedAddresses")),
                    {str(k): str(v) for k, v in (row.get("Meta") or {}).items()})

    def names_for_address(self, address: str) -> list[tuple[str, str]]:
        if self._by_address is None:
            self._by_address = self._address_index()
        found = self._by_address.get(address, [])
        if self._may is not None:
            found = [(kind, name) for kind, name in found if self._may(kind, name)]
        return found

    def _address_index(self) -> dict[str, list[tuple[str, str]]]:
        """address -> [("node", name)…, ("service", name)…], rebuilt after a catalog change."""
        nodes: dict[str, list[tuple[str, str]]] = {}
        services: dict[str, list[tuple[str, str]]] = {}
        _, rows = self.store.list_nodes()
        for n in rows:
            for addr in {n["Address"], *_str_map(n.get("TaggedAddresses")).values()}:
                nodes.setdefault(addr, []).append(("node", n["Node"]))
        for lname in self.store.service_names():
            _, pairs = self.store.service_instances(lname)
            for _, s in pairs:
                if s.get("Address"):
                    entry = ("service", s["Service"])
                    lst = services.setdefault(s["Address"], [])
                    if entry not in lst:
                        lst.append(entry)
        out = dict(nodes)
        for addr, lst in services.items():
            out[addr] = out.get(addr, []) + lst
        return out

    def nameservers(self) -> list[Node]:
        _, entries = self.store.health_service("consul")
        out = []
        for node, _, checks in entries:
            if aggregate_status(checks) == PASSING:
                out.append(Node(node["Node"], node["Address"], _str_map(node.get("TaggedAddresses"))))
        return out


def settings_from_config(cfg: Any) -> DNSSettings:
    d = cfg.dns
    return DNSSettings(
        domain=cfg.domain, alt_domain=cfg.alt_domain, node_ttl=int(d.node_ttl),
        service_ttl={k.lower(): int(v) for k, v in d.service_ttl.items()}, only_passing=d.only_passing,
        a_record_limit=d.a_record_limit, udp_answer_limit=d.udp_answer_limit,
        enable_truncate=d.enable_truncate, node_meta_txt=getattr(d, "node_meta_txt", True),
        soa_min_ttl=d.soa_min_ttl, soa_refresh=d.soa_refresh, soa_retry=d.soa_retry, soa_expire=d.soa_expire)


def _remote_asker(agent: Any) -> Callable[[str, bytes, bool], Any]:
    """Questions for another datacenter go to its servers (`dns.query` over the WAN, via the router)."""
    from dnslib import RCODE

    from proconsul.agent.cluster.errors import ClusterError, NoPathToDatacenter
    from proconsul.agent.cluster.rpc import RPCError

    async def ask(datacenter: str, packet: bytes, udp: bool, wan_for: str) -> bytes | None:
        args = {"packet": packet, "udp": udp, **({"wan_for": wan_for} if wan_for else {})}
        try:
            return await agent.cluster.forward_dc(datacenter, "dns.query", args, timeout=5.0, idempotent=True)
        except NoPathToDatacenter as e:
            raise RemoteDNSError(str(e), RCODE.NXDOMAIN) from None
        except (ClusterError, RPCError) as e:
            raise RemoteDNSError(str(e), RCODE.SERVFAIL) from None

    return ask


def _query_failover(agent: Any, view: StoreView) -> Callable[[Any], Any]:
    """`<query>.query.<domain>` with no instance here: the query's failover datacenters answer (the same
    `query_failover` as the HTTP API's execute)."""
    from proconsul.agent.cluster.query_failover import fail_over

    async def run(query: Any) -> QueryAnswer | None:
        result = await fail_over(agent.cluster, agent.config.datacenter, dict(query))
        return view.query_answer(result.answer) if result.answer is not None else None

    return run


def attach(agent: Any) -> None:
    """Add the DNS listener to the agent (servers and dev agents, which hold a state store)."""
    from proconsul.agent.agent import AgentError
    from proconsul.agent.config.duration import parse_duration

    cfg = agent.config
    if cfg.dns_port < 0:
        return
    try:
        recursors = [parse_recursor(r) for r in cfg.recursors]
    except DNSServiceError as e:
        raise AgentError(f"invalid recursors setting: {e}") from None
    handler: Any
    if agent.store is None:  # a client agent: a server answers for our domains
        handler = ForwardingHandler([cfg.domain, cfg.alt_domain], agent.cluster.dns_forward, recursors,
                                    cfg.dns.recursor_timeout)
    else:
        view = StoreView(agent.store, cfg.node_name, parse_duration) if agent.acl is None else StoreView(
            agent.store, cfg.node_name, parse_duration, agent.dns_may_read, extra_tables=ACL_TABLES)
        handler = DNSHandler(Answerer(settings_from_config(cfg)), view, recursors, cfg.dns.recursor_timeout,
                             remote=_remote_asker(agent), query_failover=_query_failover(agent, view),
                             wan_for=cfg.datacenter if cfg.translate_wan_addrs else "")
    agent.dns_handler = handler

    sockets: list[tuple[socket.socket, socket.socket]] = []

    async def bind_dns() -> None:
        try:
            sockets.append(bind_sockets(cfg.dns_bind, cfg.dns_port))
        except ListenError as e:
            raise AgentError(str(e)) from None

    async def dns_listener(agent: Any, stop: asyncio.Event) -> None:
        await serve(handler, cfg.dns_bind, cfg.dns_port, stop, sockets=sockets.pop())

    agent.binders.append(bind_dns)  # bound before the agent answers HTTP, so "ready" means DNS is up too
    agent.listeners.append(dns_listener)


__all__ = ["attach", "StoreView", "settings_from_config"]
