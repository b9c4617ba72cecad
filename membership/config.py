"""Gossip timings: one frozen object per pool, with memberlist's LAN and WAN defaults.

The names Consul exposes under `gossip_lan { … }` and `gossip_wan { … }` are fields here with the
same names (`CONSUL_KEYS`); the rest are memberlist's and Serf's internal constants, kept as fields
so the simulator and tests can vary them. The LAN pool and (later) the WAN pool run the same core
with different `Timings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigError

# Keys of Consul's gossip_lan / gossip_wan blocks (durations in seconds here).
CONSUL_KEYS = ("gossip_nodes", "gossip_interval", "probe_interval", "probe_timeout", "retransmit_mult",
               "suspicion_mult")
DURATION_KEYS = {"gossip_interval", "probe_interval", "probe_timeout"}

# Push-pull runs every push_pull_interval up to this many members, then slower (memberlist's rule).
PUSH_PULL_SCALE_THRESHOLD = 32


@dataclass(frozen=True)
class Timings:
    """How often a member probes, gossips and syncs, and how long it waits (memberlist's LAN defaults)."""

    probe_interval: float = 1.0  # one probe of the next member in the shuffled round
    probe_timeout: float = 0.5  # direct ack deadline; then indirect probes and the TCP fallback
    gossip_interval: float = 0.2  # gossip of queued news to gossip_nodes random members
    gossip_nodes: int = 3
    retransmit_mult: int = 4  # each news item is sent retransmit_mult * ceil(log10(n + 1)) times
    suspicion_mult: int = 4  # suspicion timeout: suspicion_mult * max(1, log10(n)) * probe_interval ...
    suspicion_max_timeout_mult: int = 6  # ... up to this many times that while unconfirmed (Lifeguard)
    indirect_checks: int = 3  # members asked to probe for us when a direct probe fails
    push_pull_interval: float = 30.0  # anti-entropy with one random member, scaled up past 32 members
    awareness_max_multiplier: int = 8  # Lifeguard's local health: timeouts stretch up to this factor
    gossip_to_the_dead_time: float = 30.0  # dead members still get gossip this long (helps them refute)
    tcp_timeout: float = 10.0  # a push-pull exchange (dial, every read and write)
    udp_buffer_size: int = 1400  # largest datagram we send: one message plus piggybacked news
    reconnect_interval: float = 30.0  # Serf: try a push-pull with a failed member this often (see core)
    reconnect_timeout: float = 72 * 3600.0  # Serf: a failed member is forgotten after this long
    tombstone_timeout: float = 24 * 3600.0  # Serf: a member that left is forgotten after this long
    tcp_pings: bool = True  # TCP fallback ping alongside the indirect probes
    lifeguard: bool = True  # local health, dynamic suspicion, buddy system; False: plain SWIM (benchmarks)

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval", "tcp_timeout",
                     "reconnect_interval", "gossip_to_the_dead_time"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("gossip_nodes", "retransmit_mult", "suspicion_mult", "suspicion_max_timeout_mult",
                     "awareness_max_multiplier"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.indirect_checks < 0:
            raise ConfigError(f"indirect_checks must not be negative, got {self.indirect_checks!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(f"probe_timeout ({self.probe_timeout:g}s) must be shorter than probe_interval "
                              f"({self.probe_interval:g}s): a probe waits for its ack within its interval")
        if not 64 <= self.udp_buffer_size <= 65000:
            raise ConfigError(f"udp_buffer_size must be between 64 and 65000, got {self.udp_buffer_size!r}")

    def with_consul(self, block: dict[str, Any], where: str = "gossip_lan") -> Timings:
        """These timings with a Consul `gossip_lan`/`gossip_wan` block applied (durations already in seconds)."""
        unknown = sorted(set(block) - set(CONSUL_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(CONSUL_KEYS)})")
        changes: dict[str, Any] = {}
        for key, value in block.items():
            if key in DURATION_KEYS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where}.{key} must be a duration, got {value!r}")
                changes[key] = float(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{where}.{key} must be a whole number, got {value!r}")
                changes[key] = value
        try:
            return replace(self, **changes)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def plain_swim(self) -> Timings:
        """The same timings with Lifeguard switched off (the comparison arm of the benchmark)."""
        return replace(self, lifeguard=False)

    # ---- memberlist's scaling rules -----------------------------------------------------------
    def retransmit_limit(self, n: int) -> int:
        """How many times one news item is sent: retransmit_mult * ceil(log10(n + 1))."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_min(self, n: int) -> float:
        """The suspicion timeout with every confirmation in (Lifeguard's minimum; plain SWIM's only value)."""
        return self.suspicion_mult * max(1.0, math.log10(max(1.0, float(n)))) * self.probe_interval

    def suspicion_max(self, n: int) -> float:
        return self.suspicion_max_timeout_mult * self.suspicion_min(n)

    def push_pull_period(self, n: int) -> float:
        """push_pull_interval up to 32 members, then one more interval per doubling."""
        if n <= PUSH_PULL_SCALE_THRESHOLD:
            return self.push_pull_interval
        return (math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0) * self.push_pull_interval


LAN = Timings()
# memberlist's DefaultWANConfig, which Consul's gossip_wan defaults are.
WAN = Timings(probe_interval=5.0, probe_timeout=3.0, gossip_interval=0.5, gossip_nodes=4, suspicion_mult=6,
              push_pull_interval=60.0, gossip_to_the_dead_time=60.0, tcp_timeout=30.0)


def field_names() -> list[str]:
    return [f.name for f in fields(Timings)]
