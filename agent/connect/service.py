"""Connect in the agent: the CA's replicated state, leaf certificates, authorize, and intentions.

CA state lives in the replicated tables (`ca_config` row "config", `ca_roots` one row per root,
with the signing key kept out of API answers). The leader creates the first root; a configuration
change with a new key (or key size) rotates to a new root that the old one cross-signs. Intentions
are stored as `service-intentions` config entries (as Consul ≥ 1.9 does) and served through both
the legacy `/v1/connect/intentions` API and `/v1/config`. Decisions are the pure functions of
`proconsul.connect.intentions`, over an index rebuilt only when the config entries change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
import uuid
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proconsul.agent.api.body import fold_keys, json_body, want_dict
from proconsul.agent.api.errors import BadRequest, HTTPError, NotFoundHTTP
from proconsul.agent.api.params import blocking_params, check_common, uint_param
from proconsul.agent.api.responses import consul_headers, dumps, json_response
from proconsul.agent.config.duration import DurationError, parse_duration
from proconsul.catalog import commands as c
from proconsul.catalog.store import Changes
from proconsul.connect import ca
from proconsul.connect import intentions as ixns
from proconsul.connect.errors import InvalidCAConfig, InvalidIntention
from proconsul.connect.spiffe import ServiceID, trust_domain_for

log = logging.getLogger("proconsul.connect")
routes = web.RouteTableDef()
ENTRY_PREFIX = "service-intentions/"
DECISION_CACHE = 8192
DECISION_TABLES = frozenset({"config_entries", "ca_config"})  # intentions; the trust domain
JSON_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial() -> int:
    return secrets.randbits(63) | 1


def _iso(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(t if t is not None else time.time(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Connect:
    """Connect's state for one agent: CA views, the leaf cache and the intention index."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.store = agent.store
        self._ixn_cache: tuple[int, list[dict[str, Any]]] | None = None
        self._leaves: dict[str, dict[str, Any]] = {}
        self._leaf_changed: dict[str, asyncio.Event] = {}
        self._leaf_index = 0
        # (target, client URI) -> encoded decision, and request bytes -> decision; both dropped by the
        # store's change notification when intentions or the CA (its trust domain) change, so a hit
        # costs one dict lookup and can never be stale.
        self._decisions: dict[tuple[str, str], bytes] = {}
        self._raw_decisions: dict[bytes, bytes] = {}
        self.store.subscribe(self._on_store_change)

    def _on_store_change(self, changes: Changes) -> None:
        if not changes.tables.isdisjoint(DECISION_TABLES):
            self._decisions, self._raw_decisions = {}, {}

    # ------------------------------------------------------------------ CA state
    def config(self) -> dict[str, Any] | None:
        return self.store.table_get("ca_config", "config")[1]

    def roots(self) -> tuple[int, list[dict[str, Any]]]:
        idx, rows = self.store.table_list("ca_roots")
        return idx, sorted(rows, key=lambda r: r["CreateIndex"])

    def active_root(self) -> ca.Root:
        _, rows = self.roots()
        for r in rows:
            if r["Active"]:
                return ca.Root({k: v for k, v in r.items() if k != "SigningKey"}, r["SigningKey"])
        raise HTTPError("the CA has no active root yet", 500)

    @property
    def trust_domain(self) -> str:
        cfg = self.config()
        return cfg["TrustDomain"] if cfg else ""

    def roots_body(self) -> tuple[int, dict[str, Any]]:
        idx, rows = self.roots()
        public = [{k: v for k, v in r.items() if k != "SigningKey"} for r in rows]
        active = next((r["ID"] for r in rows if r["Active"]), "")
        return idx, {"ActiveRootID": active, "TrustDomain": self.trust_domain, "Roots": public}

    def leaf_ttl(self) -> float:
        cfg = self.config() or {}
        raw = (cfg.get("Config") or {}).get("LeafCertTTL") or "72h"
        return parse_duration(raw) if isinstance(raw, str) else float(raw)

    async def bootstrap(self) -> None:
        """On the leader: create the cluster's first root if there is none (idempotent)."""
        if self.config() is not None:
            return
        cluster_id = str(uuid.uuid4())
        td = trust_domain_for(cluster_id)
        root = ca.generate_root(td, _now(), _serial())
        settings = dict(self.agent.config.connect_ca_config or {})
        config = {"Provider": "consul", "ClusterID": cluster_id, "TrustDomain": td,
                  "Config": {"LeafCertTTL": settings.get("leaf_cert_ttl", "72h"), "RotationPeriod": "2160h",
                             "IntermediateCertTTL": "8760h", "PrivateKeyType": "ec", "PrivateKeyBits": 256},
                  "State": None, "ForceWithoutCrossSigning": False}
        await self.agent.backend.apply(c.Batch(commands=[
            c.TableSet(table="ca_config", key="config", row=config, cas=0),
            c.TableSet(table="ca_roots", key=root.row["ID"], row=dict(root.row, SigningKey=root.key_pem))]))
        log.info("Connect CA initialised: trust domain %s, root %s", td, root.row["ID"])

    async def set_config(self, body: dict[str, Any]) -> None:
        """PUT /v1/connect/ca/configuration: update settings, rotating the root when the key changes."""
        cur = self.config()
        if cur is None:
            raise HTTPError("the CA is not initialised yet", 500)
        body = fold_keys(body, ("Provider", "Config", "ForceWithoutCrossSigning", "State"))
        provider = body.get("Provider") or "consul"
        if provider != "consul":
            raise BadRequest(f"Provider {provider!r} is not supported: only the built-in \"consul\" provider")
        new_cfg = body.get("Config") or {}
        if not isinstance(new_cfg, dict):
            raise BadRequest("Config must be an object")
        merged = dict(cur["Config"])
        for k, v in new_cfg.items():
            merged[k] = v
        if "LeafCertTTL" in merged:
            try:
                ttl = parse_duration(merged["LeafCertTTL"]) if isinstance(merged["LeafCertTTL"], str) else None
            except DurationError as e:
                raise BadRequest(f"Config.LeafCertTTL: {e}") from None
            if ttl is None or not 3600 <= ttl <= 365 * 86400:
                raise BadRequest("Config.LeafCertTTL must be a duration between 1h and 8760h")
        old = self.active_root()
        new_root: ca.Root | None = None
        if new_cfg.get("PrivateKey") or new_cfg.get("RootCert"):
            if not (new_cfg.get("PrivateKey") and new_cfg.get("RootCert")):
                raise BadRequest("Config.PrivateKey and Config.RootCert must be given together")
            new_root = ca.root_from_config(new_cfg["PrivateKey"], new_cfg["RootCert"])
            if new_root.row["ID"] == old.row["ID"]:
                new_root = None
        elif int(merged.get("PrivateKeyBits", 256)) != int(cur["Config"].get("PrivateKeyBits", 256)):
            new_root = ca.generate_root(self.trust_domain, _now(), _serial(), bits=int(merged["PrivateKeyBits"]))
        merged.pop("PrivateKey", None)  # never stored in the visible configuration
        cmds: list[c.Command] = []
        if new_root is not None:
            force = bool(body.get("ForceWithoutCrossSigning"))
            inter = [] if force else [ca.cross_sign(new_root, old, _now(), _serial())]
            row = dict(new_root.row, IntermediateCerts=inter, SigningKey=new_root.key_pem)
            _, rows = self.roots()
            for r in rows:
                if r["Active"]:
                    cmds.append(c.TableSet(table="ca_roots", key=r["ID"], row=dict(r, Active=False,
                                                                                  RotatedOutAt=_iso())))
            cmds.append(c.TableSet(table="ca_roots", key=row["ID"], row=row))
            log.info("Connect CA root rotation: %s -> %s (cross-signed: %s)", old.row["ID"], row["ID"], not force)
        cmds.append(c.TableSet(table="ca_config", key="config", row=dict(cur, Config=merged, Provider=provider),
                               cas=cur["ModifyIndex"]))
        results = await self.agent.backend.apply(c.Batch(commands=cmds))
        if results[-1] is False:
            raise HTTPError("the CA configuration changed concurrently; retry", 409)

    # ------------------------------------------------------------------ leaves (agent cache)
    def sign(self, csr_pem: str, service: str | None) -> dict[str, Any]:
        """What a server does for ConnectCA.Sign: check the CSR and sign it with the active root."""
        root = self.active_root()
        return ca.sign_leaf(csr_pem, root, self.trust_domain, _now(), _serial(), self.leaf_ttl(), service)

    def _issue(self, service: str) -> dict[str, Any]:
        key = ca.generate_key()
        uri = ServiceID(self.trust_domain, "default", self.agent.config.datacenter, service).uri
        csr = ca.make_csr(uri, key, service)
        leaf = self.sign(csr, service)
        self._leaf_index = max(self._leaf_index + 1, self.store.table_index("ca_roots"))
        return dict(leaf, PrivateKeyPEM=ca.key_pem(key), Namespace="default", Partition="default",
                    Kind="", CreateIndex=self._leaf_index, ModifyIndex=self._leaf_index,
                    RootID=self.active_root().row["ID"], Jitter=self.agent.rng.random())

    def _fresh(self, leaf: dict[str, Any] | None) -> bool:
        if leaf is None or leaf["RootID"] != self.active_root().row["ID"]:
            return False
        return not ca.leaf_needs_renewal(leaf["CertPEM"], _now(), leaf["Jitter"])

    def leaf(self, service: str) -> dict[str, Any]:
        cur = self._leaves.get(service)
        if not self._fresh(cur):
            cur = self._leaves[service] = self._issue(service)
            ev = self._leaf_changed.pop(service, None)
            if ev is not None:
                ev.set()
        return cur  # type: ignore[return-value]

    async def leaf_blocking(self, service: str, min_index: int, wait: float) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + wait
        leaf = self.leaf(service)
        while min_index and leaf["ModifyIndex"] <= min_index:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            ev = self._leaf_changed.setdefault(service, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), min(remaining, 60.0))
            except TimeoutError:
                pass
            leaf = self.leaf(service)  # also renews a leaf that aged past its renewal point
        return leaf

    async def watch_roots(self, stop: asyncio.Event) -> None:
        """Re-issue cached leaves as soon as the active root changes, waking blocked leaf queries."""
        index = 0
        while not stop.is_set():
            # Stale: a server watches its own replica (this also works while there is no leader).
            waiter = asyncio.ensure_future(self.agent.backend.query("table.list", {"table": "ca_roots"}, index, 300,
                                                                    "stale"))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter not in done:
                waiter.cancel()
                return
            index = waiter.result()[0]
            for service in list(self._leaves):
                self.leaf(service)

    # ------------------------------------------------------------------ intentions
    def authorize_body(self, target: str, uri: str) -> bytes:
        """The encoded /v1/agent/connect/authorize answer, cached per (target, URI) until the intentions
        or the CA (its trust domain) change."""
        body = self._decisions.get((target, uri))
        if body is None:
            allowed, reason = ixns.authorize(self.intentions(), target, uri, self.trust_domain,
                                             self.agent.config.intention_default_allow)
            body = dumps({"Authorized": allowed, "Reason": reason})
            if len(self._decisions) < DECISION_CACHE:
                self._decisions[(target, uri)] = body
        return body

    def authorize_raw(self, raw: bytes) -> bytes | None:
        """A cached answer for exactly these request bytes (the cache only holds valid ones)."""
        return self._raw_decisions.get(raw)

    def remember_raw(self, raw: bytes, answer: bytes) -> None:
        if len(raw) <= 1024 and len(self._raw_decisions) < DECISION_CACHE:
            self._raw_decisions[raw] = answer

    def intentions(self) -> list[dict[str, Any]]:
        """Every intention (legacy shape), rebuilt only when config entries changed."""
        idx = self.store.table_index("config_entries")
        if self._ixn_cache is None or self._ixn_cache[0] != idx:
            _, rows = self.store.table_list("config_entries")
            flat = []
            for row in rows:
                if row["Kind"] == "service-intentions":
                    flat.extend(ixns.from_config_entry(row))
            self._ixn_cache = (idx, ixns.sort_by_precedence(flat))
        return self._ixn_cache[1]

    async def upsert(self, ixn: dict[str, Any], replace_id: str | None = None) -> dict[str, Any]:
        """Add or replace one intention in its destination's config entry (CAS, retried)."""
        for _ in range(5):
            key = ENTRY_PREFIX + ixn["DestinationName"]
            _, entry = self.store.table_get("config_entries", key)
            current = ixns.from_config_entry(entry) if entry else []
            kept = [i for i in current if i["SourceName"] != ixn["SourceName"] and (not replace_id or i["ID"] != replace_id)]
            new = ixns.to_config_entry(ixn["DestinationName"], kept + [ixn], entry.get("Meta") if entry else None)
            ok = await self.agent.backend.apply(c.TableSet(table="config_entries", key=key, row=new,
                                                           cas=entry["ModifyIndex"] if entry else 0))
            if ok:
                return ixn
        raise HTTPError("intentions changed concurrently; retry", 409)

    async def remove(self, pred: Any) -> bool:
        removed = False
        for ixn in [i for i in self.intentions() if pred(i)]:
            for _ in range(5):
                key = ENTRY_PREFIX + ixn["DestinationName"]
                _, entry = self.store.table_get("config_entries", key)
                if entry is None:
                    break
                kept = [i for i in ixns.from_config_entry(entry) if i["SourceName"] != ixn["SourceName"]]
                cmd: c.Command = (c.TableSet(table="config_entries", key=key, cas=entry["ModifyIndex"],
                                             row=ixns.to_config_entry(ixn["DestinationName"], kept, entry.get("Meta")))
                                  if kept else c.TableDelete(table="config_entries", key=key, cas=entry["ModifyIndex"]))
                if await self.agent.backend.apply(cmd):
                    removed = True
                    break
        return removed

    def find(self, ixn_id: str) -> dict[str, Any] | None:
        return next((i for i in self.intentions() if i["ID"] == ixn_id), None)

    def exact(self, source: str, destination: str) -> dict[str, Any] | None:
        return next((i for i in self.intentions() if i["SourceName"] == source and i["DestinationName"] == destination),
                    None)


