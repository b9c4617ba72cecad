"""Attach the DNS server to an agent: settings from its config, a view over its state store.

The view reads the agent's own state store (servers and dev agents), so a lookup never waits on
the network; the wire cache is emptied by the store's change notification, so an answer reflects a
health change as soon as the change is applied.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proconsul.catalog.store import CRITICAL, PASSING, StateStore, aggregate_status

from .answer import Answerer, DNSSettings, Instance, Node
from .server import DNSHandler, serve


class StoreView:
    """The answering core's CatalogView over a local StateStore."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.datacenter = store.datacenter

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        _, entries = self.store.health_service(name, connect=connect)
        out = []
        for node, svc, checks in entries:
            weights = svc.get("Weights") or {}
            out.append(Instance(node=node["Node"], node_address=node["Address"], service_address=svc["Address"],
                                port=svc["Port"], tags=tuple(svc["Tags"]), status=aggregate_status(checks),
                                weight_passing=int(weights.get("Passing", 1)),
                                weight_warning=int(weights.get("Warning", 1))))
        return out

    def node(self, name: str) -> Node | None:
        _, row = self.store.get_node(name)
        if row is None:
            return None
        _, checks = self.store.node_checks(name)
        node_level = [c for c in checks if not c["ServiceID"]]
        return Node(row["Node"], row["Address"], aggregate_status(node_level) if node_level else PASSING)

    def names_for_address(self, address: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        _, nodes = self.store.list_nodes()
        for n in nodes:
            if n["Address"] == address:
                out.append(("node", n["Node"]))
        for name in self.store.service_names():
            _, pairs = self.store.service_instances(name)
            if any(s["Address"] == address for _, s in pairs):
                out.append(("service", pairs[0][1]["Service"]))
        return out


def settings_from_config(cfg: Any) -> DNSSettings:
    d = cfg.dns
    return DNSSettings(
        domain=cfg.domain, alt_domain=cfg.alt_domain, node_ttl=int(d.node_ttl),
        service_ttl={k.lower(): int(v) for k, v in d.service_ttl.items()}, only_passing=d.only_passing,
        a_record_limit=d.a_record_limit, udp_answer_limit=d.udp_answer_limit, soa_min_ttl=d.soa_min_ttl,
        soa_refresh=d.soa_refresh, soa_retry=d.soa_retry, soa_expire=d.soa_expire, ns_address=cfg.advertise)


def parse_recursor(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host and not text.count(":") > 1 or text.startswith("["):
        return host.strip("[]"), int(port)
    return text, 53


def attach(agent: Any) -> None:
    """Add the DNS listener to the agent (servers and dev agents, which hold a state store)."""
    cfg = agent.config
    if cfg.dns_port < 0 or agent.store is None:
        return
    handler = DNSHandler(Answerer(settings_from_config(cfg)), StoreView(agent.store),
                         [parse_recursor(r) for r in cfg.recursors], cfg.dns.recursor_timeout)
    agent.store.subscribe(lambda _changes: handler.invalidate())
    agent.dns_handler = handler

    async def dns_listener(agent: Any, stop: asyncio.Event) -> None:
        from proconsul.agent.agent import AgentError

        try:
            await serve(handler, cfg.client_addr, cfg.dns_port, stop)
        except OSError as e:
            raise AgentError(f"cannot listen for DNS on {cfg.client_addr}:{cfg.dns_port}: {e.strerror}") from None

    agent.listeners.append(dns_listener)


__all__ = ["attach", "StoreView", "CRITICAL"]
