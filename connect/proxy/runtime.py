"""The proxy's live state, shared by its listeners: what the watches last learned, and the counters.

Everything here is replaced whole when the agent says something changed (a new policy object, new
TLS contexts, a new healthy set), so a connection in progress always sees one consistent view.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from proconsul.connect.errors import InvalidSpiffeID
from proconsul.connect.proxy.accesslog import (
    AccessLog,
    follow,
    handshake_failure_reason,
    handshake_failure_record,
    wants_listener_lines,
)
from proconsul.connect.proxy.authz import Decision, IntentionPolicy
from proconsul.connect.proxy.balancer import Sizing, UpstreamPool
from proconsul.connect.proxy.breaker import Breaker
from proconsul.connect.proxy.budget import RetryBudget
from proconsul.connect.proxy.config import ProxyConfig, Upstream
from proconsul.connect.proxy.h1 import InstanceConnections
from proconsul.connect.proxy.metrics import Link, ProxyMetrics
from proconsul.connect.proxy.ratelimit import RateLimiter
from proconsul.connect.proxy.routing import RouteTable, Target
from proconsul.connect.proxy.tap import Subscriber, Tap
from proconsul.connect.proxy.tls import peer_cert, resumption_refusal
from proconsul.connect.proxy.tlsproto import READ_MAX
from proconsul.connect.proxy.tracing import Tracer, TracingSettings
from proconsul.connect.spiffe import parse_service


class OpenConnection(Protocol):
    """What the runtime needs of an open inbound connection to close it when it is no longer allowed."""

    uri: str

    def abort(self) -> None: ...

log = logging.getLogger("proconsul.proxy")
RECENT_REFUSALS = 100


@dataclass(frozen=True, slots=True)
class Refusal:
    time: float  # unix time
    source: str
    destination: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"Time": self.time, "Source": self.source, "Destination": self.destination, "Reason": self.reason}


class Runtime:
    def __init__(self, config: ProxyConfig, *, datacenter: str, rng: random.Random | None = None) -> None:
        self.config = config
        self.datacenter = datacenter
        self.rng = rng or random.Random()
        self.trust_domain = ""
        self.http_connections = InstanceConnections()  # HTTP mode: kept-alive mTLS connections upstream
        self.policy: IntentionPolicy | None = None
        self.client_ctx: ssl.SSLContext | None = None
        self.root_ids: tuple[str, ...] = ()
        self.trust_reduced_at = 0.0  # unix time a root last left the trusted set (resumed sessions before it: refused)
        self.pools: dict[str, UpstreamPool] = {
            u.key: UpstreamPool(u.destination_name, u.lb_policy, u.outlier or config.outlier) for u in config.upstreams}
        self.breakers: dict[str, Breaker[Any]] = {u.key: Breaker(u.limits) for u in config.upstreams}
        self.upstreams: dict[str, Upstream] = {u.key: u for u in config.upstreams}
        self.access_log: AccessLog | None = None  # proxy-defaults AccessLogs, when Enabled
        self.rate_limiter: RateLimiter | None = None  # service-defaults RateLimits of this service
        self.tracer: Tracer | None = None  # proxy-defaults Config.tracing
        self.tap: Tap | None = None  # live tap watchers (tap.py); None while nobody watches
        self.h2_backs: dict[str, Any] = {}  # instance key -> the HTTP/2 connection to it (h2relay.py)
        self.h2_dialing: dict[str, Any] = {}  # instance key -> the dial of that connection under way
        self._tracer_task: asyncio.Task[Any] | None = None
        self.chains: dict[str, RouteTable] = {}  # HTTP upstreams: the discovery chain applied per request
        self.target_pools: dict[tuple[str, str], UpstreamPool] = {}  # (upstream key, chain target id)
        self.metrics = ProxyMetrics(config.service)
        self.budget = RetryBudget(config.retry.budget_ratio, config.retry.budget_min_per_second)
        self.refusals: deque[Refusal] = deque(maxlen=RECENT_REFUSALS)
        self.revoked = 0  # open connections closed because an intention turned to deny
        self._inbound: dict[str, set[OpenConnection]] = {}  # by client certificate URI
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_handshake_log = -1e9
        self.tls_scratch = memoryview(bytearray(READ_MAX))  # every TLS connection's TCP reads land here first

    def reconfigure(self, config: ProxyConfig) -> None:
        """A new registration: new connections follow it at once; upstreams that stay keep their pool
        (instances, ejections), and open connections are left alone."""
        pools = {}
        for u in config.upstreams:
            pool = self.pools.get(u.key)  # not `or`: an empty pool is falsy, and its watch feeds that very object
            if pool is None:
                pool = UpstreamPool(u.destination_name, u.lb_policy, u.outlier or config.outlier)
            pool.policy, pool.outlier = u.lb_policy, u.outlier or config.outlier
            pools[u.key] = pool
            breaker = self.breakers.get(u.key)
            if breaker is None:
                self.breakers[u.key] = Breaker(u.limits)
            else:
                breaker.limits = u.limits  # requests in flight or queued stay counted
        if config.retry != self.config.retry:
            self.budget = RetryBudget(config.retry.budget_ratio, config.retry.budget_min_per_second)
        self.pools = pools
        self.upstreams = {u.key: u for u in config.upstreams}
        self.config = config
        for key in [k for k in self.breakers if k not in self.upstreams]:
            del self.breakers[key]
        for (key, _), pool in self.target_pools.items():
            u = self.upstreams.get(key)
            if u is not None:
                pool.outlier = u.outlier or config.outlier
        for key in [k for k in self.chains if k not in self.upstreams]:
            self.set_chain(key, None)
        for key, table in self.chains.items():
            # The upstream's lb_policy may have changed under the chain's. Only policies: pruning here would
            # drop the pools of a chain that is warming (not active yet), and their watches feed those objects.
            self._chain_policies(self.upstreams[key], table)

    def set_access_log(self, settings: dict[str, Any] | None) -> None:
        """proxy-defaults' AccessLogs, applied at once (the old destination is flushed and closed)."""
        self.access_log = follow(self.access_log, settings)

    def watch(self, sub: Subscriber) -> None:
        """A tap watcher starts: requests are offered to it from the next one on."""
        if self.tap is None:
            self.tap = Tap(self.config.service)
        self.tap.subscribers.append(sub)

    def unwatch(self, sub: Subscriber) -> None:
        """A tap watcher went away; with the last one the request path is back to no work at all."""
        if self.tap is not None and sub in self.tap.subscribers:
            self.tap.subscribers.remove(sub)
            if not self.tap.subscribers:
                self.tap = None

    def set_tracing(self, settings: TracingSettings | None) -> None:
        """proxy-defaults Config.tracing: a new exporter when the collector or the sampling changes."""
        if (self.tracer.settings if self.tracer is not None else None) == settings:
            return
        if self._tracer_task is not None:
            self._tracer_task.cancel()
            self._tracer_task = None
        self.tracer = Tracer(self.config.service, settings, self.rng) if settings is not None else None
        if self.tracer is not None:
            self._tracer_task = asyncio.get_running_loop().create_task(self.tracer.run())
            self._tasks.add(self._tracer_task)
            self._tracer_task.add_done_callback(self._done)
        log.info("tracing: %s", "off" if settings is None else
                 f"OTLP/HTTP to {settings.endpoint}, {settings.sampling_percent:g}% of new traces")

    def set_rate_limits(self, rate_limits: dict[str, Any] | None) -> None:
        """service-defaults' RateLimits for this instance; buckets start full again only when they change."""
        level = (rate_limits or {}).get("InstanceLevel") or {}
        current = self.rate_limiter.settings if self.rate_limiter is not None else {}
        if level != current:
            self.rate_limiter = RateLimiter.from_entry(rate_limits)

    # ------------------------------------------------------------------ discovery chains
    def owns_target(self, up: Upstream, t: Target) -> bool:
        """Whether the upstream's own pool (every passing instance of its destination) serves `t`."""
        return t.service == up.destination_name and not t.filter and \
            t.datacenter in ("", up.datacenter or self.datacenter)

    def pool_for(self, up: Upstream, t: Target) -> UpstreamPool | None:
        return self.pools.get(up.key) if self.owns_target(up, t) else self.target_pools.get((up.key, t.id))

    def set_chain(self, key: str, table: RouteTable | None, activate: bool = True) -> list[Target]:
        """Apply a new chain to upstream `key` (None: forget it); the targets that now need a pool of their
        own (a subset, another service or datacenter) — the caller watches their instances. With
        `activate` False the pools are made but requests keep the current chain (warming, as Envoy's
        clusters warm: the caller activates once the new targets' instances are known)."""
        up = self.upstreams.get(key)
        if table is None or up is None:
            self.chains.pop(key, None)
            for k in [k for k in self.target_pools if k[0] == key]:
                del self.target_pools[k]
            return []
        wanted = self._chain_policies(up, table)
        new = []
        for tid, (t, policy, sizing) in wanted.items():
            if (key, tid) not in self.target_pools:
                self.target_pools[(key, tid)] = UpstreamPool(t.service + (f"[{tid}]" if t.filter else ""), policy,
                                                             up.outlier or self.config.outlier, sizing)
                new.append(t)
        if not activate:
            return new
        for k in [k for k in self.target_pools if k[0] == key and k[1] not in wanted]:
            del self.target_pools[k]
        self.chains[key] = table
        return new

    def _chain_policies(self, up: Upstream, table: RouteTable) -> dict[str, tuple[Target, str, Sizing]]:
        """Set the balancing policy (and ring / choice sizing) of the pools `table` routes to (the upstream's
        own, the targets' that exist); the targets that need a pool of their own, with their policy."""
        policies: dict[str, tuple[str, Sizing]] = {}
        for route in table.routes:
            for leg in route.legs:
                for t in (leg.target, *leg.failover):
                    policies.setdefault(t.id, (leg.lb.policy or up.lb_policy, leg.lb.sizing))
        wanted = {tid: (t, *policies[tid]) for tid, t in table.targets.items()
                  if tid in policies and not self.owns_target(up, t)}
        for tid, (_, policy, sizing) in wanted.items():
            pool = self.target_pools.get((up.key, tid))
            if pool is not None:
                pool.tune(policy, sizing)
        own = self.pools.get(up.key)
        if own is not None:
            own.tune(*next((policies[tid] for tid, t in table.targets.items()
                            if tid in policies and self.owns_target(up, t)), (up.lb_policy, Sizing())))
        return wanted

    # ------------------------------------------------------------------ tasks
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("proxy task failed: %r", task.exception(), exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def service_uri(self) -> str:
        """This proxy's own SPIFFE ID (its service's identity)."""
        return f"spiffe://{self.trust_domain}/ns/default/dc/{self.datacenter}/svc/{self.config.service}"

    def trust_roots(self, root_ids: tuple[str, ...], now: float) -> None:
        """The roots trusted from now on; a root that left makes older resumed sessions unusable."""
        if set(self.root_ids) - set(root_ids):
            self.trust_reduced_at = now
        self.root_ids = root_ids

    # ------------------------------------------------------------------ identities and refusals
    def is_identity_of(self, uri: str, service: str) -> bool:
        """Whether `uri` is `service`'s SPIFFE ID in our trust domain (any datacenter: failover may cross)."""
        try:
            ident = parse_service(uri)
        except InvalidSpiffeID:
            return False
        return ident.trust_domain == self.trust_domain and ident.service == service

    def admit(self, ssl_object: Any) -> tuple[str, Decision]:
        """Who is calling on the public listener and whether they may connect: the verified
        certificate's SPIFFE ID, the rules for resumed sessions, then the intentions."""
        cert = peer_cert(ssl_object)
        uri = cert.uri if cert is not None else ""
        if ssl_object is not None and ssl_object.session_reused:
            made = ssl_object.session.time if self.trust_reduced_at else 0.0  # reading .session costs a parse
            why = resumption_refusal(cert, made, time.time(), self.trust_reduced_at)
            if why:
                return uri, Decision(False, uri or "unknown", why)
        if self.policy is None:
            return uri, Decision(False, uri or "unknown", "intentions are not loaded yet")
        return uri, self.policy.connection(uri)

    def inbound_accepted(self, decision: Decision, ssl_object: Any) -> Link:
        """Count an allowed inbound connection; its source's link."""
        link = self.metrics.inbound_link(decision.source)
        link.connections += 1
        link.active += 1
        if ssl_object is not None and ssl_object.session_reused:
            link.resumed += 1
        return link

    def handshake_failed(self, tls: Any, exc: Exception, cluster: str = "local_app", service: str = "") -> None:
        """A client on the public listener (or an ingress TLS listener) did not complete the TLS handshake (a
        foreign, missing or expired certificate, plain text, garbage, a timeout): counted by reason, one
        listener-level access-log line, and logged like any refusal (at most once a second)."""
        peer = tls.raw.get_extra_info("peername") if tls.raw is not None else None
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unknown"
        label = handshake_failure_reason(exc)
        failures = self.metrics.handshake_failures
        failures[label] = failures.get(label, 0) + 1
        if wants_listener_lines(self.access_log):
            self.access_log.connection(handshake_failure_record(  # type: ignore[union-attr]
                tls.opened, where if peer else "", label, cluster, service or self.config.service))
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        now = time.monotonic()
        loud = now - self._last_handshake_log >= 1.0  # a flood of garbage logs once a second, not per connection
        if loud:
            self._last_handshake_log = now
        self.refused(f"unknown ({where})", f"TLS handshake failed: {reason}", log_it=loud)

    def refused(self, source: str, reason: str, *, log_it: bool = True) -> None:
        self.metrics.inbound_link(source.split(" (", 1)[0]).refused += 1
        self.refusals.append(Refusal(time.time(), source, self.config.service, reason))
        if log_it:
            log.warning("refused connection from %s to %s: %s", source, self.config.service, reason)

    # ------------------------------------------------------------------ open inbound connections
    def inbound_opened(self, side: OpenConnection) -> None:
        self._inbound.setdefault(side.uri, set()).add(side)

    def inbound_closed(self, side: OpenConnection) -> None:
        sides = self._inbound.get(side.uri)
        if sides is not None:
            sides.discard(side)
            if not sides:
                del self._inbound[side.uri]

    def set_policy(self, policy: IntentionPolicy) -> None:
        """New intentions: new connections are decided by them at once, and (beyond Consul, which lets
        open connections run on) connections they no longer allow are closed."""
        self.policy = policy
        for uri, sides in list(self._inbound.items()):
            decision = policy.connection(uri)
            if decision.allowed:
                continue
            for side in list(sides):
                self.revoked += 1
                log.warning("closing open connection from %s to %s: %s", decision.source, self.config.service,
                            decision.reason)
                self.refusals.append(Refusal(time.time(), decision.source, self.config.service,
                                             "open connection closed: " + decision.reason))
                side.abort()

    def inbound_count(self) -> int:
        return sum(len(s) for s in self._inbound.values())