def _connect(request: web.Request) -> Connect:
    conn = request.app["agent"].connect
    if conn is None:
        raise HTTPError("Connect must be enabled on a server or dev agent for this endpoint", 500)
    return conn


def _intention_body(raw: Any) -> dict[str, Any]:
    body = fold_keys(want_dict(raw, "Intention"), (
        "ID", "SourceName", "DestinationName", "SourceNS", "DestinationNS", "SourceType", "Action", "Permissions",
        "Description", "Meta", "SourcePartition", "DestinationPartition"))
    try:
        return ixns.validate(body)
    except InvalidIntention as e:
        raise BadRequest(f"Invalid intention: {e}") from None


# ---------------------------------------------------------------------- CA endpoints
@routes.get("/v1/connect/ca/roots")
@routes.get("/v1/agent/connect/ca/roots")
async def ca_roots(request: web.Request) -> web.Response:
    check_common(request)
    conn = _connect(request)
    b = blocking_params(request)
    if b.index:
        await request.app["agent"].backend.query("table.list", {"table": "ca_roots"}, b.index, b.wait)
    idx, body = conn.roots_body()
    return json_response(request, body, index=idx)


@routes.get("/v1/connect/ca/configuration")
async def ca_config_get(request: web.Request) -> web.Response:
    check_common(request)
    cfg = _connect(request).config()
    if cfg is None:
        raise NotFoundHTTP("the CA is not initialised yet")
    return json_response(request, cfg, index=cfg["ModifyIndex"])


