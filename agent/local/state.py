"""The agent's local state: the services and checks registered with this agent, and anti-entropy.

The agent owns these. Every change is pushed to the catalog at once; a periodic full sync repairs
drift both ways (re-registers what is missing or different, removes what the catalog holds for this
node that the agent does not own). An output-only check change is written at most once per
`check_update_interval`, as Consul does, to spare the servers.

Persistence (outside dev mode, `persist.py`) follows Consul's layout idea — one small file per entry, so a write
costs the same with ten services or ten thousand: under `<data_dir>/local/`, `services/<h>.json`
and `checks/<h>.json` (written atomically and fsynced at registration, removed at
deregistration) and `check-state/<h>.json` (a check's last status and output: written on every
status change and every TTL update; a TTL check's saved state is used only while its TTL has not
run out, as Consul's check state files). `<h>` is a hash of the ID, which may hold any character.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proconsul.agent.local.persist import EntryFiles
from proconsul.agent.local.stopping import until_stopped
from proconsul.catalog import commands as c
from proconsul.catalog.store import CRITICAL, PASSING, WARNING

log = logging.getLogger("proconsul.local")

NODE_MAINT_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
SERF_CHECK_ID = "serfHealth"
MAINTENANCE = "maintenance"
CONSUL_SERVICE_ID = "consul"
MIN_REAP_AFTER = 60.0  # Consul's floor for deregister_critical_service_after
REAP_INTERVAL = 30.0  # how often the agent looks for services to reap (Consul's period)
DEFAULT_NODE_MAINT_REASON = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
DEFAULT_SERVICE_MAINT_REASON = ("Maintenance mode is enabled for this service, but no reason was provided. "
                                "This is a default message.")


def ae_scale(interval: float, nodes: int) -> float:
    """Consul's aeScale: the full-sync period grows with the log of the cluster size past 128 nodes."""
    threshold = 128
    if nodes <= threshold:
        return interval
    return interval * (math.ceil(math.log2(nodes) - math.log2(threshold)) + 1)


Applier = Callable[[c.Command], Awaitable[Any]]
# Reads this node's catalog entry: (node row or None, its services, its checks).
NodeReader = Callable[[], Awaitable[tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]]]


@dataclass
class _Entry:
    row: dict[str, Any]
    definition: dict[str, Any] = field(default_factory=dict)
    in_sync: bool = False
    deferred_until: float = 0.0  # output-only changes wait until this time (monotonic)
    persist: bool = True
    critical_since: float | None = None  # monotonic time the check last turned critical


def service_row(defn: dict[str, Any], datacenter: str) -> dict[str, Any]:
    """Consul's AgentService shape for a normalized service definition."""
    return {
        "ID": defn["ID"],
        "Service": defn["Name"],
        "Tags": list(defn.get("Tags") or []),
        "Meta": dict(defn.get("Meta") or {}),
        "Port": int(defn.get("Port") or 0),
        "Address": defn.get("Address") or "",
        "TaggedAddresses": defn.get("TaggedAddresses") or {},
        "Weights": defn.get("Weights") or {"Passing": 1, "Warning": 1},
        "EnableTagOverride": bool(defn.get("EnableTagOverride", False)),
        "Kind": defn.get("Kind") or "",
        "Proxy": defn.get("Proxy") or {},
        # A SidecarService is expanded into its own registration; the parent keeps the rest (Native).
        "Connect": {k: v for k, v in (defn.get("Connect") or {}).items() if k != "SidecarService"},
        "SocketPath": defn.get("SocketPath") or "",
        "Datacenter": datacenter,
    }


