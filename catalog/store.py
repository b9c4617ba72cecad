"""The state store: Consul's catalog, KV, sessions and a few keyed tables, in memory.

Pure Python with no I/O, no clock and no randomness: every mutation arrives as a typed command
through `apply(index, command)` (the entry point Raft drives), every read returns the index it is
consistent at, and listeners hear which tables (and KV keys) each command touched so the agent can
wake blocking queries without polling.

Rows are kept as dicts in Consul's own JSON shape (PascalCase), so the HTTP layer serialises them
without translation. Readers must treat returned rows as read-only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import commands as c
from . import prepared_query
from .errors import CatalogError, Conflict, InvalidRequest, NotFound
from .txn_catalog import Overlay, q

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
MAINTENANCE = "maintenance"
STATUSES = (PASSING, WARNING, CRITICAL, MAINTENANCE)
_SEVERITY = {PASSING: 0, WARNING: 1, MAINTENANCE: 2, CRITICAL: 3}

# Table names (also the keys of the per-table max index).
NODES = "nodes"
SERVICES = "services"
CHECKS = "checks"
KVS = "kvs"
SESSIONS = "sessions"
PREPARED_QUERIES = prepared_query.TABLE
COORDINATES = "coordinates"  # lower(node) -> {"Node", "Segment", "Coord"}: network coordinates (Vivaldi)
ACL_TABLES = ("acl_tokens", "acl_policies", "acl_roles", "acl_auth_methods", "acl_binding_rules")
SIMPLE_TABLES = ("intentions", "ca_roots", "ca_config", "config_entries", "meta", PREPARED_QUERIES, COORDINATES,
                 *ACL_TABLES)

SNAPSHOT_VERSION = 1

_INDEX_FIELDS = ("CreateIndex", "ModifyIndex")
KV_WRITE_VERBS = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"})


def is_read_op(op: dict[str, Any]) -> bool:
    """Whether a transaction operation only reads (Consul fast-paths transactions made only of these)."""
    if op.get("Kind", "KV") == "KV":
        return op.get("Verb") not in KV_WRITE_VERBS
    return op.get("Verb") == "get" or "Refused" in op


@dataclass(slots=True)
class Changes:
    """What one applied command touched: table names, KV keys, service names."""

    index: int
    tables: set[str] = field(default_factory=set)
    kv_keys: list[str] = field(default_factory=list)
    services: set[str] = field(default_factory=set)


Listener = Callable[[Changes], None]
# A simple table's write check: (the table's rows by key, the key written, the new row or None for a delete).
TableCheck = Callable[[dict[str, dict[str, Any]], str, dict[str, Any] | None], None]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when two rows are equal apart from their Raft indexes."""
    keys = (set(a) | set(b)) - set(_INDEX_FIELDS)
    return all(a.get(k) == b.get(k) for k in keys)


def aggregate_status(checks: Iterable[dict[str, Any]]) -> str:
    """The worst status of a set of checks (passing when there are none)."""
    worst = PASSING
    for chk in checks:
        s = chk.get("Status", CRITICAL)
        if _SEVERITY.get(s, 3) > _SEVERITY[worst]:
            worst = s if s in _SEVERITY else CRITICAL
    return worst


