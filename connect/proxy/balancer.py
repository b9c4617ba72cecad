"""Which upstream instance gets the next connection (pure: time and randomness are arguments).

An `UpstreamPool` holds the instances of one upstream that may be sent to, each with its weight (Consul's
`Weights`, as `addresses.weight` reads them), picks one by (weighted) round robin, least requests weighted
by each instance's weight, at random (unweighted, as Envoy's), or by a request's hash key on a consistent-hash
ring (`ring_hash`) or a Maglev table (`maglev`), both with shares in proportion to the weights, and does
passive outlier detection: an
instance that fails `max_failures` connects (or, in HTTP mode, 5xx answers) in a row is ejected for
`base_ejection` × the number of times it was ejected in a row, never more than
`max_ejection_percent` of the pool at once; it comes back by itself when its time is up.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from proconsul.connect.proxy.config import OutlierSettings

T = TypeVar("T")


class Rng(Protocol):
    def random(self) -> float: ...

    def randrange(self, stop: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Instance:
    """One place to send a connection: a sidecar's public mTLS listener (or a native service)."""

    id: str  # node/service-id: stable across health updates
    address: str
    port: int
    service: str  # the destination service whose identity the peer must present
    datacenter: str = ""
    sni: str = ""  # the TLS server name to send ("": Consul's name of `service` in `datacenter`)
    weight: int = 1  # its share of the picks against the pool's others (Consul's Weights, 1..128)


@dataclass(frozen=True, slots=True)
class Sizing:
    """A resolver's `LoadBalancer.RingHashConfig` and `LeastRequestConfig` (0: not set)."""

    min_ring_size: int = 0  # ring_hash: at least this many points on the ring
    max_ring_size: int = 0  # ring_hash: at most this many
    choice_count: int = 0  # least_request with equal weights: compare this many instances drawn at random

    @classmethod
    def from_entry(cls, lb: dict[str, Any]) -> Sizing:
        ring, least = lb.get("RingHashConfig") or {}, lb.get("LeastRequestConfig") or {}
        return cls(min_ring_size=max(0, int(ring.get("MinimumRingSize") or 0)),
                   max_ring_size=max(0, int(ring.get("MaximumRingSize") or 0)),
                   choice_count=max(0, int(least.get("ChoiceCount") or 0)))


@dataclass(slots=True)
class _State:
    instance: Instance
    active: int = 0  # connections or requests in flight
    failures: int = 0  # consecutive failures
    ejections: int = 0  # consecutive ejections (reset by a success after coming back)
    ejected_until: float = 0.0
    current: int = 0  # smooth weighted round robin's running credit


@dataclass(slots=True)
class PoolStats:
    picks: int = 0
    ejections: int = 0
    no_instance: int = 0
    ejected_now: list[str] = field(default_factory=list)


RING_POINTS = 100  # points on the ring_hash ring for each of the lightest instances' weight
MAX_RING_POINTS = 100_000  # the whole ring at most (weights far apart are scaled down to fit)
MAGLEV_SIZE = 65537  # a prime, Envoy's default (built in ~25 ms, once per membership change)


