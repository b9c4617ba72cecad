"""Prepared queries (Consul's /v1/query): resolving a name to a query, rendering templates, executing.

Pure: queries are rows of the replicated `prepared_queries` table (keyed by ID, in Consul's JSON shape);
execution reads the state store and the order of the answer takes the caller's RNG, so every server gives
the same candidates and only the shuffle differs, as in Consul.

Resolution follows Consul's PreparedQueryResolve: an ID; else a query whose name is the whole lookup
name; else the template (`Template.Type` = name_prefix_match) with the longest name that prefixes it (an
empty name is the catch-all). A template's string fields under `Service` are interpolated with
`${name.full}`, `${name.prefix}`, `${name.suffix}`, `${match(N)}` (groups of `Template.Regexp` applied to
the full name) and `${agent.segment}` (always empty here: no network segments).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from .errors import InvalidRequest, NotFound

TABLE = "prepared_queries"
TEMPLATE_TYPES = ("name_prefix_match",)
NOT_FOUND = "Query not found"
NEAR_FRONT_DEPTH = 10  # Consul moves the `Near` node to the front only when it is among the first ten

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_VAR = re.compile(r"\$\{\s*([^}]*?)\s*\}")
_MATCH = re.compile(r"^match\(\s*(\d+)\s*\)$")


class Shuffler(Protocol):
    def shuffle(self, x: list[Any]) -> None: ...


class Store(Protocol):
    """The reads execution needs from the state store."""

    def table_list(self, name: str) -> tuple[int, list[dict[str, Any]]]: ...

    def health_service(self, name: str, connect: bool = False
                       ) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]]]: ...


def is_uuid(text: str) -> bool:
    return bool(_UUID.match(text))


def is_template(query: dict[str, Any]) -> bool:
    return bool((query.get("Template") or {}).get("Type"))


# ---------------------------------------------------------------------------------------------- templates
def _interpolate(text: str, variables: Callable[[str], str]) -> str:
    return _VAR.sub(lambda m: variables(m.group(1)), text)


def _walk(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    return value


def render(query: dict[str, Any], full_name: str) -> dict[str, Any]:
    """The query as executed for `full_name`: a template's Service fields interpolated; others as stored.

    Raises InvalidRequest for a variable Consul does not know (create checks this up front).
    """
    if not is_template(query):
        return query
    tpl = query.get("Template") or {}
    prefix = query.get("Name") or ""
    groups: list[str] = []
    if tpl.get("Regexp"):
        m = re.search(tpl["Regexp"], full_name)
        if m:
            groups = [m.group(0)] + [g or "" for g in m.groups()]

    def variable(name: str) -> str:
        if name == "name.full":
            return full_name
        if name == "name.prefix":
            return prefix
        if name == "name.suffix":
            return full_name[len(prefix):]
        if name == "agent.segment":
            return ""
        m = _MATCH.match(name)
        if m:
            i = int(m.group(1))
            return groups[i] if i < len(groups) else ""
        raise InvalidRequest(f"Bad Template: unknown variable ${{{name}}} (known: name.full, name.prefix, "
                             "name.suffix, match(N), agent.segment)")

    service = _walk(query.get("Service") or {}, lambda s: _interpolate(s, variable))
    if tpl.get("RemoveEmptyTags"):
        service["Tags"] = [t for t in service.get("Tags") or [] if t]
    return dict(query, Service=service)


def check_template(query: dict[str, Any]) -> None:
    """Refuse a template whose Type or Regexp Consul would refuse, or that names unknown variables."""
    tpl = query.get("Template") or {}
    if not tpl.get("Type"):
        if tpl.get("Regexp"):
            raise InvalidRequest("Bad Template.Type '': a Regexp needs Template.Type name_prefix_match")
        return
    if tpl["Type"] not in TEMPLATE_TYPES:
        raise InvalidRequest(f"Bad Template.Type '{tpl['Type']}': must be one of {', '.join(TEMPLATE_TYPES)}")
    if tpl.get("Regexp"):
        try:
            re.compile(tpl["Regexp"])
        except re.error as e:
            raise InvalidRequest(f"Bad Regexp: {e}") from None
    render(query, query.get("Name") or "")


# ---------------------------------------------------------------------------------------------- storing
def check_unique(rows: dict[str, dict[str, Any]], qid: str, query: dict[str, Any],
                 session_exists: Callable[[str], bool]) -> None:
    """What the state store refuses when a query is written (Consul's preparedQuerySetTxn rules)."""
    name = query.get("Name") or ""
    if is_uuid(name):
        raise InvalidRequest("Query name cannot be a UUID")
    if query.get("Session") and not session_exists(query["Session"]):
        raise InvalidRequest(f"invalid session {query['Session']!r}")
    for other_id, other in rows.items():
        if other_id == qid:
            continue
        other_name = other.get("Name") or ""
        if name and other_name.lower() == name.lower():
            raise InvalidRequest(f"name {name!r} aliases an existing query name")
        if not name and is_template(query) and not other_name and is_template(other):
            raise InvalidRequest("a query template with an empty name already exists")
        if name and other_id.lower() == name.lower():
            raise InvalidRequest(f"name {name!r} aliases an existing query ID")


def resolve(rows: list[dict[str, Any]], id_or_name: str) -> dict[str, Any] | None:
    """The query `id_or_name` runs, rendered for that name (Consul's PreparedQueryResolve); None if none."""
    if not id_or_name:
        return None
    if is_uuid(id_or_name):
        for row in rows:
            if row["ID"].lower() == id_or_name.lower():
                return render(row, row.get("Name") or "")
        return None
    lower = id_or_name.lower()
    for row in rows:
        if not is_template(row) and (row.get("Name") or "").lower() == lower:
            return row
    best: dict[str, Any] | None = None
    for row in rows:
        prefix = (row.get("Name") or "").lower()
        if is_template(row) and lower.startswith(prefix) and (best is None or len(prefix) > len(best["Name"] or "")):
            best = row
    return render(best, id_or_name) if best is not None else None


# ---------------------------------------------------------------------------------------------- executing
def _healthy(checks: list[dict[str, Any]], only_passing: bool, ignore: set[str]) -> bool:
    for chk in checks:
        if chk["CheckID"] in ignore:
            continue
        status = chk["Status"]
        if status in ("critical", "maintenance") or (only_passing and status != "passing"):
            return False
    return True


def _tags_ok(tags: list[str], wanted: list[str]) -> bool:
    have = {t.lower() for t in tags}
    for t in wanted:
        t = t.lower()
        if t.startswith("!"):
            if t[1:] in have:
                return False
        elif t and t not in have:
            return False
    return True


def _meta_ok(meta: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(meta.get(k) == v for k, v in (wanted or {}).items())


def execute(store: Store, id_or_name: str, datacenter: str, connect: bool = False) -> tuple[int, dict[str, Any]]:
    """Run a query: (index, Consul's execute response) with Nodes unordered (see `order`).

    Raises NotFound ("Query not found") when no query answers to `id_or_name`.
    """
    qidx, rows = store.table_list(TABLE)
    query = resolve(rows, id_or_name)
    if query is None:
        raise NotFound(NOT_FOUND)
    idx, result = execute_definition(store, query, datacenter, connect)
    return max(idx, qidx), result


def execute_definition(store: Store, query: dict[str, Any], datacenter: str,
                       connect: bool = False) -> tuple[int, dict[str, Any]]:
    """Run a query definition against this store (how another datacenter runs a query it fails over to)."""
    svc = query.get("Service") or {}
    idx, entries = store.health_service(svc.get("Service") or "", connect=bool(connect or svc.get("Connect")))
    ignore = set(svc.get("IgnoreCheckIDs") or ())
    nodes = []
    for node, s, checks in entries:
        if not _healthy(checks, bool(svc.get("OnlyPassing")), ignore):
            continue
        if not _meta_ok(node.get("Meta") or {}, svc.get("NodeMeta")) or \
                not _meta_ok(s.get("Meta") or {}, svc.get("ServiceMeta")):
            continue
        if svc.get("Tags") and not _tags_ok(s.get("Tags") or [], svc["Tags"]):
            continue
        nodes.append({"Node": node, "Service": s, "Checks": checks})
    # Failover to other datacenters is the agent's (it reaches them); here: this datacenter's answer.
    return idx, {"Service": svc.get("Service") or "", "Namespace": "default", "Nodes": nodes,
                            "DNS": query.get("DNS") or {"TTL": ""}, "Datacenter": datacenter, "Failovers": 0,
                            "Near": svc.get("Near") or ""}


def has_failover(query: dict[str, Any]) -> bool:
    """Whether a query names other datacenters to try when it finds no instance here."""
    failover = (query.get("Service") or {}).get("Failover") or {}
    return bool(failover.get("NearestN") or failover.get("Datacenters"))


def order(nodes: list[dict[str, Any]], rng: Shuffler, near: str = "", limit: int = 0,
          by_distance: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Consul's ordering of an execute answer: shuffled, then sorted by RTT from `near` (`by_distance`, when
    there are coordinates), the `near` node moved to the front when it is among the first ten, then cut to
    `limit`."""
    nodes = list(nodes)
    rng.shuffle(nodes)
    if near and by_distance is not None:
        nodes = by_distance(nodes)
    if near:
        for i, entry in enumerate(nodes[:NEAR_FRONT_DEPTH]):
            if entry["Node"]["Node"].lower() == near.lower():
                nodes[0], nodes[i] = nodes[i], nodes[0]
                break
    return nodes[:limit] if limit > 0 else nodes