class StateStore:
    """Every table of the catalog, with per-table indexes and change notification."""

    def __init__(self, datacenter: str = "dc1") -> None:
        self.datacenter = datacenter
        self._listeners: list[Listener] = []
        self._reset()

    def _reset(self) -> None:
        self.last_index = 0
        self._index: dict[str, int] = {}
        self._nodes: dict[str, dict[str, Any]] = {}  # lower(node) -> node row
        self._services: dict[str, dict[str, dict[str, Any]]] = {}  # lower(node) -> id -> service row
        self._by_name: dict[str, dict[tuple[str, str], None]] = {}  # lower(name) -> ordered set
        self._service_index: dict[str, int] = {}  # lower(name) -> last index touching it
        self._checks: dict[str, dict[str, dict[str, Any]]] = {}  # lower(node) -> check id -> row
        # lower(node) -> ServiceID ("" for node checks) -> check ids: a node may hold thousands of instances
        # (k8s-sync's synthetic node), so an instance's checks are found without scanning the node's.
        self._check_index: dict[str, dict[str, dict[str, None]]] = {}
        self._kv: dict[str, dict[str, Any]] = {}
        self._kv_sorted: list[str] = []
        self._tombstones: dict[str, int] = {}
        self._tomb_sorted: list[str] = []
        self._sessions: dict[str, dict[str, Any]] = {}
        self._lock_delay: dict[str, float] = {}  # key -> time (leader's clock) until which acquire fails
        self._kv_floor = 0  # index of the last operator restore: no KV prefix index goes below it
        self._tables: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in SIMPLE_TABLES}
        self._table_checks: dict[str, TableCheck] = {}

    def set_table_check(self, table: str, check: TableCheck) -> None:
        """Have every write of `table` checked against the table as it is, inside apply (so two racing
        writes are judged in log order): `check(rows, key, row)` raises a CatalogError to refuse a set
        (`row`) or a delete (`row` None). It must be pure, as apply is: the same on every server."""
        self._table(table)
        self._table_checks[table] = check

    # ------------------------------------------------------------------ notification
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every applied command; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def count(self, what: str) -> int:
        """Sizes for metrics: "nodes", "services" (names), "service_instances", "checks", "kvs"."""
        if what == "nodes":
            return len(self._nodes)
        if what == "services":
            return len(self._by_name)
        if what == "service_instances":
            return sum(len(v) for v in self._services.values())
        if what == "checks":
            return sum(len(v) for v in self._checks.values())
        if what == "kvs":
            return len(self._kv)
        raise ValueError(f"unknown count {what!r}")

    def table_index(self, *tables: str) -> int:
        """The highest index at which any of `tables` changed (at least 1, as Consul's headers)."""
        index, best = self._index, 1  # a loop, not max() over a new list: this runs on every cached read
        for t in tables:
            v = index.get(t, 0)
            if v > best:
                best = v
        return best

    def service_index(self, name: str) -> int:
        idx = self._service_index.get(name.lower())
        return idx if idx else self.table_index(NODES, SERVICES, CHECKS)

    # ------------------------------------------------------------------ apply
    def apply(self, index: int, cmd: c.Command) -> Any:
        """Apply one command at Raft index `index`; returns its result or raises CatalogError.

        A command that raises leaves the state as it was. The index is consumed either way.
        """
        if index <= self.last_index:
            raise InvalidRequest(f"index {index} is not above the last applied index {self.last_index}")
        ch = Changes(index)
        try:
            result = self._dispatch(ch, cmd)
        finally:
            self.last_index = index
        for t in ch.tables:
            self._index[t] = index
        for s in ch.services:
            self._service_index[s] = index
        if ch.tables:
            for listener in list(self._listeners):
                listener(ch)
        return result

    def apply_bytes(self, index: int, data: bytes) -> Any:
        """The Raft FSM entry point: decode and apply; a refused command comes back as the error."""
        try:
            return self.apply(index, c.decode(data))
        except CatalogError as e:
            return e

    def _dispatch(self, ch: Changes, cmd: c.Command) -> Any:
        match cmd:
            case c.Register():
                return self._register(ch, cmd)
            case c.Deregister():
                return self._deregister(ch, cmd)
            case c.KVOp():
                return self._kv_apply(ch, cmd.verb, cmd.key, cmd.value, cmd.flags, cmd.index, cmd.session,
                                      cmd.now)
            case c.Txn():
                return self._txn(ch, cmd)
            case c.SessionCreate():
                return self._session_create(ch, cmd)
            case c.SessionDestroy():
                if cmd.id not in self._sessions:
                    return False
                self._session_delete(ch, cmd.id, cmd.now)
                return True
            case c.TombstoneReap():
                dead = [k for k, i in self._tombstones.items() if i <= cmd.index]
                for k in dead:
                    self._drop_tombstone(k)
                if dead:
                    ch.tables.add("tombstones")
                return len(dead)
            case c.TableSet():
                return self._table_set(ch, cmd)
            case c.TableDelete():
                return self._table_delete(ch, cmd)
            case c.Restore():
                self._restore_at(cmd.state, ch)
                return True
            case c.Batch():
                return [self._dispatch(ch, sub) for sub in cmd.commands]
        raise InvalidRequest(f"unsupported command {type(cmd).__name__}")

    # ------------------------------------------------------------------ nodes, services, checks
    def _register(self, ch: Changes, cmd: c.Register) -> bool:
        node = cmd.node
        name = node.get("Node") or ""
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Must provide node")
        key = name.lower()
        existing = self._nodes.get(key)
        if not cmd.skip_node_update or existing is None:
            if not node.get("Address"):
                raise InvalidRequest("Must provide address")
            node_id = node.get("ID") or ""
            if node_id:
                for other in self._nodes.values():
                    if other.get("ID") == node_id and other["Node"].lower() != key:
                        raise InvalidRequest(
                            f"Failed inserting node: node ID {node_id!r} is already used by node {other['Node']!r}")
        svc = cmd.service
        if svc is not None:
            if not svc.get("Service"):
                raise InvalidRequest("Must provide service name (Service.Service)")
        sid = (svc.get("ID") or svc.get("Service")) if svc else None
        services_after = set(self._services.get(key, {}))
        if sid:
            services_after.add(sid)
        for chk in cmd.checks:
            if chk.get("ServiceID") and chk["ServiceID"] not in services_after:
                raise InvalidRequest(f"Missing service registration for check {chk.get('CheckID')!r}: "
                                     f"no service {chk['ServiceID']!r} on node {name!r}")
            if not (chk.get("CheckID") or chk.get("Name")):
                raise InvalidRequest("Must provide a check ID or Name")
            if chk.get("Status") and chk["Status"] not in STATUSES:
                raise InvalidRequest(f"Invalid check status {chk['Status']!r}")
        # Validation done: mutate.
        if not cmd.skip_node_update or existing is None:
            row = {
                "ID": node.get("ID") or "",
                "Node": name,
                "Address": node.get("Address") or "",
                "Datacenter": node.get("Datacenter") or self.datacenter,
                "TaggedAddresses": node.get("TaggedAddresses") or {},
                "Meta": node.get("Meta") or node.get("NodeMeta") or {},
            }
            if existing is None or not _same(existing, row):
                row["CreateIndex"] = existing["CreateIndex"] if existing else ch.index
                row["ModifyIndex"] = ch.index
                self._nodes[key] = row
                ch.tables.add(NODES)
                for s in self._services.get(key, {}).values():
                    ch.services.add(s["Service"].lower())
        if svc is not None and sid:
            self._put_service(ch, key, sid, svc)
        for chk in cmd.checks:
            self._put_check(ch, key, name, chk, cmd.now)
        return True

    def _put_service(self, ch: Changes, nkey: str, sid: str, svc: dict[str, Any]) -> None:
        node_services = self._services.setdefault(nkey, {})
        existing = node_services.get(sid)
        row = {
            "ID": sid,
            "Service": svc["Service"],
            "Tags": list(svc.get("Tags") or []),
            "Address": svc.get("Address") or "",
            "TaggedAddresses": svc.get("TaggedAddresses") or {},
            "Meta": svc.get("Meta") or {},
            "Port": int(svc.get("Port") or 0),
            "Weights": svc.get("Weights") or {"Passing": 1, "Warning": 1},
            "EnableTagOverride": bool(svc.get("EnableTagOverride", False)),
            "Kind": svc.get("Kind") or "",
            "Proxy": svc.get("Proxy") or {},
            "Connect": svc.get("Connect") or {},
            "SocketPath": svc.get("SocketPath") or "",
        }
        if existing is not None and _same(existing, row):
            return
        row["CreateIndex"] = existing["CreateIndex"] if existing else ch.index
        row["ModifyIndex"] = ch.index
        if existing is not None and existing["Service"].lower() != row["Service"].lower():
            self._unindex_service(ch, nkey, existing)
        node_services[sid] = row
        lname = row["Service"].lower()
        self._by_name.setdefault(lname, {})[(nkey, sid)] = None
        ch.tables.add(SERVICES)
        ch.services.add(lname)
        # Service checks carry the service's name and tags: keep them in step (a new service has no checks yet,
        # and a node may hold thousands: only look when the name or tags changed).
        if existing is None or (existing["Service"] == row["Service"] and existing["Tags"] == row["Tags"]):
            return
        for chk in self._service_check_rows(nkey, sid):
            if chk["ServiceName"] != row["Service"] or chk["ServiceTags"] != row["Tags"]:
                chk["ServiceName"] = row["Service"]
                chk["ServiceTags"] = list(row["Tags"])
                chk["ModifyIndex"] = ch.index
                ch.tables.add(CHECKS)

    def _unindex_service(self, ch: Changes, nkey: str, svc: dict[str, Any]) -> None:
        lname = svc["Service"].lower()
        members = self._by_name.get(lname)
        if members is not None:
            members.pop((nkey, svc["ID"]), None)
            if not members:
                del self._by_name[lname]
        ch.services.add(lname)

    def _put_check(self, ch: Changes, nkey: str, node_name: str, chk: dict[str, Any], now: float) -> None:
        check_id = chk.get("CheckID") or chk.get("Name")
        node_checks = self._checks.setdefault(nkey, {})
        existing = node_checks.get(check_id)
        sid = chk.get("ServiceID") or ""
        svc = self._services.get(nkey, {}).get(sid) if sid else None
        row = {
            "Node": node_name,
            "CheckID": check_id,
            "Name": chk.get("Name") or check_id,
            "Status": chk.get("Status") or CRITICAL,
            "Notes": chk.get("Notes") or "",
            "Output": chk.get("Output") or "",
            "ServiceID": sid,
            "ServiceName": svc["Service"] if svc else "",
            "ServiceTags": list(svc["Tags"]) if svc else [],
            "Type": chk.get("Type") or "",
            "Interval": chk.get("Interval") or "",
            "Timeout": chk.get("Timeout") or "",
            "ExposedPort": int(chk.get("ExposedPort") or 0),
            "Definition": chk.get("Definition") or {},
        }
        if existing is not None and _same(existing, row):
            return
        row["CreateIndex"] = existing["CreateIndex"] if existing else ch.index
        row["ModifyIndex"] = ch.index
        node_checks[check_id] = row
        if existing is not None and existing["ServiceID"] != sid:
            self._unindex_check(nkey, check_id, existing["ServiceID"])
        self._check_index.setdefault(nkey, {}).setdefault(sid, {})[check_id] = None
        ch.tables.add(CHECKS)
        self._touch_check_services(ch, nkey, sid)
        if row["Status"] == CRITICAL:
            self._invalidate_sessions_for_check(ch, nkey, check_id, now)

    def _unindex_check(self, nkey: str, check_id: str, sid: str) -> None:
        by_service = self._check_index.get(nkey, {})
        ids = by_service.get(sid)
        if ids is not None:
            ids.pop(check_id, None)
            if not ids:
                del by_service[sid]

    def _service_check_rows(self, nkey: str, sid: str) -> list[dict[str, Any]]:
        """The checks of one instance (sid "" : the node-level checks), without scanning the node."""
        checks = self._checks.get(nkey, {})
        return [checks[c] for c in self._check_index.get(nkey, {}).get(sid, ())]

    def _touch_check_services(self, ch: Changes, nkey: str, sid: str) -> None:
        services = self._services.get(nkey, {})
        if sid:
            if sid in services:
                ch.services.add(services[sid]["Service"].lower())
        else:
            for s in services.values():
                ch.services.add(s["Service"].lower())

    def _deregister(self, ch: Changes, cmd: c.Deregister) -> bool:
        nkey = (cmd.node or "").lower()
        if not nkey:
            raise InvalidRequest("Must provide node")
        if nkey not in self._nodes:
            return True  # Consul treats deregistering something absent as success
        if cmd.service_id:
            self._delete_service(ch, nkey, cmd.service_id, cmd.now)
        elif cmd.check_id:
            self._delete_check(ch, nkey, cmd.check_id, cmd.now)
        else:
            for sess_id in [s["ID"] for s in self._sessions.values() if s["Node"].lower() == nkey]:
                self._session_delete(ch, sess_id, cmd.now)
            for sid in list(self._services.get(nkey, {})):
                self._delete_service(ch, nkey, sid, cmd.now)
            for cid in list(self._checks.get(nkey, {})):
                self._delete_check(ch, nkey, cid, cmd.now)
            self._services.pop(nkey, None)
            self._checks.pop(nkey, None)
            self._check_index.pop(nkey, None)
            del self._nodes[nkey]
            ch.tables.add(NODES)
            if self._tables[COORDINATES].pop(nkey, None) is not None:
                ch.tables.add(COORDINATES)
        return True

    def _delete_service(self, ch: Changes, nkey: str, sid: str, now: float) -> None:
        svc = self._services.get(nkey, {}).pop(sid, None)
        if svc is None:
            return
        self._unindex_service(ch, nkey, svc)
        ch.tables.add(SERVICES)
        for chk in self._service_check_rows(nkey, sid):
            self._delete_check(ch, nkey, chk["CheckID"], now)

    def _delete_check(self, ch: Changes, nkey: str, check_id: str, now: float) -> None:
        chk = self._checks.get(nkey, {}).pop(check_id, None)
        if chk is None:
            return
        self._unindex_check(nkey, check_id, chk["ServiceID"])
        ch.tables.add(CHECKS)
        self._touch_check_services(ch, nkey, chk.get("ServiceID") or "")
        self._invalidate_sessions_for_check(ch, nkey, check_id, now)

    # ------------------------------------------------------------------ catalog reads
    def get_node(self, name: str) -> tuple[int, dict[str, Any] | None]:
        return self.table_index(NODES), self._nodes.get(name.lower())

    def list_nodes(self) -> tuple[int, list[dict[str, Any]]]:
        return self.table_index(NODES), sorted(self._nodes.values(), key=lambda n: n["Node"])

    def list_services(self) -> tuple[int, dict[str, list[str]]]:
        """Service name -> union of tags across instances (Consul's /v1/catalog/services)."""
        out: dict[str, list[str]] = {}
        for members in self._by_name.values():
            tags: dict[str, None] = {}
            display = None
            for nkey, sid in sorted(members):  # a stable order, the same after a snapshot restore
                svc = self._services[nkey][sid]
                display = display or svc["Service"]
                for t in svc["Tags"]:
                    tags[t] = None
            if display is not None:
                out[display] = list(tags)
        return self.table_index(SERVICES), dict(sorted(out.items()))

    def service_names(self) -> list[str]:
        return sorted(self._by_name)

    def service_instances(self, name: str) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any]]]]:
        """(node, service) pairs for every instance of service `name`, ordered by node name."""
        lname = name.lower()
        pairs = [(self._nodes[nkey], self._services[nkey][sid]) for nkey, sid in self._by_name.get(lname, {})]
        pairs.sort(key=lambda p: (p[0]["Node"], p[1]["ID"]))
        return self.service_index(lname), pairs

    def connect_instances(self, name: str) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any]]]]:
        """Instances that can take Connect traffic for `name`: its sidecar proxies and native services."""
        out = []
        for members in self._by_name.values():
            for nkey, sid in members:
                svc = self._services[nkey][sid]
                if svc["Kind"] == "connect-proxy" and (svc["Proxy"] or {}).get("DestinationServiceName") == name:
                    out.append((self._nodes[nkey], svc))
                elif svc["Service"] == name and (svc["Connect"] or {}).get("Native"):
                    out.append((self._nodes[nkey], svc))
        out.sort(key=lambda p: (p[0]["Node"], p[1]["ID"]))
        return self.table_index(NODES, SERVICES, CHECKS), out

    def node_services(self, node: str) -> tuple[int, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
        nkey = node.lower()
        n = self._nodes.get(nkey)
        svcs = sorted(self._services.get(nkey, {}).values(), key=lambda s: s["ID"])
        return self.table_index(NODES, SERVICES), (n, svcs)

    def service_row(self, node: str, service_id: str) -> dict[str, Any] | None:
        return self._services.get(node.lower(), {}).get(service_id)

    def check_row(self, node: str, check_id: str) -> dict[str, Any] | None:
        return self._checks.get(node.lower(), {}).get(check_id)

    def node_checks(self, node: str) -> tuple[int, list[dict[str, Any]]]:
        checks = sorted(self._checks.get(node.lower(), {}).values(), key=lambda x: x["CheckID"])
        return self.table_index(NODES, CHECKS), checks

    def instance_checks(self, nkey: str, sid: str) -> list[dict[str, Any]]:
        """The checks that decide an instance's health: its node's checks, then its own."""
        return self._service_check_rows(nkey, "") + self._service_check_rows(nkey, sid) if sid else \
            self._service_check_rows(nkey, "")

    def service_checks(self, name: str) -> tuple[int, list[dict[str, Any]]]:
        lname = name.lower()
        out = []
        for nkey, sid in self._by_name.get(lname, {}):
            out.extend(self._service_check_rows(nkey, sid))
        out.sort(key=lambda x: (x["Node"], x["CheckID"]))
        return self.service_index(lname), out

    def nodes_with_check(self, check_id: str) -> list[str]:
        """The names of the nodes that have a check of this ID (the leader's reap looks for `serfHealth`)."""
        return sorted(checks[check_id]["Node"] for checks in self._checks.values() if check_id in checks)

    def checks_in_state(self, state: str) -> tuple[int, list[dict[str, Any]]]:
        out = [chk for checks in self._checks.values() for chk in checks.values()
               if state == "any" or chk["Status"] == state]
        out.sort(key=lambda x: (x["Node"], x["CheckID"]))
        return self.table_index(NODES, CHECKS), out

    def health_service(self, name: str, connect: bool = False
                       ) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]]]:
        """(node, service, checks) for every instance of `name` (or its Connect-capable instances)."""
        idx, pairs = self.connect_instances(name) if connect else self.service_instances(name)
        return idx, [(n, s, self.instance_checks(n["Node"].lower(), s["ID"])) for n, s in pairs]

    # ------------------------------------------------------------------ KV
    def _kv_apply(self, ch: Changes, verb: str, key: str, value: bytes | None, flags: int, cas: int,
                  session: str, now: float) -> Any:
        if verb not in ("delete-tree",) and not key:
            raise InvalidRequest("Missing key name")
        cur = self._kv.get(key)
        if verb == "set":
            self._kv_put(ch, key, value, flags, cur, session=cur["Session"] if cur else "",
                         lock_index=cur["LockIndex"] if cur else 0)
            return True
        if verb == "cas":
            if (cas == 0 and cur is not None) or (cas != 0 and (cur is None or cur["ModifyIndex"] != cas)):
                return False
            self._kv_put(ch, key, value, flags, cur, session=cur["Session"] if cur else "",
                         lock_index=cur["LockIndex"] if cur else 0)
            return True
        if verb == "lock":
            if not session:
                raise InvalidRequest("Missing session for lock acquisition")
            if session not in self._sessions:
                raise InvalidRequest(f"invalid session {q(session)}")
            if cur is not None and cur["Session"]:
                if cur["Session"] != session:
                    return False
                self._kv_put(ch, key, value, flags, cur, session=session, lock_index=cur["LockIndex"])
                return True
            if self._lock_delay.get(key, 0.0) > now:
                return False
            self._kv_put(ch, key, value, flags, cur, session=session,
                         lock_index=(cur["LockIndex"] if cur else 0) + 1)
            return True
        if verb == "unlock":
            if not session:
                raise InvalidRequest("Missing session for lock release")
            if cur is None or cur["Session"] != session:
                return False
            self._kv_put(ch, key, value, flags, cur, session="", lock_index=cur["LockIndex"])
            return True
        if verb == "delete":
            if cur is not None:
                self._kv_delete(ch, key)
            return True
        if verb == "delete-cas":
            if cur is None:
                return cas == 0
            if cur["ModifyIndex"] != cas:
                return False
            self._kv_delete(ch, key)
            return True
        if verb == "delete-tree":
            for k in self._keys_with_prefix(self._kv_sorted, key):
                self._kv_delete(ch, k)
            return True
        raise InvalidRequest(f"unknown KV verb {verb!r}")

    def _kv_put(self, ch: Changes, key: str, value: bytes | None, flags: int, cur: dict[str, Any] | None,
                session: str, lock_index: int) -> None:
        row = {
            "Key": key,
            "Flags": int(flags),
            "Value": value,
            "Session": session,
            "LockIndex": lock_index,
            "CreateIndex": cur["CreateIndex"] if cur else ch.index,
            "ModifyIndex": ch.index,
        }
        if cur is None:
            bisect.insort(self._kv_sorted, key)
            if key in self._tombstones:
                self._drop_tombstone(key)
        self._kv[key] = row
        ch.tables.add(KVS)
        ch.kv_keys.append(key)

    def _kv_delete(self, ch: Changes, key: str) -> None:
        del self._kv[key]
        i = bisect.bisect_left(self._kv_sorted, key)
        del self._kv_sorted[i]
        if key not in self._tombstones:
            bisect.insort(self._tomb_sorted, key)
        self._tombstones[key] = ch.index
        ch.tables.add(KVS)
        ch.kv_keys.append(key)

    def _drop_tombstone(self, key: str) -> None:
        del self._tombstones[key]
        i = bisect.bisect_left(self._tomb_sorted, key)
        del self._tomb_sorted[i]

    @staticmethod
    def _keys_with_prefix(sorted_keys: list[str], prefix: str) -> list[str]:
        i = bisect.bisect_left(sorted_keys, prefix)
        out = []
        while i < len(sorted_keys) and sorted_keys[i].startswith(prefix):
            out.append(sorted_keys[i])
            i += 1
        return out

    def kv_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        return self.table_index(KVS), self._kv.get(key)

    def kv_list(self, prefix: str) -> tuple[int, list[dict[str, Any]]]:
        keys = self._keys_with_prefix(self._kv_sorted, prefix)
        rows = [self._kv[k] for k in keys]
        return self._prefix_index(prefix, rows), rows

    def _prefix_index(self, prefix: str, rows: list[dict[str, Any]]) -> int:
        idx = max((r["ModifyIndex"] for r in rows), default=0)
        for k in self._keys_with_prefix(self._tomb_sorted, prefix):
            idx = max(idx, self._tombstones[k])
        return max(idx, self._kv_floor) or self.table_index(KVS)

    def kv_keys(self, prefix: str, separator: str = "") -> tuple[int, list[str]]:
        keys = self._keys_with_prefix(self._kv_sorted, prefix)
        rows = [self._kv[k] for k in keys]
        if separator:
            out: dict[str, None] = {}
            for k in keys:
                j = k.find(separator, len(prefix))
                out[k if j < 0 else k[: j + len(separator)]] = None
            keys = list(out)
        return self._prefix_index(prefix, rows), keys

    def kv_lock_delay(self, key: str) -> float:
        """The leader-clock time until which a lock on `key` cannot be acquired (0 when none)."""
        return self._lock_delay.get(key, 0.0)

    # ------------------------------------------------------------------ transactions
    def _txn(self, ch: Changes, cmd: c.Txn) -> dict[str, Any]:
        """Apply KV and catalog operations atomically: all of them, or none with the errors of the failing ones.

        KV operations run for real and are rolled back on failure (the KV tables are copied only when the
        transaction writes KV); catalog operations (ops with a "Kind" of Node, Service, Check or Session) are
        checked against an overlay first and applied only when all passed.
        """
        kv_writes = any(op.get("Kind", "KV") == "KV" and op.get("Verb") in KV_WRITE_VERBS for op in cmd.ops)
        saved = (dict(self._kv), list(self._kv_sorted), dict(self._tombstones), list(self._tomb_sorted)) \
            if kv_writes else None
        out = self._txn_ops(ch, cmd.ops, cmd.now)
        if out["Errors"] and saved is not None:
            self._kv, self._kv_sorted, self._tombstones, self._tomb_sorted = saved
        return out

    def txn_read(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """A transaction of reads only, answered from this store without the log (Consul's Txn.Read)."""
        if not all(is_read_op(op) for op in ops):
            raise InvalidRequest("a read-only transaction must contain read operations only")
        return self._txn_ops(Changes(self.last_index), ops, 0.0)

    def _txn_ops(self, ch: Changes, ops: list[dict[str, Any]], now: float) -> dict[str, Any]:
        scratch = Changes(ch.index)
        overlay = Overlay(self, ch.index)
        results: list[tuple[int, dict[str, Any]]] = []
        catalog_ops: list[tuple[int, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        for i, op in enumerate(ops):
            if "Refused" in op:  # an operation Consul's state store refuses (an unknown verb)
                errors.append({"OpIndex": i, "What": op["Refused"]})
                continue
            if op.get("Kind", "KV") != "KV":
                why = overlay.apply(op)
                if why is None:
                    catalog_ops.append((i, op))
                else:
                    errors.append({"OpIndex": i, "What": why})
                continue
            try:
                out = self._txn_op(scratch, op, now)
            except CatalogError as e:
                errors.append({"OpIndex": i, "What": str(e)})
                continue
            if out is False:
                errors.append({"OpIndex": i, "What": self._txn_failure(op)})
            elif isinstance(out, list):
                results.extend((i, {"KV": r}) for r in out)
            elif isinstance(out, dict):
                results.append((i, {"KV": out}))
        if errors:
            return {"Results": None, "Errors": errors}
        ch.tables |= scratch.tables
        ch.kv_keys.extend(scratch.kv_keys)
        for i, op in catalog_ops:
            row = self._txn_catalog_op(ch, op, now)
            if row is not None:
                results.append((i, {op["Kind"]: row}))
        results.sort(key=lambda r: r[0])  # stable: an op's several results keep their order
        return {"Results": [r for _, r in results], "Errors": None}

    def _txn_catalog_op(self, ch: Changes, op: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Apply one checked Node/Service/Check operation; the row it leaves (None for deletes)."""
        kind, verb = op["Kind"], op["Verb"]
        if kind == "Session":
            if op["Session"]["ID"] in self._sessions:  # gone already when its node was deleted earlier in the txn
                self._session_delete(ch, op["Session"]["ID"], now)
            return None
        if kind == "Node":
            name = op["Node"]["Node"]
            if verb in ("set", "cas"):
                self._register(ch, c.Register(node=op["Node"], now=now))
            elif verb != "get":
                self._deregister(ch, c.Deregister(node=name, now=now))
                return None
            return self._nodes[name.lower()]
        nkey = op["Node"].lower()
        if kind == "Service":
            sid = op["Service"].get("ID") or op["Service"]["Service"]
            if verb in ("set", "cas"):
                self._register(ch, c.Register(node={"Node": op["Node"]}, service=op["Service"], skip_node_update=True,
                                              now=now))
            elif verb != "get":
                if nkey in self._nodes:
                    self._delete_service(ch, nkey, sid, now)
                return None
            return self._services[nkey][sid]
        cid = op["Check"].get("CheckID") or op["Check"]["Name"]
        if verb in ("set", "cas"):
            self._register(ch, c.Register(node={"Node": op["Node"]}, checks=[op["Check"]], skip_node_update=True,
                                          now=now))
        elif verb != "get":
            if nkey in self._nodes:
                self._delete_check(ch, nkey, cid, now)
            return None
        return self._checks[nkey][cid]

    @staticmethod
    def _txn_failure(op: dict[str, Any]) -> str:
        """Consul's text for a KV operation that did not take (its state/txn.go messages)."""
        verb, key = op.get("Verb"), q(op.get("Key"))
        return {"cas": f"failed to set key {key}, index is stale",
                "delete-cas": f"failed to delete key {key}, index is stale",
                "lock": f"failed to lock key {key}, lock is already held",
                "unlock": f"failed to unlock key {key}, lock isn't held, or is held by another session",
                }.get(verb, f"key {key} failed {verb}")

    def _txn_op(self, ch: Changes, op: dict[str, Any], now: float) -> Any:
        verb = op.get("Verb", "")
        key = op.get("Key", "")
        cur = self._kv.get(key)
        if verb in ("set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"):
            ok = self._kv_apply(ch, verb, key, op.get("Value"), int(op.get("Flags") or 0),
                                int(op.get("Index") or 0), op.get("Session") or "", now)
            if not ok:
                return False
            if verb in ("set", "cas", "lock", "unlock"):
                row = dict(self._kv[key])
                row["Value"] = None  # Consul returns writes without their values
                return row
            return None
        if verb in ("get", "get-or-empty"):
            if cur is None and verb == "get":
                raise NotFound(f"key {q(key)} doesn't exist")
            return cur if cur is not None else {"Key": key, "Value": None, "Flags": int(op.get("Flags") or 0),
                                                "Session": "", "LockIndex": 0, "CreateIndex": 0, "ModifyIndex": 0}
        if verb == "get-tree":
            return [self._kv[k] for k in self._keys_with_prefix(self._kv_sorted, key)]
        if verb == "check-index":
            if cur is None:
                raise NotFound(f"failed to check index, key {q(key)} doesn't exist")
            want = int(op.get("Index") or 0)
            if cur["ModifyIndex"] != want:
                raise Conflict(f"failed index check for key {q(key)}, current modify index {cur['ModifyIndex']} "
                               f"!= {want}")
            return cur
        if verb == "check-session":
            if cur is None:
                raise NotFound(f"failed to check session, key {q(key)} doesn't exist")
            if cur["Session"] != (op.get("Session") or ""):
                raise Conflict(f"failed session check for key {q(key)}, current session {q(cur['Session'])} != "
                               f"{q(op.get('Session') or '')}")
            return cur
        if verb == "check-not-exists":
            if cur is not None:
                raise Conflict(f"key {q(key)} exists")
            return None
        raise InvalidRequest(f"unknown KV verb {q(verb)}")

    # ------------------------------------------------------------------ sessions
    def _session_create(self, ch: Changes, cmd: c.SessionCreate) -> str:
        s = cmd.session
        sid = s.get("ID")
        if not sid:
            raise InvalidRequest("Must provide session ID")
        if sid in self._sessions:
            raise Conflict(f"session ID {sid!r} already exists")
        node = s.get("Node") or ""
        nkey = node.lower()
        if nkey not in self._nodes:
            raise InvalidRequest(f"Missing node registration: no node {node!r}")
        behavior = s.get("Behavior") or "release"
        if behavior not in ("release", "delete"):
            raise InvalidRequest(f"Invalid Behavior setting {behavior!r}: must be 'release' or 'delete'")
        node_checks = list(s.get("NodeChecks") or [])
        checks = s.get("Checks")
        if checks is None and not node_checks and not s.get("ServiceChecks"):
            checks = ["serfHealth"]
        all_checks = list(checks or []) + node_checks + [sc.get("ID") for sc in (s.get("ServiceChecks") or [])]
        for cid in all_checks:
            chk = self._checks.get(nkey, {}).get(cid)
            if chk is None:
                raise InvalidRequest(f"Missing check {cid!r} registration")
            if chk["Status"] == CRITICAL:
                raise InvalidRequest(f"Check {cid!r} is in critical state")
        row = {
            "ID": sid,
            "Name": s.get("Name") or "",
            "Node": self._nodes[nkey]["Node"],
            "LockDelay": int(s.get("LockDelay", 15_000_000_000)),
            "Behavior": behavior,
            "TTL": s.get("TTL") or "",
            "NodeChecks": node_checks if node_checks else list(checks or []),
            "ServiceChecks": list(s.get("ServiceChecks") or []) or None,
            "Checks": list(checks or []) + node_checks,
            "Namespace": "default",
            "CreateIndex": ch.index,
            "ModifyIndex": ch.index,
        }
        self._sessions[sid] = row
        ch.tables.add(SESSIONS)
        return sid

    def _session_check_ids(self, sess: dict[str, Any]) -> set[str]:
        ids = set(sess.get("Checks") or []) | set(sess.get("NodeChecks") or [])
        ids |= {sc.get("ID") for sc in (sess.get("ServiceChecks") or [])}
        return ids

    def _invalidate_sessions_for_check(self, ch: Changes, nkey: str, check_id: str, now: float) -> None:
        doomed = [s["ID"] for s in self._sessions.values()
                  if s["Node"].lower() == nkey and check_id in self._session_check_ids(s)]
        for sid in doomed:
            self._session_delete(ch, sid, now)

    def _session_delete(self, ch: Changes, sid: str, now: float) -> None:
        sess = self._sessions.pop(sid)
        ch.tables.add(SESSIONS)
        self._fail_session_checks(ch, sess)
        queries = self._tables[PREPARED_QUERIES]
        for qid in [qid for qid, row in queries.items() if row.get("Session") == sid]:
            del queries[qid]  # Consul: a query bound to a session goes when the session does
            ch.tables.add(PREPARED_QUERIES)
        delay_s = sess.get("LockDelay", 0) / 1e9
        for key in [k for k, row in self._kv.items() if row["Session"] == sid]:
            if delay_s > 0:
                self._lock_delay[key] = now + delay_s
            if sess["Behavior"] == "delete":
                self._kv_delete(ch, key)
            else:
                row = dict(self._kv[key])
                row["Session"] = ""
                row["ModifyIndex"] = ch.index
                self._kv[key] = row
                ch.tables.add(KVS)
                ch.kv_keys.append(key)

    def _fail_session_checks(self, ch: Changes, sess: dict[str, Any]) -> None:
        """Checks of Type "session" on the session's node turn critical when their session ends.

        A Proconsul extension: a process that registers into the catalog directly (k8s-sync's synthetic node)
        ties its liveness check to a TTL session, so its entries turn critical once it stops renewing
        (session renewals are not Raft writes), instead of living on forever.
        """
        nkey = sess["Node"].lower()
        node_checks = self._checks.get(nkey, {})
        for cid, chk in list(node_checks.items()):
            if chk.get("Type") == "session" and (chk.get("Definition") or {}).get("SessionID") == sess["ID"] \
                    and chk["Status"] != CRITICAL:
                node_checks[cid] = dict(chk, Status=CRITICAL, ModifyIndex=ch.index, Output=(
                    f"Session {sess['ID']} ended: its holder stopped renewing it or destroyed it"))
                ch.tables.add(CHECKS)
                self._touch_check_services(ch, nkey, chk.get("ServiceID") or "")

    def session_get(self, sid: str) -> tuple[int, dict[str, Any] | None]:
        return self.table_index(SESSIONS), self._sessions.get(sid)

    def session_list(self) -> tuple[int, list[dict[str, Any]]]:
        return self.table_index(SESSIONS), sorted(self._sessions.values(), key=lambda s: s["CreateIndex"])

    def node_sessions(self, node: str) -> tuple[int, list[dict[str, Any]]]:
        nkey = node.lower()
        idx, rows = self.session_list()
        return idx, [s for s in rows if s["Node"].lower() == nkey]

    # ------------------------------------------------------------------ simple keyed tables
    def _table(self, name: str) -> dict[str, dict[str, Any]]:
        table = self._tables.get(name)
        if table is None:
            raise InvalidRequest(f"unknown table {name!r}")
        return table

    def _table_set(self, ch: Changes, cmd: c.TableSet) -> bool:
        table = self._table(cmd.table)
        cur = table.get(cmd.key)
        if cmd.cas is not None:
            if (cmd.cas == 0 and cur is not None) or (cmd.cas != 0 and (cur is None or cur["ModifyIndex"] != cmd.cas)):
                return False
        if cmd.table == PREPARED_QUERIES:
            prepared_query.check_unique(table, cmd.key, cmd.row, lambda sid: sid in self._sessions)
        if cmd.table == COORDINATES and cmd.key not in self._nodes:
            return True  # as Consul: a coordinate for a node the catalog does not have is dropped
        check = self._table_checks.get(cmd.table)
        if check is not None and cmd.validate:
            check(table, cmd.key, cmd.row)
        row = dict(cmd.row)
        row["CreateIndex"] = cur["CreateIndex"] if cur else ch.index
        row["ModifyIndex"] = ch.index
        table[cmd.key] = row
        ch.tables.add(cmd.table)
        return True

    def _table_delete(self, ch: Changes, cmd: c.TableDelete) -> bool:
        table = self._table(cmd.table)
        cur = table.get(cmd.key)
        if cur is None:
            return cmd.cas in (None, 0)
        if cmd.cas is not None and cur["ModifyIndex"] != cmd.cas:
            return False
        check = self._table_checks.get(cmd.table)
        if check is not None and cmd.validate:
            check(table, cmd.key, None)
        del table[cmd.key]
        ch.tables.add(cmd.table)
        return True

    def table_get(self, name: str, key: str) -> tuple[int, dict[str, Any] | None]:
        return self.table_index(name), self._table(name).get(key)

    def table_list(self, name: str) -> tuple[int, list[dict[str, Any]]]:
        return self.table_index(name), list(self._table(name).values())

    # ------------------------------------------------------------------ snapshot / restore
    def snapshot(self) -> bytes:
        """Every table and index as msgpack bytes; `restore` of them gives the same answers."""
        state = {
            "v": SNAPSHOT_VERSION,
            "datacenter": self.datacenter,
            "last_index": self.last_index,
            "index": self._index,
            "service_index": self._service_index,
            "nodes": list(self._nodes.values()),
            "services": {n: list(s.values()) for n, s in self._services.items()},
            "checks": {n: list(cs.values()) for n, cs in self._checks.items()},
            "kv": list(self._kv.values()),
            "tombstones": self._tombstones,
            "sessions": list(self._sessions.values()),
            "lock_delay": self._lock_delay,
            "kv_floor": self._kv_floor,
            "tables": self._tables,
        }
        return msgpack.packb(state, use_bin_type=True)

    def _restore_at(self, data: bytes, ch: Changes) -> None:
        """An operator restore through the log: the snapshot's state, every table changed at this index
        (so blocking queries wake and indexes never go backwards)."""
        listeners = self._listeners
        self._listeners = []
        try:
            self.restore(data)
        finally:
            self._listeners = listeners
        ch.tables |= {NODES, SERVICES, CHECKS, KVS, SESSIONS, *SIMPLE_TABLES}
        ch.services |= set(self._by_name)
        ch.kv_keys.extend(self._kv_sorted)
        self._kv_floor = ch.index
        self._lock_delay.clear()

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot; listeners hear that every table changed."""
        try:
            state = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(state, dict) or state.get("v") != SNAPSHOT_VERSION:
                raise ValueError("not a catalog snapshot of a known version")
        except Exception as e:
            raise InvalidRequest(f"cannot restore snapshot: {e}") from None
        self._reset()
        self.datacenter = state["datacenter"]
        self.last_index = state["last_index"]
        self._index = dict(state["index"])
        self._service_index = dict(state["service_index"])
        for n in state["nodes"]:
            self._nodes[n["Node"].lower()] = n
        for nkey, svcs in state["services"].items():
            self._services[nkey] = {s["ID"]: s for s in svcs}
            for s in svcs:
                self._by_name.setdefault(s["Service"].lower(), {})[(nkey, s["ID"])] = None
        for nkey, checks in state["checks"].items():
            self._checks[nkey] = {x["CheckID"]: x for x in checks}
            for x in checks:
                self._check_index.setdefault(nkey, {}).setdefault(x["ServiceID"], {})[x["CheckID"]] = None
        for row in state["kv"]:
            self._kv[row["Key"]] = row
        self._kv_sorted = sorted(self._kv)
        self._tombstones = dict(state["tombstones"])
        self._tomb_sorted = sorted(self._tombstones)
        for s in state["sessions"]:
            self._sessions[s["ID"]] = s
        self._lock_delay = dict(state["lock_delay"])
        self._kv_floor = state.get("kv_floor", 0)
        for t in SIMPLE_TABLES:
            self._tables[t] = dict(state["tables"].get(t, {}))
        ch = Changes(self.last_index, tables={NODES, SERVICES, CHECKS, KVS, SESSIONS, *SIMPLE_TABLES},
                     services=set(self._by_name))
        for listener in list(self._listeners):
            listener(ch)