@routes.put("/v1/connect/ca/configuration")
async def ca_config_put(request: web.Request) -> web.Response:
    check_common(request)
    await _connect(request).set_config(want_dict(await json_body(request), "CAConfiguration"))
    return web.Response(status=200)


@routes.get("/v1/agent/connect/ca/leaf/{service}")
async def leaf(request: web.Request) -> web.Response:
    check_common(request)
    b = blocking_params(request)
    cert = await _connect(request).leaf_blocking(request.match_info["service"], b.index, b.wait)
    body = {k: v for k, v in cert.items() if k not in ("RootID", "Jitter")}
    return json_response(request, body, index=cert["ModifyIndex"])


@routes.post("/v1/agent/connect/authorize")
async def authorize(request: web.Request) -> web.Response:
    conn = _connect(request)
    raw = await request.read()
    hit = conn.authorize_raw(raw)  # proxies send the same few bodies again and again
    if hit is not None:
        return web.Response(body=hit, headers=JSON_HEADERS)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"Request decode failed: invalid JSON: {e}") from None
    body = want_dict(body, "AuthorizeRequest")
    if "Target" not in body or "ClientCertURI" not in body:
        body = fold_keys(body, ("Target", "ClientCertURI", "ClientCertSerial"))
    target, uri = body.get("Target"), body.get("ClientCertURI")
    if not isinstance(target, str) or not target:
        raise BadRequest("Target service must be specified")
    if not isinstance(uri, str) or not uri:
        raise BadRequest("ClientCertURI must be specified")
    answer = conn.authorize_body(target, uri)
    conn.remember_raw(raw, answer)
    return web.Response(body=answer, headers=JSON_HEADERS)


