"""The cross-entry check of config-entry writes, run inside the state store's apply (Consul's
`validateProposedConfigEntryInGraph`): a write, or a delete, that would leave a discovery chain that does
not compile — a split to a subset the resolver does not define, a router on a tcp service, a redirect
loop, an ingress listener whose service's protocol differs — is refused in log order, so two racing
writes cannot each pass alone. Pure, as apply must be: the entries and the datacenter in, a verdict out.
"""

from __future__ import annotations

from typing import Any

from proconsul.catalog.errors import InvalidRequest
from proconsul.catalog.store import TableCheck
from proconsul.connect.chain import compiler, entries
from proconsul.connect.errors import ChainError

TABLE = "config_entries"


def config_entry_check(datacenter: str) -> TableCheck:
    """The store's check of the config-entry table for one datacenter."""
    def check(rows: dict[str, dict[str, Any]], key: str, row: dict[str, Any] | None) -> None:
        kind, _, name = key.partition("/")
        if kind not in entries.KINDS:
            return
        current = compiler.index_entries(list(rows.values()))
        if row is None:
            current.pop((kind, name), None)
        else:
            current[(kind, name)] = row
        try:
            compiler.validate_graph(current, datacenter=datacenter)
        except ChainError as e:
            raise InvalidRequest(str(e)) from None  # a 400 naming the entry and field (also across RPC)

    return check


__all__ = ["config_entry_check"]
