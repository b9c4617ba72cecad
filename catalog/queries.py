"""Named read queries over the state store, answering in Consul's JSON shapes.

A query is what a server runs for a read RPC: a name, its arguments (plain data, so a client agent
can forward them over RPC unchanged), the tables whose changes can alter its answer (for blocking
queries), and a function from the store to `(index, result)`. Results are Consul's response bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proconsul.catalog import prepared_query as pq
from proconsul.catalog import store as st
from proconsul.catalog.filter import compile_filter
from proconsul.catalog.store import StateStore

Args = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    run: Callable[[StateStore, Args], tuple[int, Any]]
    tables: tuple[str, ...]
    kv_arg: str | None = None  # argument naming the KV key or prefix the query watches
    kv_prefix: bool = False


class UnknownQuery(LookupError):
    """A read RPC named a query this server does not have."""


def service_node(node: dict[str, Any], svc: dict[str, Any]) -> dict[str, Any]:
    """Consul's ServiceNode: a service instance flattened with its node (/v1/catalog/service)."""
    return {
        "ID": node["ID"],
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": node["Datacenter"],
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceKind": svc["Kind"],
        "ServiceID": svc["ID"],
        "ServiceName": svc["Service"],
        "ServiceTags": svc["Tags"],
        "ServiceAddress": svc["Address"],
        "ServiceTaggedAddresses": svc["TaggedAddresses"],
        "ServiceWeights": svc["Weights"],
        "ServiceMeta": svc["Meta"],
        "ServicePort": svc["Port"],
        "ServiceSocketPath": svc["SocketPath"],
        "ServiceEnableTagOverride": svc["EnableTagOverride"],
        "ServiceProxy": svc["Proxy"],
        "ServiceConnect": svc["Connect"],
        "Namespace": "default",
        "CreateIndex": svc["CreateIndex"],
        "ModifyIndex": svc["ModifyIndex"],
    }


def _meta_ok(node: dict[str, Any], node_meta: list[list[str]] | None) -> bool:
    if not node_meta:
        return True
    meta = node["Meta"]
    return all(meta.get(k) == v for k, v in node_meta)


def _tags_ok(svc: dict[str, Any], tags: list[str] | None) -> bool:
    if not tags:
        return True
    have = {t.lower() for t in svc["Tags"]}
    return all(t.lower() in have for t in tags)