# ---------------------------------------------------------------------- intentions (legacy API)
@routes.get("/v1/connect/intentions")
async def list_intentions(request: web.Request) -> web.Response:
    check_common(request)
    conn = _connect(request)
    b = blocking_params(request)
    if b.index:
        await request.app["agent"].backend.query("config.list", {"kind": "service-intentions"}, b.index, b.wait)
    return json_response(request, conn.intentions(), index=conn.store.table_index("config_entries"))


@routes.post("/v1/connect/intentions")
async def create_intention(request: web.Request) -> web.Response:
    check_common(request)
    conn = _connect(request)
    ixn = _intention_body(await json_body(request))
    if conn.exact(ixn["SourceName"], ixn["DestinationName"]) is not None:
        raise BadRequest(f"duplicate intention found: {ixn['SourceName']} => {ixn['DestinationName']}")
    now = _iso()
    ixn.update(ID=str(uuid.uuid4()), CreatedAt=now, UpdatedAt=now)
    await conn.upsert(ixn)
    return json_response(request, {"ID": ixn["ID"]})


def _exact_params(request: web.Request) -> tuple[str, str]:
    src, dst = request.query.get("source", ""), request.query.get("destination", "")
    if not src or not dst:
        raise BadRequest("required query parameters 'source' and 'destination' are missing")
    return src, dst


