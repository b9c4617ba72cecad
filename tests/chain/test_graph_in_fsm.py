"""The cross-entry check of config-entry writes runs inside the state store's apply (as Consul's state store
does), so writes are judged in log order: two writes that each pass against the state they were made from
cannot together leave a chain that does not compile. Pure: a StateStore with the agent's check, no agent."""

from __future__ import annotations

from typing import Any

import pytest

from proconsul.agent.connect.entry_graph import config_entry_check
from proconsul.catalog import commands as c
from proconsul.catalog.errors import InvalidRequest
from proconsul.catalog.store import StateStore
from proconsul.connect.chain import entries


def store() -> StateStore:
    s = StateStore("dc1")
    s.set_table_check("config_entries", config_entry_check("dc1"))
    return s


def put(s: StateStore, entry: dict[str, Any], *, validate: bool = True) -> Any:
    e = entries.validate({**entry, "Kind": entry["Kind"]})
    return s.apply(s.last_index + 1, c.TableSet(table="config_entries", key=f"{e['Kind']}/{e['Name']}", row=e,
                                                validate=validate))


def delete(s: StateStore, kind: str, name: str) -> Any:
    return s.apply(s.last_index + 1, c.TableDelete(table="config_entries", key=f"{kind}/{name}"))


RESOLVER = {"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"},
                                                                  "v2": {"Filter": "Service.Meta.v == 2"}}}
SPLITTER = {"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 50, "ServiceSubset": "v1"},
                                                                  {"Weight": 50, "ServiceSubset": "v2"}]}


def test_racing_writes_are_judged_in_log_order() -> None:
    s = store()
    put(s, {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    put(s, RESOLVER)
    # Two writes, each fine against the state above: a splitter using v2, and a resolver without v2.
    put(s, SPLITTER)
    index = s.last_index
    with pytest.raises(InvalidRequest, match="does not have a subset named 'v2'"):
        put(s, {**RESOLVER, "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"}}})
    assert s.table_get("config_entries", "service-resolver/api")[1]["Subsets"].keys() == {"v1", "v2"}
    assert s.last_index == index + 1 and s.table_index("config_entries") == index, "refused: nothing changed"


def test_router_on_a_tcp_service_and_turning_a_routed_service_tcp() -> None:
    s = store()
    with pytest.raises(InvalidRequest, match=r"service-router 'web'.*tcp"):
        put(s, {"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/a"}}, "Destination": {"ServiceSubset": ""}}]})
    assert s.table_get("config_entries", "service-router/web")[1] is None
    put(s, {"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    put(s, {"Kind": "service-router", "Name": "web", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]})
    with pytest.raises(InvalidRequest, match="tcp"):
        put(s, {"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"})
    with pytest.raises(InvalidRequest):
        delete(s, "service-defaults", "web")  # back to tcp by default: the router would break
    assert s.table_get("config_entries", "service-defaults/web")[1]["Protocol"] == "http"


def test_deleting_a_resolver_a_splitter_needs_is_refused() -> None:
    s = store()
    put(s, {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    put(s, RESOLVER)
    put(s, SPLITTER)
    with pytest.raises(InvalidRequest, match="subset"):
        delete(s, "service-resolver", "api")
    assert delete(s, "service-splitter", "api") is True
    assert delete(s, "service-resolver", "api") is True


def test_replicated_rows_are_not_checked_again() -> None:
    """A secondary copies the primary's rows in key order; an intermediate state may not compile (the
    primary checked the whole), so replication writes with validate=False."""
    s = store()
    assert put(s, SPLITTER, validate=False) is True
    with pytest.raises(InvalidRequest):
        put(s, SPLITTER)


def test_other_kinds_and_tables_are_not_compiled() -> None:
    s = store()
    assert s.apply(1, c.TableSet(table="config_entries", key="service-intentions/web",
                                 row={"Kind": "service-intentions", "Name": "web", "Sources": []})) is True
    assert s.apply(2, c.TableSet(table="ca_config", key="config", row={"Provider": "consul"})) is True