def _catalog_nodes(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, nodes = s.list_nodes()
    return idx, [n for n in nodes if _meta_ok(n, a.get("node_meta"))]


def _catalog_services(s: StateStore, a: Args) -> tuple[int, Any]:
    """Service name → tags. With `filter` (Consul's language over each instance as a ServiceNode, as
    /v1/catalog/service answers it) only matching instances count."""
    if not a.get("node_meta") and not a.get("filter"):
        return s.list_services()
    pred = compile_filter(a["filter"]) if a.get("filter") else None
    out: dict[str, dict[str, None]] = {}
    for name in s.service_names():
        _, pairs = s.service_instances(name)
        for node, svc in pairs:
            if _meta_ok(node, a.get("node_meta")) and (pred is None or pred(service_node(node, svc))):
                tags = out.setdefault(svc["Service"], {})
                tags.update(dict.fromkeys(svc["Tags"]))
    return s.table_index(st.SERVICES), {k: list(v) for k, v in sorted(out.items())}


def _catalog_service(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, pairs = s.connect_instances(a["name"]) if a.get("connect") else s.service_instances(a["name"])
    return idx, [service_node(n, v) for n, v in pairs
                 if _tags_ok(v, a.get("tags")) and _meta_ok(n, a.get("node_meta"))]


def _catalog_node(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, (node, svcs) = s.node_services(a["node"])
    if node is None:
        return idx, None
    return idx, {"Node": node, "Services": {v["ID"]: v for v in svcs}}


def _catalog_node_services(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, (node, svcs) = s.node_services(a["node"])
    if node is None:
        return idx, None
    return idx, {"Node": node, "Services": svcs}


def _health_node(s: StateStore, a: Args) -> tuple[int, Any]:
    return s.node_checks(a["node"])


def _health_checks(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, checks = s.service_checks(a["name"])
    if a.get("node_meta"):
        checks = [c for c in checks if _meta_ok(s.get_node(c["Node"])[1] or {"Meta": {}}, a["node_meta"])]
    return idx, checks


def _health_service(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, entries = s.health_service(a["name"], connect=bool(a.get("connect")))
    tags, node_meta, passing = a.get("tags"), a.get("node_meta"), a.get("passing")
    out = []
    for node, svc, checks in entries:
        if not _tags_ok(svc, tags) or not _meta_ok(node, node_meta):
            continue
        if passing and any(c["Status"] != st.PASSING for c in checks):
            continue
        out.append({"Node": node, "Service": svc, "Checks": checks})
    return idx, out


def _health_connect(s: StateStore, a: Args) -> tuple[int, Any]:
    """Consul's /v1/health/connect/:service: the service's Connect-capable instances, and the terminating
    gateways whose config entry links it (a mesh service reaches an outside service through them)."""
    idx, out = _health_service(s, {**a, "connect": True})
    _, rows = s.table_list("config_entries")
    gateways = sorted(r["Name"] for r in rows if r["Kind"] == "terminating-gateway" and _links(s, r, a["name"]))
    for gw in gateways:
        out += [e for e in _health_service(s, {**a, "name": gw, "connect": False})[1]
                if e["Service"].get("Kind") == "terminating-gateway"]
    return max(idx, s.table_index("config_entries")), out


def _links(s: StateStore, entry: dict[str, Any], name: str) -> bool:
    """Whether a terminating-gateway entry links service `name`: by name, or through its wildcard `*`."""
    names = {svc.get("Name") for svc in entry.get("Services") or []}
    return name in names or ("*" in names and name in _wildcard_names(s))


def _gateway_entry(s: StateStore, name: str) -> dict[str, Any] | None:
    for kind in ("ingress-gateway", "terminating-gateway"):
        row = s.table_get("config_entries", f"{kind}/{name}")[1]
        if row is not None:
            return row
    return None


def _wildcard_names(s: StateStore) -> list[str]:
    """What a gateway's wildcard `*` links, as Consul's catalog does: every service with a typical instance
    (no proxies, no gateways), except `consul`."""
    return [n for n in s.service_names() if n != "consul"
            and any(not svc.get("Kind") or svc["Kind"] == "typical" for _, svc in s.service_instances(n)[1])]


def _gateway_services(s: StateStore, a: Args) -> tuple[int, Any]:
    """Consul's /v1/catalog/gateway-services/:gateway: the services an ingress or terminating gateway's
    config entry routes to (a wildcard `*` stands for every typical service of the catalog, `FromWildcard`,
    except those the listener names itself)."""
    idx = s.table_index("config_entries", st.SERVICES)
    entry = _gateway_entry(s, a["gateway"])
    if entry is None:
        return idx, []
    gateway = {"Name": a["gateway"], "Namespace": "default", "Partition": "default"}
    out = []
    if entry["Kind"] == "ingress-gateway":
        for lst in entry.get("Listeners") or []:
            named = {svc.get("Name") for svc in lst.get("Services") or []}
            for svc in lst.get("Services") or []:
                names = [n for n in _wildcard_names(s) if n not in named] if svc.get("Name") == "*" \
                    else [svc.get("Name", "")]
                for name in names:
                    out.append({"Gateway": gateway, "Service": {"Name": name, "Namespace": "default",
                                                                "Partition": "default"},
                                "GatewayKind": "ingress-gateway", "Port": lst.get("Port", 0),
                                "Protocol": lst.get("Protocol", "tcp"), "Hosts": svc.get("Hosts"),
                                "FromWildcard": svc.get("Name") == "*"})
    else:
        named = {svc.get("Name") for svc in entry.get("Services") or []}
        for svc in entry.get("Services") or []:
            names = [n for n in _wildcard_names(s) if n not in named] if svc.get("Name") == "*" \
                else [svc.get("Name", "")]
            for name in names:
                out.append({"Gateway": gateway, "Service": {"Name": name, "Namespace": "default",
                                                            "Partition": "default"},
                            "GatewayKind": "terminating-gateway", "CAFile": svc.get("CAFile", ""),
                            "CertFile": svc.get("CertFile", ""), "KeyFile": svc.get("KeyFile", ""),
                            "SNI": svc.get("SNI", ""), "FromWildcard": svc.get("Name") == "*"})
    return idx, out


def _health_ingress(s: StateStore, a: Args) -> tuple[int, Any]:
    """Consul's /v1/health/ingress/:service: the ingress gateways (their instances and checks) that expose
    `name`, per the ingress-gateway config entries."""
    _, rows = s.table_list("config_entries")
    names = {svc.get("Name") for r in rows if r["Kind"] == "ingress-gateway" for lst in r.get("Listeners") or []
             for svc in lst.get("Services") or []}
    linked = "*" in names and a["name"] in _wildcard_names(s)  # a wildcard links only the catalog's services
    gateways = [r["Name"] for r in rows if r["Kind"] == "ingress-gateway" and any(
        svc.get("Name") == a["name"] or (svc.get("Name") == "*" and linked)
        for lst in r.get("Listeners") or [] for svc in lst.get("Services") or [])]
    idx = s.table_index("config_entries", st.NODES, st.SERVICES, st.CHECKS)
    out = []
    for gw in sorted(gateways):
        out += _health_service(s, {"name": gw, "passing": a.get("passing")})[1]
    return idx, out


def _health_state(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, checks = s.checks_in_state(a["state"])
    if a.get("node_meta"):
        checks = [c for c in checks if _meta_ok(s.get_node(c["Node"])[1] or {"Meta": {}}, a["node_meta"])]
    return idx, checks


def _kv_get(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, row = s.kv_get(a["key"])
    return idx, [row] if row is not None else None


def _kv_list(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, rows = s.kv_list(a["key"])
    return idx, rows or None


def _kv_keys(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, keys = s.kv_keys(a["key"], a.get("separator") or "")
    return idx, keys or None


def _session_info(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, row = s.session_get(a["id"])
    return idx, [row] if row is not None else []


def _session_list(s: StateStore, a: Args) -> tuple[int, Any]:
    return s.session_list()


def _session_node(s: StateStore, a: Args) -> tuple[int, Any]:
    return s.node_sessions(a["node"])


SECRET_FIELDS = ("SigningKey",)  # never leaves a server: the CA's private keys live in ca_roots rows


def _public(row: Any) -> Any:
    if isinstance(row, dict) and any(f in row for f in SECRET_FIELDS):
        return {k: v for k, v in row.items() if k not in SECRET_FIELDS}
    return row


def _table_list(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, rows = s.table_list(a["table"])
    return idx, [_public(r) for r in rows]


def _table_get(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, row = s.table_get(a["table"], a["key"])
    return idx, _public(row)


def public_roots(rows: list[dict[str, Any]], trust_domain: str) -> dict[str, Any]:
    """Consul's CA roots body (`ActiveRootID`, `TrustDomain`, `Roots`), without any signing key."""
    rows = sorted(rows, key=lambda r: r["CreateIndex"])
    return {"ActiveRootID": next((r["ID"] for r in rows if r["Active"]), ""), "TrustDomain": trust_domain,
            "Roots": [_public(r) for r in rows]}


def _connect_roots(s: StateStore, a: Args) -> tuple[int, Any]:
    _, rows = s.table_list("ca_roots")
    _, cfg = s.table_get("ca_config", "config")
    return s.table_index("ca_roots", "ca_config"), public_roots(rows, cfg["TrustDomain"] if cfg else "")


def _config_list(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, rows = s.table_list("config_entries")
    kind = a.get("kind")
    return idx, sorted((r for r in rows if not kind or r["Kind"] == kind), key=lambda r: (r["Kind"], r["Name"]))


def _config_get(s: StateStore, a: Args) -> tuple[int, Any]:
    return s.table_get("config_entries", f"{a['kind']}/{a['name']}")


def _acl_token_bundle(s: StateStore, a: Args) -> tuple[int, Any]:
    """What resolving one token secret needs: the token (by SecretID or AccessorID), and every policy and
    role (few, and a client agent caches the bundle), so an authorizer is built from one read."""
    idx = s.table_index(*st.ACL_TABLES)
    _, tokens = s.table_list("acl_tokens")
    secret, accessor = a.get("secret"), a.get("accessor")
    token = next((t for t in tokens if (secret and t["SecretID"] == secret)
                  or (accessor and t["AccessorID"] == accessor)), None)
    policies = {p["ID"]: p for p in s.table_list("acl_policies")[1]}
    roles = {r["ID"]: r for r in s.table_list("acl_roles")[1]}
    return idx, {"Token": token, "Policies": policies, "Roles": roles}


# ---------------------------------------------------------------------- the web UI's aggregates
# (/v1/internal/ui/*: what a page needs in one call that the public API would need thousands for)
class _InstanceChecks:
    """Each instance's checks (its node's, then its own), grouping every node's checks once per query
    instead of scanning them for each of the node's instances."""

    def __init__(self, s: StateStore) -> None:
        self._store = s
        self._nodes: dict[str, tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]] = {}

    def __call__(self, node: str, sid: str) -> list[dict[str, Any]]:
        entry = self._nodes.get(node)
        if entry is None:
            node_level: list[dict[str, Any]] = []
            per_service: dict[str, list[dict[str, Any]]] = {}
            for chk in self._store.node_checks(node)[1]:
                if chk["ServiceID"]:
                    per_service.setdefault(chk["ServiceID"], []).append(chk)
                else:
                    node_level.append(chk)
            entry = self._nodes[node] = (node_level, per_service)
        own = entry[1].get(sid)
        return entry[0] + own if own else entry[0]


_COUNTED = (st.PASSING, st.WARNING, st.CRITICAL)


Pairs = list[tuple[dict[str, Any], dict[str, Any]]]


def _summary(s: StateStore, pairs: Pairs, proxied: set[str], checks_of: _InstanceChecks) -> dict[str, Any]:
    """Consul's ServiceListingSummary of one service (its instances): nodes, tags and check counts."""
    tags: dict[str, None] = {}
    nodes: dict[str, None] = {}
    counts = dict.fromkeys(_COUNTED, 0)
    worst = dict.fromkeys(_COUNTED, 0)  # instances by their worst check
    native = False
    for node, svc in pairs:
        tags.update(dict.fromkeys(svc["Tags"]))
        nodes[node["Node"]] = None
        native = native or bool((svc["Connect"] or {}).get("Native"))
        checks = checks_of(node["Node"], svc["ID"])
        for chk in checks:
            status = chk["Status"]
            counts[status if status in counts else st.CRITICAL] += 1
        status = st.aggregate_status(checks)
        worst[status if status in worst else st.CRITICAL] += 1
    first = pairs[0][1]
    return {"Kind": first["Kind"], "Name": first["Service"], "Datacenter": s.datacenter, "Tags": list(tags),
            "Nodes": list(nodes), "ExternalSources": [], "InstanceCount": len(pairs),
            "ChecksPassing": counts[st.PASSING], "ChecksWarning": counts[st.WARNING],
            "ChecksCritical": counts[st.CRITICAL], "InstancesPassing": worst[st.PASSING],
            "InstancesWarning": worst[st.WARNING], "InstancesCritical": worst[st.CRITICAL],
            "ConnectedWithProxy": first["Service"] in proxied, "ConnectedWithGateway": False,
            "ConnectNative": native, "Namespace": "default", "Partition": "default"}


def _proxied(s: StateStore, instances: dict[str, Pairs] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Destination service name -> its sidecar proxies' service rows (from `instances` when given)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for pairs in (instances or {n: s.service_instances(n)[1] for n in s.service_names()}).values():
        for _, svc in pairs:
            if svc["Kind"] == "connect-proxy":
                dest = (svc["Proxy"] or {}).get("DestinationServiceName")
                if dest:
                    out.setdefault(dest, []).append(svc)
    return out


def _ui_services(s: StateStore, a: Args) -> tuple[int, Any]:
    everything = {n: s.service_instances(n)[1] for n in s.service_names()}
    proxied = set(_proxied(s, everything))
    checks_of = _InstanceChecks(s)
    wanted = [n.lower() for n in a["names"]] if a.get("names") is not None else list(everything)
    out = [_summary(s, everything[n], proxied, checks_of) for n in wanted if everything.get(n)]
    out.sort(key=lambda x: x["Name"])
    return s.table_index(*_CATALOG), out


def _node_info(s: StateStore, node: dict[str, Any]) -> dict[str, Any]:
    """Consul's NodeInfo: a node with its services and every check on it."""
    _, (_, svcs) = s.node_services(node["Node"])
    _, checks = s.node_checks(node["Node"])
    return {"ID": node["ID"], "Node": node["Node"], "Address": node["Address"], "Datacenter": node["Datacenter"],
            "TaggedAddresses": node["TaggedAddresses"], "Meta": node["Meta"], "Services": svcs, "Checks": checks}


def _ui_nodes(s: StateStore, a: Args) -> tuple[int, Any]:
    return s.table_index(*_CATALOG), [_node_info(s, n) for n in s.list_nodes()[1]]


def _ui_node(s: StateStore, a: Args) -> tuple[int, Any]:
    _, node = s.get_node(a["node"])
    return s.table_index(*_CATALOG), _node_info(s, node) if node is not None else None


def _protocol(s: StateStore, name: str) -> str:
    """A service's protocol as proxies see it: service-defaults, else proxy-defaults, else tcp."""
    _, sd = s.table_get("config_entries", f"service-defaults/{name}")
    if sd and sd.get("Protocol"):
        return str(sd["Protocol"])
    _, pd = s.table_get("config_entries", "proxy-defaults/global")
    cfg = (pd or {}).get("Config") or {}
    return str(cfg.get("protocol") or cfg.get("Protocol") or "tcp")


def _ui_topology(s: StateStore, a: Args) -> tuple[int, Any]:
    """The links a service's sidecar registrations declare: upstreams of its own proxies, and the
    services whose proxies name it as an upstream; protocols for those and the `also` names (the
    caller adds the links intentions make)."""
    name = a["name"]
    by_dest = _proxied(s)
    ups: dict[str, None] = {}
    for proxy in by_dest.get(name, []):
        for up in (proxy["Proxy"] or {}).get("Upstreams") or []:
            if up.get("DestinationType", "service") == "service" and up.get("DestinationName"):
                ups[up["DestinationName"]] = None
    downs = {dest: None for dest, proxies in by_dest.items() for proxy in proxies
             if any(u.get("DestinationName") == name for u in (proxy["Proxy"] or {}).get("Upstreams") or [])}
    return s.table_index(*_CATALOG, "config_entries"), {
        "Protocol": _protocol(s, name), "Upstreams": list(ups), "Downstreams": sorted(downs),
        "Protocols": {n: _protocol(s, n) for n in {name, *ups, *downs, *(a.get("also") or ())}}}


def _coordinate(row: dict[str, Any]) -> dict[str, Any]:
    """Consul's coordinate entry: Node, Segment, Coord (no Raft indexes)."""
    return {"Node": row["Node"], "Segment": row["Segment"], "Coord": row["Coord"]}


def _coordinate_nodes(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, rows = s.table_list(st.COORDINATES)
    return idx, sorted((_coordinate(r) for r in rows), key=lambda r: r["Node"])


def _coordinate_node(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, row = s.table_get(st.COORDINATES, a["node"].lower())
    return idx, [_coordinate(row)] if row is not None else None


def _txn_read(s: StateStore, a: Args) -> tuple[int, Any]:
    return s.table_index(*_CATALOG, st.KVS), s.txn_read(a["ops"])


def _query_list(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, rows = s.table_list(pq.TABLE)
    return idx, sorted(rows, key=lambda r: r["CreateIndex"])


def _query_get(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, row = s.table_get(pq.TABLE, a["id"])
    return idx, [row] if row is not None else None


def _query_execute(s: StateStore, a: Args) -> tuple[int, Any]:
    """Candidates of a prepared query (unordered: the agent shuffles them with its RNG, see pq.order)."""
    return pq.execute(s, a["query"], s.datacenter, connect=bool(a.get("connect")))


def _query_execute_definition(s: StateStore, a: Args) -> tuple[int, Any]:
    """A query definition sent by another datacenter failing over to this one."""
    return pq.execute_definition(s, a["definition"], s.datacenter, connect=bool(a.get("connect")))


def _query_explain(s: StateStore, a: Args) -> tuple[int, Any]:
    idx, rows = s.table_list(pq.TABLE)
    query = pq.resolve(rows, a["query"])
    return idx, {"Query": query} if query is not None else None


_CATALOG = (st.NODES, st.SERVICES, st.CHECKS)

QUERIES: dict[str, Query] = {q.name: q for q in (
    Query("catalog.nodes", _catalog_nodes, (st.NODES,)),
    Query("catalog.services", _catalog_services, (st.SERVICES, st.NODES)),
    Query("catalog.service", _catalog_service, _CATALOG),
    Query("catalog.node", _catalog_node, (st.NODES, st.SERVICES)),
    Query("catalog.node_services", _catalog_node_services, (st.NODES, st.SERVICES)),
    Query("health.node", _health_node, (st.NODES, st.CHECKS)),
    Query("health.checks", _health_checks, _CATALOG),
    Query("health.service", _health_service, _CATALOG),
    Query("health.connect", _health_connect, (*_CATALOG, "config_entries")),
    Query("health.state", _health_state, (st.NODES, st.CHECKS)),
    Query("kv.get", _kv_get, (st.KVS,), kv_arg="key"),
    Query("kv.list", _kv_list, (st.KVS,), kv_arg="key", kv_prefix=True),
    Query("kv.keys", _kv_keys, (st.KVS,), kv_arg="key", kv_prefix=True),
    Query("session.info", _session_info, (st.SESSIONS,)),
    Query("session.list", _session_list, (st.SESSIONS,)),
    Query("session.node", _session_node, (st.SESSIONS,)),
    Query("config.list", _config_list, ("config_entries",)),
    Query("config.get", _config_get, ("config_entries",)),
    Query("connect.roots", _connect_roots, ("ca_roots", "ca_config")),
    Query("catalog.gateway_services", _gateway_services, ("config_entries", st.SERVICES)),
    Query("health.ingress", _health_ingress, ("config_entries", st.NODES, st.SERVICES, st.CHECKS)),
    Query("acl.token_bundle", _acl_token_bundle, st.ACL_TABLES),
    Query("table.list", _table_list, st.SIMPLE_TABLES),
    Query("table.get", _table_get, st.SIMPLE_TABLES),
    Query("txn.read", _txn_read, (*_CATALOG, st.KVS)),
    Query("coordinate.nodes", _coordinate_nodes, (st.COORDINATES,)),
    Query("coordinate.node", _coordinate_node, (st.COORDINATES,)),
    Query("query.list", _query_list, (pq.TABLE,)),
    Query("query.get", _query_get, (pq.TABLE,)),
    Query("query.execute", _query_execute, (*_CATALOG, pq.TABLE)),
    Query("query.explain", _query_explain, (pq.TABLE,)),
    Query("query.execute_definition", _query_execute_definition, _CATALOG),
    Query("ui.services", _ui_services, _CATALOG),
    Query("ui.nodes", _ui_nodes, _CATALOG),
    Query("ui.node", _ui_node, _CATALOG),
    Query("ui.topology", _ui_topology, (*_CATALOG, "config_entries")),
)}


def get_query(name: str) -> Query:
    q = QUERIES.get(name)
    if q is None:
        raise UnknownQuery(f"unknown query {name!r}")
    return q