def _h(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def build_ring(ids: list[str], weights: list[int] | None = None, sizing: Sizing = Sizing()
               ) -> tuple[list[int], list[str]]:
    """A consistent-hash ring, sorted (points, owners): RING_POINTS points for an instance of the lightest
    weight, in proportion for heavier ones (equal weights: RING_POINTS each), so an instance keeps its
    points while others come and go (unless the lightest weight changes) and few keys move. `sizing`'s
    MinimumRingSize / MaximumRingSize bound the whole ring's points (MAX_RING_POINTS without one)."""
    if not ids:
        return [], []
    w = weights or [1] * len(ids)
    per_unit = max(RING_POINTS / min(w), sizing.min_ring_size / sum(w))
    per_unit = min(per_unit, (sizing.max_ring_size or MAX_RING_POINTS) / sum(w))
    counts = [max(1, round(wi * per_unit)) for wi in w]
    points = sorted((_h(f"{i}#{n}".encode()), i) for i, c in zip(ids, counts, strict=True) for n in range(c))
    return [p for p, _ in points], [i for _, i in points]


def build_maglev(ids: list[str], size: int = MAGLEV_SIZE, weights: list[int] | None = None) -> list[str]:
    """Maglev's lookup table (Eisenbud et al., 2016): each instance fills slots in its own permutation
    order, taking turns, so every instance owns a share of the slots in proportion to its weight (size/n
    with equal weights) and a membership change moves few. An instance of weight w takes a turn in w of
    every max-weight rounds."""
    if not ids:
        return []
    w = weights or [1] * len(ids)
    top = max(w)
    credit = [0] * len(ids)
    perms = []
    for i in ids:
        offset = _h(b"o" + i.encode()) % size
        skip = _h(b"s" + i.encode()) % (size - 1) + 1
        perms.append((offset, skip))
    table: list[str | None] = [None] * size
    nxt = [0] * len(ids)
    filled = 0
    while True:
        for k, i in enumerate(ids):
            credit[k] += w[k]
            if credit[k] < top:
                continue
            credit[k] -= top
            offset, skip = perms[k]
            c = (offset + nxt[k] * skip) % size
            while table[c] is not None:
                nxt[k] += 1
                c = (offset + nxt[k] * skip) % size
            table[c] = i
            nxt[k] += 1
            filled += 1
            if filled == size:
                return [t for t in table if t is not None]


def weighted_order(weighted: list[tuple[T, int]], rng: Rng) -> list[T]:
    """The items in a random order in which an item of weight w comes first w times as often as one of
    weight 1 (Efraimidis and Spirakis' weighted sampling without replacement: each draws u^(1/w), highest
    first). Equal weights: a plain shuffle's distribution."""
    keyed = [(rng.random() ** (1.0 / w), k) for k, (_, w) in enumerate(weighted)]
    keyed.sort(reverse=True)
    return [weighted[k][0] for _, k in keyed]


class NoHealthyInstance(Exception):
    """The upstream has no instance to send to (none passing, or all ejected)."""


class UpstreamPool:
    def __init__(self, name: str, policy: str = "round_robin", outlier: OutlierSettings | None = None,
                 sizing: Sizing = Sizing()) -> None:
        self.name = name
        self.policy = policy
        self.sizing = sizing
        self.outlier = outlier or OutlierSettings()
        self._states: dict[str, _State] = {}
        self._order: list[str] = []
        self._next = 0
        self.stats = PoolStats()
        self._ring: tuple[list[int], list[str]] | None = None
        self._maglev: list[str] | None = None
        self._weights: list[int] = []  # in `_order`
        self._uniform = True  # every weight equal: plain round robin and least request

    # ------------------------------------------------------------------ membership
    def set_instances(self, instances: list[Instance]) -> None:
        """Replace the healthy set; instances that stay keep their counters and ejection."""
        states = {}
        for inst in instances:
            prev = self._states.get(inst.id)
            if prev is not None:
                prev.instance = inst
                states[inst.id] = prev
            else:
                states[inst.id] = _State(inst)
        self._states = states
        order = sorted(states)
        weights = [states[i].instance.weight for i in order]
        if order != self._order or weights != self._weights:
            self._ring = self._maglev = None  # rebuilt on the next hashed pick
        self._order, self._weights = order, weights
        self._uniform = len(set(weights)) <= 1
        self._next %= max(1, len(self._order))

    def tune(self, policy: str, sizing: Sizing) -> None:
        """A new policy and sizing (a changed chain); a new ring size rebuilds the ring on the next pick."""
        if sizing != self.sizing:
            self._ring = None
        self.policy, self.sizing = policy, sizing

    def instances(self) -> list[Instance]:
        return [self._states[i].instance for i in self._order]

    def weights(self) -> dict[str, int]:
        """Each instance's weight, by id (what /stats shows)."""
        return dict(zip(self._order, self._weights, strict=True))

    def __len__(self) -> int:
        return len(self._order)

    # ------------------------------------------------------------------ picking
    def _available(self, now: float, exclude: set[str]) -> list[str]:
        return [i for i in self._order if i not in exclude and self._states[i].ejected_until <= now]

    def has_ready(self, now: float, exclude: set[str]) -> bool:
        """Whether `pick` with `exclude` would find an instance (none ejected at `now` and not excluded)."""
        states = self._states
        return any(i not in exclude and states[i].ejected_until <= now for i in self._order)

    def pick(self, now: float, rng: Rng, exclude: set[str] | None = None, hash_key: bytes | None = None) -> Instance:
        """The instance for the next connection; `exclude` holds those this attempt already tried;
        `hash_key` places the request on the ring (ring_hash, maglev; without one they pick at random)."""
        if not exclude and self.policy == "round_robin" and self._uniform:
            # The common case (a first attempt, round robin): the next instance in order that is not ejected,
            # without building the list of those available (what the general path below does, same choice).
            order, states = self._order, self._states
            n = len(order)
            start = self._next
            for step in range(n):
                st = states[order[(start + step) % n]]
                if st.ejected_until <= now:
                    self._next = (start + step + 1) % n
                    self.stats.picks += 1
                    return st.instance
        exclude = exclude or set()
        ready = self._available(now, exclude)
        if not ready:
            self.stats.no_instance += 1
            raise NoHealthyInstance(f"upstream {self.name!r} has no healthy instance"
                                    + (" (all ejected after failures)" if self._order and not exclude else ""))
        if self.policy in ("ring_hash", "maglev") and hash_key is not None:
            chosen = self._hashed(hash_key, set(ready))
        elif self.policy == "least_request" and self.sizing.choice_count and self._uniform:
            # ChoiceCount set (equal weights): Envoy's "power of k choices", k draws with replacement, the
            # fewest in flight of them (the first drawn on a tie).
            drawn = [ready[rng.randrange(len(ready))] for _ in range(self.sizing.choice_count)]
            chosen = min(drawn, key=lambda i: self._states[i].active)
        elif self.policy == "least_request":
            # Envoy's weighted least request: the highest weight / (in flight + 1) (with equal weights and no
            # ChoiceCount, every instance compared: the fewest in flight); ties go to a random one of them.
            states = self._states
            if self._uniform:  # equal weights: the order of weight / (in flight + 1) is that of in flight
                low = min(states[i].active for i in ready)
                best = [i for i in ready if states[i].active == low]
            else:
                score = {i: states[i].instance.weight / (states[i].active + 1) for i in ready}
                high = max(score.values())
                best = [i for i in ready if score[i] == high]
            chosen = best[rng.randrange(len(best))] if len(best) > 1 else best[0]
        elif self.policy in ("random", "ring_hash", "maglev"):
            chosen = ready[rng.randrange(len(ready))]
        elif not self._uniform:
            chosen = self._weighted_round_robin(ready)
        else:
            # Round robin over the whole order, skipping what is not ready, so ejection keeps the rhythm.
            n = len(self._order)
            chosen = ready[0]
            for step in range(n):
                cand = self._order[(self._next + step) % n]
                if cand in ready:
                    chosen = cand
                    self._next = (self._next + step + 1) % n
                    break
        self.stats.picks += 1
        return self._states[chosen].instance

    def _weighted_round_robin(self, ready: list[str]) -> str:
        """Smooth weighted round robin (nginx's): every ready instance gains its weight in credit, the richest
        is chosen and pays the round's total. Over any run of sum-of-weights picks each instance gets its
        weight's worth, spread out rather than in bursts; an ejected or excluded one sits the rounds out."""
        states = self._states
        total, best = 0, None
        for i in ready:
            st = states[i]
            st.current += st.instance.weight
            total += st.instance.weight
            if best is None or st.current > best.current:
                best = st
        assert best is not None
        best.current -= total
        return best.instance.id

    def _hashed(self, key: bytes, ready: set[str]) -> str:
        """The instance owning `key`; when it is not ready (ejected, already tried) the next one along."""
        h = _h(key)
        if self.policy == "maglev":
            if self._maglev is None:
                self._maglev = build_maglev(self._order, weights=self._weights)
            table = self._maglev
            start = h % len(table)
            for step in range(len(table)):
                cand = table[(start + step) % len(table)]
                if cand in ready:
                    return cand
        else:
            if self._ring is None:
                self._ring = build_ring(self._order, self._weights, self.sizing)
            points, owners = self._ring
            start = bisect.bisect_left(points, h)
            for step in range(len(points)):
                cand = owners[(start + step) % len(points)]
                if cand in ready:
                    return cand
        return sorted(ready)[0]

    # ------------------------------------------------------------------ outcomes
    def started(self, inst: Instance) -> None:
        st = self._states.get(inst.id)
        if st is not None:
            st.active += 1

    def finished(self, inst: Instance) -> None:
        st = self._states.get(inst.id)
        if st is not None and st.active > 0:
            st.active -= 1

    def succeeded(self, inst: Instance) -> None:
        st = self._states.get(inst.id)
        if st is not None:
            st.failures = 0
            st.ejections = 0

    def failed(self, inst: Instance, now: float, roll: float = 0.0) -> bool:
        """Record a failure; True if it ejected the instance. `roll` (uniform in [0, 1)) decides whether an
        ejection is enforced when EnforcingConsecutive5xx is below 100."""
        st = self._states.get(inst.id)
        if st is None:
            return False
        st.failures += 1
        if st.failures < self.outlier.max_failures or st.ejected_until > now:
            return False
        if roll * 100 >= self.outlier.enforcing_consecutive_5xx:
            st.failures = 0
            return False
        ejected = sum(1 for s in self._states.values() if s.ejected_until > now)
        if (ejected + 1) * 100 > self.outlier.max_ejection_percent * len(self._states):
            return False  # ejecting it would take out more of the pool than allowed
        st.ejections += 1
        st.failures = 0
        st.ejected_until = now + self.outlier.base_ejection * st.ejections
        self.stats.ejections += 1
        return True

    def ejected(self, now: float) -> list[str]:
        return [i for i in self._order if self._states[i].ejected_until > now]