class LocalState:
    def __init__(self, node: dict[str, Any], apply: Applier, read_node: NodeReader, *,
                 check_update_interval: float = 300.0, sync_interval: float = 60.0,
                 data_dir: str | None = None, rng: random.Random | None = None,
                 cluster_size: Callable[[], int] = lambda: 1) -> None:
        self.node = node  # {"ID", "Node", "Address", "TaggedAddresses", "Meta", "Datacenter"}
        self._apply = apply
        self._read_node = read_node
        self.check_update_interval = check_update_interval
        self.sync_interval = sync_interval
        self._services: dict[str, _Entry] = {}
        self._checks: dict[str, _Entry] = {}
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # replaced after each change: waiters see every change once
        self._rng = rng or random.Random()
        self._cluster_size = cluster_size
        self._files = EntryFiles(data_dir)
        self.migrated = False
        self.synced = asyncio.Event()  # set after every completed sync round (tests wait on it)
        self.sync_rounds = 0

    # ------------------------------------------------------------------ reads
    def services(self) -> dict[str, dict[str, Any]]:
        return {sid: e.row for sid, e in self._services.items()}

    def service(self, sid: str) -> dict[str, Any] | None:
        e = self._services.get(sid)
        return e.row if e else None

    def checks(self) -> dict[str, dict[str, Any]]:
        return {cid: e.row for cid, e in self._checks.items()}

    def check(self, cid: str) -> dict[str, Any] | None:
        e = self._checks.get(cid)
        return e.row if e else None

    def check_definition(self, cid: str) -> dict[str, Any] | None:
        e = self._checks.get(cid)
        return e.definition if e else None

    def service_checks(self, sid: str) -> list[dict[str, Any]]:
        return [e.row for e in self._checks.values() if e.row["ServiceID"] == sid]

    def node_checks(self) -> list[dict[str, Any]]:
        return [e.row for e in self._checks.values() if not e.row["ServiceID"]]

    def services_to_reap(self, now: float) -> list[str]:
        """Services with a check critical for longer than its DeregisterCriticalServiceAfter."""
        out = []
        for e in self._checks.values():
            after = e.definition.get("DeregisterAfterSeconds")
            sid = e.row["ServiceID"]
            if after and sid and e.critical_since is not None and now - e.critical_since >= max(after, MIN_REAP_AFTER):
                out.append(sid)
        return sorted(set(out))

    def service_health(self, sid: str) -> tuple[int, str, list[dict[str, Any]]]:
        """Consul's agentHealthService: (HTTP code, aggregated status, checks) over the service's checks
        and the node's; maintenance outranks everything (503), then critical (503), warning (429)."""
        checks = self.service_checks(sid) + self.node_checks()
        status = aggregated_status(checks)
        return HEALTH_CODES[status], status, [_api_check(x) for x in checks]

    def in_maintenance(self) -> bool:
        return NODE_MAINT_ID in self._checks

    # ------------------------------------------------------------------ writes
    def add_service(self, row: dict[str, Any], *, persist: bool = True, write: bool = True) -> None:
        self._services[row["ID"]] = _Entry(row, persist=persist)
        # Service checks carry the service's name and tags.
        for e in self._checks.values():
            if e.row["ServiceID"] == row["ID"]:
                e.row["ServiceName"], e.row["ServiceTags"] = row["Service"], list(row["Tags"])
                e.in_sync = False
        if persist and write:
            self._files.write("services", row["ID"], row, durable=True)
        self._mark_dirty()

    def remove_service(self, sid: str) -> bool:
        if self._services.pop(sid, None) is None:
            return False
        for cid in [cid for cid, e in self._checks.items() if e.row["ServiceID"] == sid]:
            self.remove_check(cid)
        self._files.unlink("services", sid)
        self._mark_dirty()
        return True

    def add_check(self, row: dict[str, Any], definition: dict[str, Any], *, persist: bool = True,
                  write: bool = True) -> None:
        sid = row.get("ServiceID") or ""
        if sid:
            svc = self._services.get(sid)
            if svc is None:
                raise KeyError(sid)
            row["ServiceName"], row["ServiceTags"] = svc.row["Service"], list(svc.row["Tags"])
        prev = self._checks.get(row["CheckID"])
        if prev is not None and definition.get("Status") is None:
            row["Status"], row["Output"] = prev.row["Status"], prev.row["Output"]  # re-register keeps status
        entry = _Entry(row, definition, persist=persist)
        if row["Status"] == CRITICAL:
            entry.critical_since = prev.critical_since if prev and prev.critical_since else time.monotonic()
        self._checks[row["CheckID"]] = entry
        if persist and write:
            self._files.write("checks", row["CheckID"], {"row": row, "definition": definition}, durable=True)
            self._save_state(entry)
        self._mark_dirty()

    def remove_check(self, cid: str) -> bool:
        e = self._checks.pop(cid, None)
        if e is None:
            return False
        if e.persist:
            self._files.unlink("checks", cid)
            self._files.unlink("check-state", cid)
        self._mark_dirty()
        return True

    def update_check(self, cid: str, status: str, output: str, *, ttl_update: bool = False) -> bool:
        """Record a check result; True if the check changed. A status change syncs at once; an
        output-only change waits up to `check_update_interval` (Consul's deferred check sync)."""
        e = self._checks.get(cid)
        if e is None:
            return False
        if e.row["Status"] == status and e.row["Output"] == output:
            if ttl_update and e.persist:
                self._save_state(e)  # a TTL update moves the saved expiry on
            return False
        status_changed = e.row["Status"] != status
        e.row["Status"], e.row["Output"] = status, output
        self._notify()
        if status_changed:
            e.critical_since = time.monotonic() if status == CRITICAL else None
        if e.persist and (status_changed or ttl_update):
            self._save_state(e)  # a restart resumes from the last status
        if status_changed or self.check_update_interval <= 0:
            e.deferred_until = 0.0
            e.in_sync = False
            self._wake.set()
        elif e.in_sync:
            # Output only: leave the catalog copy for d/2 + rand(d), as Consul's DeferCheck.
            e.in_sync = False
            d = self.check_update_interval
            e.deferred_until = time.monotonic() + d / 2 + self._rng.random() * d
            self._wake.set()
        return True

    def set_service_maintenance(self, sid: str, enable: bool, reason: str = "") -> bool:
        if sid not in self._services:
            return False
        cid = SERVICE_MAINT_PREFIX + sid
        if enable:
            if cid not in self._checks:
                self.add_check(_maint_check(self.node["Node"], cid, "Service Maintenance Mode",
                                            reason or DEFAULT_SERVICE_MAINT_REASON, sid), {"Kind": "maintenance"})
        else:
            self.remove_check(cid)
        return True

    def set_node_maintenance(self, enable: bool, reason: str = "") -> None:
        if enable:
            if NODE_MAINT_ID not in self._checks:
                self.add_check(_maint_check(self.node["Node"], NODE_MAINT_ID, "Node Maintenance Mode",
                                            reason or DEFAULT_NODE_MAINT_REASON, ""), {"Kind": "maintenance"})
        else:
            self.remove_check(NODE_MAINT_ID)

    def _mark_dirty(self) -> None:
        # Cheap and always correct: the next round compares everything with the catalog.
        self._full_next = True
        self._wake.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> bool:
        """Wait until a service or check changes (registration, status, output); False on timeout."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ persistence
    def _save_state(self, e: _Entry) -> None:
        state: dict[str, Any] = {"CheckID": e.row["CheckID"], "Status": e.row["Status"], "Output": e.row["Output"]}
        ttl = e.definition.get("TTLSeconds")
        if ttl:
            state["Expires"] = time.time() + float(ttl)
        self._files.write("check-state", e.row["CheckID"], state, durable=False)

    def save(self) -> None:
        """Write every persisted entry again (the per-entry files are normally written as they change)."""
        for e in self._services.values():
            if e.persist:
                self._files.write("services", e.row["ID"], e.row, durable=True)
        for e in self._checks.values():
            if e.persist:
                self._files.write("checks", e.row["CheckID"], {"row": e.row, "definition": e.definition}, durable=True)
                self._save_state(e)

    def load(self) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, Any]]]]:
        """Services and (check row, definition) pairs saved by an earlier run of this agent, each check
        with its last saved status (a TTL check's only while its TTL has not run out)."""
        if not self._files.enabled:
            return [], []
        services = [d for d in self._files.read_dir("services") if isinstance(d, dict) and d.get("ID")]
        checks = [(d["row"], d["definition"]) for d in self._files.read_dir("checks")
                  if isinstance(d, dict) and isinstance(d.get("row"), dict) and isinstance(d.get("definition"), dict)]
        legacy_services, legacy_checks = self._files.load_legacy()
        self.migrated = bool(legacy_services or legacy_checks)  # the caller saves them in the new layout
        services += legacy_services
        checks += legacy_checks
        states = {d.get("CheckID"): d for d in self._files.read_dir("check-state") if isinstance(d, dict)}
        now = time.time()
        for row, _defn in checks:
            st = states.get(row.get("CheckID"))
            if st is None or st.get("Status") not in ("passing", "warning", "critical"):
                continue
            if "Expires" in st and float(st["Expires"]) < now:
                continue  # the TTL ran out while the agent was down: start from the initial status
            row["Status"], row["Output"] = st["Status"], st.get("Output", "")
        return services, checks

    # ------------------------------------------------------------------ anti-entropy
    async def run(self, stop: asyncio.Event) -> None:
        """Sync at once on every change and fully every `sync_interval` (jittered), until `stop`."""
        self._full_next = True
        next_full = 0.0
        while not stop.is_set():
            # Clear before syncing: a change made while a sync awaits the servers must wake the next round.
            self._wake.clear()
            now = time.monotonic()
            full = self._full_next or now >= next_full
            try:
                if full:
                    self._full_next = False
                    done = await until_stopped(self.sync_full(), stop)
                    if done is None:
                        return
                    done.result()
                    # Consul: interval + a random stagger of up to interval × the cluster-size factor
                    period = ae_scale(self.sync_interval, self._cluster_size())
                    next_full = time.monotonic() + self.sync_interval + self._rng.random() * period
                else:
                    done = await until_stopped(self.sync_changes(), stop)
                    if done is None:
                        return
                    done.result()
            except Exception as e:  # the servers may be unreachable: retry soon, never die
                log.warning("anti-entropy sync failed, retrying: %s", e)
                self._full_next = True
                await _wait_or_stop(stop, 1.0 + self._rng.random())
                continue
            self.sync_rounds += 1
            self.synced.set()
            deferred = [e.deferred_until for e in self._checks.values() if not e.in_sync and e.deferred_until]
            timeout = max(0.0, min([next_full, *deferred]) - time.monotonic())
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()

    async def sync_full(self) -> None:
        """Compare everything with the catalog and repair both ways."""
        remote_node, remote_services, remote_checks = await self._read_node()
        remote_svc = {s["ID"]: s for s in remote_services}
        remote_chk = {x["CheckID"]: x for x in remote_checks}
        if remote_node is None or any(remote_node.get(k) != v for k, v in self._node_body().items()):
            await self._apply(c.Register(node=self._node_body()))
        for sid in remote_svc:
            if sid not in self._services and sid != CONSUL_SERVICE_ID:
                log.info("anti-entropy: removing service %s from the catalog: this agent does not own it", sid)
                await self._apply(c.Deregister(node=self.node["Node"], service_id=sid))
        for cid in remote_chk:
            if cid not in self._checks and cid != SERF_CHECK_ID:
                log.info("anti-entropy: removing check %s from the catalog: this agent does not own it", cid)
                await self._apply(c.Deregister(node=self.node["Node"], check_id=cid))
        for sid, e in self._services.items():
            e.in_sync = sid in remote_svc and _service_matches(e.row, remote_svc[sid])
        now = time.monotonic()
        for cid, e in self._checks.items():
            remote = remote_chk.get(cid)
            if remote is not None and e.deferred_until > now and remote["Status"] == e.row["Status"]:
                continue  # output-only change still inside check_update_interval
            e.in_sync = remote is not None and _check_matches(e.row, remote)
        await self.sync_changes(force_deferred=False)

    async def sync_changes(self, force_deferred: bool = False) -> None:
        """Push services and checks that are out of sync."""
        now = time.monotonic()
        for sid, e in list(self._services.items()):
            if e.in_sync:
                continue
            checks = [ce for ce in self._checks.values() if ce.row["ServiceID"] == sid]
            await self._apply(c.Register(node=self._node_body(), service=e.row,
                                         checks=[ce.row for ce in checks], skip_node_update=True))
            log.info("synced service %s", sid)  # Consul's "Synced service" line
            e.in_sync = True
            for ce in checks:
                ce.in_sync, ce.deferred_until = True, 0.0
        for e in list(self._checks.values()):
            if e.in_sync or (e.deferred_until > now and not force_deferred):
                continue
            sid = e.row["ServiceID"]
            if sid and (sid not in self._services or not self._services[sid].in_sync):
                continue  # pushed with its service (registered while this round ran: the next round)
            await self._apply(c.Register(node=self._node_body(), checks=[e.row], skip_node_update=True))
            e.in_sync, e.deferred_until = True, 0.0

    def _node_body(self) -> dict[str, Any]:
        return dict(self.node)


HEALTH_CODES = {PASSING: 200, WARNING: 429, CRITICAL: 503, MAINTENANCE: 503}


def aggregated_status(checks: list[dict[str, Any]]) -> str:
    """Consul's api.HealthChecks.AggregatedStatus: maintenance, else the worst status (passing if none)."""
    seen = set()
    for chk in checks:
        cid = chk["CheckID"]
        if cid == NODE_MAINT_ID or cid.startswith(SERVICE_MAINT_PREFIX):
            return MAINTENANCE
        seen.add(chk["Status"])
    for status in (CRITICAL, WARNING):
        if status in seen:
            return status
    return PASSING


def _api_check(row: dict[str, Any]) -> dict[str, Any]:
    """A check as Consul's api.HealthCheck in the agent health endpoints."""
    keys = ("Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags",
            "Type", "Interval", "Timeout", "ExposedPort", "Definition", "CreateIndex", "ModifyIndex")
    return {k: row.get(k) for k in keys}


def _maint_check(node: str, cid: str, name: str, notes: str, sid: str) -> dict[str, Any]:
    return {"Node": node, "CheckID": cid, "Name": name, "Status": CRITICAL, "Notes": notes, "Output": "",
            "ServiceID": sid, "ServiceName": "", "ServiceTags": [], "Type": "maintenance", "Interval": "",
            "Timeout": "", "ExposedPort": 0, "Definition": {}, "CreateIndex": 0, "ModifyIndex": 0}


_SERVICE_COMPARE = ("Service", "Tags", "Meta", "Port", "Address", "TaggedAddresses", "Weights",
                    "EnableTagOverride", "Kind", "Proxy", "Connect")
_CHECK_COMPARE = ("Name", "Status", "Notes", "Output", "ServiceID", "Type")


def _service_matches(local: dict[str, Any], remote: dict[str, Any]) -> bool:
    return all(local.get(k) == remote.get(k) for k in _SERVICE_COMPARE)


def _check_matches(local: dict[str, Any], remote: dict[str, Any]) -> bool:
    return all(local.get(k) == remote.get(k) for k in _CHECK_COMPARE)


async def _wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


__all__ = ["LocalState", "service_row", "PASSING", "CRITICAL"]