@routes.get("/v1/connect/intentions/exact")
async def get_exact(request: web.Request) -> web.Response:
    check_common(request)
    ixn = _connect(request).exact(*_exact_params(request))
    if ixn is None:
        raise NotFoundHTTP("Intention not found")
    return json_response(request, ixn, index=ixn["ModifyIndex"])


@routes.put("/v1/connect/intentions/exact")
async def put_exact(request: web.Request) -> web.Response:
    check_common(request)
    conn = _connect(request)
    src, dst = _exact_params(request)
    raw = want_dict(await json_body(request), "Intention")
    ixn = _intention_body(dict(raw, SourceName=src, DestinationName=dst))
    prev = conn.exact(src, dst)
    now = _iso()
    ixn.update(ID=prev["ID"] if prev else str(uuid.uuid4()), CreatedAt=prev["CreatedAt"] if prev else now,
               UpdatedAt=now)
    await conn.upsert(ixn)
    return json_response(request, True)


@routes.delete("/v1/connect/intentions/exact")
async def delete_exact(request: web.Request) -> web.Response:
    check_common(request)
    src, dst = _exact_params(request)
    await _connect(request).remove(lambda i: i["SourceName"] == src and i["DestinationName"] == dst)
    return json_response(request, True)


@routes.get("/v1/connect/intentions/match")
async def match(request: web.Request) -> web.Response:
    check_common(request)
    by = request.query.get("by", "")
    names = request.query.getall("name", [])
    if not names:
        raise BadRequest("required query parameter 'name' is missing")
    conn = _connect(request)
    try:
        out = {n: ixns.match(conn.intentions(), by, n) for n in names}
    except InvalidIntention as e:
        raise BadRequest(str(e)) from None
    return json_response(request, out, index=conn.store.table_index("config_entries"))


