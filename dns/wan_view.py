"""A catalog view as another datacenter's agent sees it with `translate_wan_addrs` (pure): every node and
service address replaced by its WAN one (`catalog/translate.py`), so the answering core builds A, AAAA and
SRV records from WAN addresses and ports without knowing about translation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from proconsul.catalog.translate import node_candidates, service_candidates

from .answer import CatalogView, Instance, Node, QueryAnswer


def _tagged(tagged: Mapping[str, str], v4: str, v6: str) -> dict[str, str]:
    """The tagged addresses with the chosen IPv4/IPv6 candidates where `_pick` looks (lan_ipv4/lan_ipv6)."""
    out = {k: v for k, v in tagged.items() if k not in ("lan_ipv4", "lan_ipv6")}
    out.update({k: v for k, v in (("lan_ipv4", v4), ("lan_ipv6", v6)) if v})
    return out


def translated_instance(inst: Instance) -> Instance:
    node, node4, node6 = node_candidates(inst.node_address, inst.node_tagged)
    svc, svc4, svc6 = service_candidates(inst.service_address, inst.service_tagged)
    return dataclasses.replace(inst, node_address=node, node_tagged=_tagged(inst.node_tagged, node4, node6),
                               service_address=svc, service_tagged=_tagged(inst.service_tagged, svc4, svc6),
                               port=inst.wan_port or inst.port)


def translated_node(node: Node) -> Node:
    address, v4, v6 = node_candidates(node.address, node.tagged)
    return dataclasses.replace(node, address=address, tagged=_tagged(node.tagged, v4, v6))


class WanView:
    """`view` with WAN addresses: what a question from an agent of another datacenter that translates
    addresses is answered from."""

    def __init__(self, view: CatalogView) -> None:
        self._view = view

    def service_instances(self, name: str, connect: bool = False) -> list[Instance]:
        return [translated_instance(i) for i in self._view.service_instances(name, connect)]

    def ingress_instances(self, name: str) -> list[Instance]:
        return [translated_instance(i) for i in self._view.ingress_instances(name)]

    def node(self, name: str) -> Node | None:
        found = self._view.node(name)
        return translated_node(found) if found is not None else None

    def prepared_query(self, name: str) -> QueryAnswer | None:
        found = self._view.prepared_query(name)
        if found is None:
            return None
        return dataclasses.replace(found, instances=tuple(translated_instance(i) for i in found.instances))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)
