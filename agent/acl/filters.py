"""Listings filtered to what the token may read, as Consul does: rows the token cannot read are dropped
silently and the answer says so with `X-Consul-Results-Filtered-By-ACLs: true`.

One filter per named query (the catalog, health, KV, session and UI reads all go through `run_query`),
plus helpers for the handlers that list something else (agent services, checks, members, events,
intentions, config entries). A token that reads every node and service skips filtering entirely, so
management tokens keep the encoded-response cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from proconsul.agent.acl.authorizer import Authorizer

Rows = Any


def _node_ok(a: Authorizer, node: str) -> bool:
    return a.allowed("node", node, "read")


def _service_ok(a: Authorizer, name: str) -> bool:
    return not name or a.allowed("service", name, "read")


def check_ok(a: Authorizer, chk: dict[str, Any]) -> bool:
    return _node_ok(a, chk.get("Node", "")) and _service_ok(a, chk.get("ServiceName", ""))


def _keep(rows: Iterable[Any], ok: Callable[[Any], bool]) -> tuple[list[Any], bool]:
    rows = list(rows)
    kept = [r for r in rows if ok(r)]
    return kept, len(kept) != len(rows)


def _list_filter(ok: Callable[[Authorizer, Any], bool]) -> Callable[[Authorizer, Rows], tuple[Rows, bool]]:
    def apply(a: Authorizer, rows: Rows) -> tuple[Rows, bool]:
        if not rows:
            return rows, False
        return _keep(rows, lambda r: ok(a, r))
    return apply


def _services_map(a: Authorizer, rows: Rows) -> tuple[Rows, bool]:
    kept = {k: v for k, v in rows.items() if _service_ok(a, k)}
    return kept, len(kept) != len(rows)


def _node_with_services(a: Authorizer, body: Rows) -> tuple[Rows, bool]:
    if body is None:
        return None, False
    if not _node_ok(a, body["Node"]["Node"]):
        return None, True
    svcs = body["Services"]
    if isinstance(svcs, dict):
        kept: Any = {k: v for k, v in svcs.items() if _service_ok(a, v["Service"])}
    else:
        kept = [v for v in svcs if _service_ok(a, v["Service"])]
    return dict(body, Services=kept), len(kept) != len(svcs)


def _kv_rows(a: Authorizer, rows: Rows) -> tuple[Rows, bool]:
    if not rows:
        return rows, False
    kept, dropped = _keep(rows, lambda r: a.allowed("key", r["Key"], "read"))
    return kept or None, dropped


def _kv_keys(a: Authorizer, rows: Rows) -> tuple[Rows, bool]:
    if not rows:
        return rows, False
    kept, dropped = _keep(rows, lambda k: a.allowed("key", k, "read"))
    return kept or None, dropped


def _ui_node_info(a: Authorizer, n: dict[str, Any]) -> dict[str, Any]:
    return dict(n, Services=[s for s in n["Services"] if _service_ok(a, s["Service"])],
                Checks=[c for c in n["Checks"] if check_ok(a, c)])


def _ui_nodes(a: Authorizer, rows: Rows) -> tuple[Rows, bool]:
    kept, dropped = _keep(rows, lambda n: _node_ok(a, n["Node"]))
    return [_ui_node_info(a, n) for n in kept], dropped


@dataclass(frozen=True, slots=True)
class QueryFilter:
    kinds: tuple[str, ...]  # what a token must read entirely for the filter to be skipped
    apply: Callable[[Authorizer, Rows], tuple[Rows, bool]]

    def needed(self, a: Authorizer) -> bool:
        return not all(a.reads_all(k) for k in self.kinds)


_NS = ("node", "service")
_HEALTH = QueryFilter(_NS, _list_filter(lambda a, e: _node_ok(a, e["Node"]["Node"])
                                        and _service_ok(a, e["Service"]["Service"])))
_CHECKS = QueryFilter(_NS, _list_filter(check_ok))
_SESSIONS = QueryFilter(("session",), _list_filter(lambda a, s: a.allowed("session", s["Node"], "read")))

QUERY_FILTERS: dict[str, QueryFilter] = {
    "catalog.nodes": QueryFilter(("node",), _list_filter(lambda a, n: _node_ok(a, n["Node"]))),
    "catalog.services": QueryFilter(("service",), _services_map),
    "catalog.service": QueryFilter(_NS, _list_filter(lambda a, r: _node_ok(a, r["Node"])
                                                     and _service_ok(a, r["ServiceName"]))),
    "catalog.node": QueryFilter(_NS, _node_with_services),
    "catalog.node_services": QueryFilter(_NS, _node_with_services),
    "health.node": _CHECKS,
    "health.checks": _CHECKS,
    "health.state": _CHECKS,
    "health.service": _HEALTH,
    "health.ingress": _HEALTH,
    "health.connect": _HEALTH,
    "kv.list": QueryFilter(("key",), _kv_rows),
    "kv.get": QueryFilter(("key",), _kv_rows),
    "kv.keys": QueryFilter(("key",), _kv_keys),
    "session.info": _SESSIONS,
    "session.list": _SESSIONS,
    "session.node": _SESSIONS,
    "coordinate.nodes": QueryFilter(("node",), _list_filter(lambda a, r: _node_ok(a, r["Node"]))),
    "query.list": QueryFilter(("query",), _list_filter(lambda a, q: a.allowed("query", q.get("Name") or "", "read"))),
    "ui.services": QueryFilter(("service",), _list_filter(lambda a, s: _service_ok(a, s["Name"]))),
    "ui.nodes": QueryFilter(_NS, _ui_nodes),
}


def filter_query(name: str, authz: Authorizer, result: Rows) -> tuple[Rows, bool]:
    """A named query's result cut to what `authz` may read, and whether anything was dropped."""
    f = QUERY_FILTERS.get(name)
    if f is None or not f.needed(authz):
        return result, False
    return f.apply(authz, result)


def needs_filter(name: str, authz: Authorizer) -> bool:
    f = QUERY_FILTERS.get(name)
    return f is not None and f.needed(authz)


def filter_rows(rows: Iterable[Any], ok: Callable[[Any], bool]) -> tuple[list[Any], bool]:
    """For handlers that list something other than a named query."""
    return _keep(rows, ok)