@routes.get("/v1/connect/intentions/check")
async def check(request: web.Request) -> web.Response:
    check_common(request)
    src, dst = _exact_params(request)
    allowed, _ = ixns.decide(_connect(request).intentions(), src, dst,
                             request.app["agent"].config.intention_default_allow)
    return json_response(request, {"Allowed": allowed})


@routes.get("/v1/connect/intentions/{id}")
async def get_by_id(request: web.Request) -> web.Response:
    check_common(request)
    ixn = _connect(request).find(request.match_info["id"])
    if ixn is None:
        raise NotFoundHTTP(f"Intention with ID {request.match_info['id']!r} not found")
    return json_response(request, ixn, index=ixn["ModifyIndex"])


@routes.put("/v1/connect/intentions/{id}")
async def put_by_id(request: web.Request) -> web.Response:
    check_common(request)
    conn = _connect(request)
    prev = conn.find(request.match_info["id"])
    if prev is None:
        raise NotFoundHTTP(f"Intention with ID {request.match_info['id']!r} not found")
    ixn = _intention_body(await json_body(request))
    ixn.update(ID=prev["ID"], CreatedAt=prev["CreatedAt"], UpdatedAt=_iso())
    if (ixn["SourceName"], ixn["DestinationName"]) != (prev["SourceName"], prev["DestinationName"]):
        await conn.remove(lambda i: i["ID"] == prev["ID"])
    await conn.upsert(ixn)
    return json_response(request, True)


@routes.delete("/v1/connect/intentions/{id}")
async def delete_by_id(request: web.Request) -> web.Response:
    check_common(request)
    ixn_id = request.match_info["id"]
    if not await _connect(request).remove(lambda i: i["ID"] == ixn_id):
        raise NotFoundHTTP(f"Intention with ID {ixn_id!r} not found")
    return json_response(request, True)


def attach(agent: Any) -> None:
    """Wire Connect into an agent: routes always; CA state and leader duties on servers."""
    agent.connect = Connect(agent) if agent.store is not None and agent.config.connect_enabled else None
    agent.http_routes.append(routes)
    if agent.connect is None:
        return

    async def connect_duties(agent: Any, stop: asyncio.Event) -> None:
        async def bootstrap_when_leader() -> None:
            # The first leader creates the CA (through Raft); bootstrap() is a no-op once it exists.
            while not stop.is_set():
                if await agent.wait_leadership(stop):
                    try:
                        await agent.connect.bootstrap()
                        return
                    except Exception as e:  # leadership moved mid-way: the next leader retries
                        log.warning("Connect CA bootstrap did not complete: %s", e)
                        await asyncio.sleep(0.5)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(bootstrap_when_leader())
            tg.create_task(agent.connect.watch_roots(stop))

    agent.listeners.append(connect_duties)


__all__ = ["attach", "Connect", "InvalidCAConfig", "consul_headers", "uint_param"]
