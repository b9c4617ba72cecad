"""Trace the false positives of the slow-observer scenario in the simulator: for every healthy member
declared dead, who declared it, whether that observer was lagging, the suspicion it acted on (when it
started, its accuser and every confirmation, how each confirmer came to suspect: its own probe, a
suspect message, or a push-pull record), when the accused refuted, when the observer read the
refutation, and whether anyone else believed the observer's dead message.

    .venv/bin/python bench/membership_fp_trace.py --size 1000 --seconds 60          # ~1 CPU min
    .venv/bin/python bench/membership_fp_trace.py --size 1000 --seconds 60 --plain  # Lifeguard off

The scenario is bench/membership_bench.py's `--slow-kind lag --delay 20 --lag-length 30` (5% of members
handle datagrams 20 s late for 30 s every 30–90 s, timers on time; 1% loss). It watches the core by
wrapping a few of its methods in this process only; the simulator and core run unchanged.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

from proconsul.membership import core as C
from proconsul.membership.config import LAN
from proconsul.membership.sim import Network, Sim, SimMember, SlowPattern
from proconsul.membership.view import DEAD, SUSPECT


class Watch:
    """What the wrapped core methods saw."""

    def __init__(self) -> None:
        self.suspicions: dict[tuple[str, str], list[tuple[float, int, str | None, str, str]]] = defaultdict(list)
        self.verdicts: list[tuple[float, str, str, int, list[str], float, float]] = []
        self.refutes: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.alive_seen: dict[tuple[str, str, int], float] = {}
        self.dead_believed: list[tuple[float, str, str, int, str]] = []
        self.merging: set[int] = set()
        self.lags: dict[str, list[list[float | None]]] = defaultdict(list)

    def install(self) -> None:
        w = self
        M = C.Membership
        on_suspect, merge, timeout, on_alive, refute, on_dead = (
            M._on_suspect, M._merge, M._on_suspicion_timeout, M._on_alive, M._refute, M._on_dead)

        def _on_suspect(self: C.Membership, now: float, inc: int, name: str, frm: str | None) -> None:
            s = self.suspicions.get(name)
            before = None if s is None else s.accusers
            on_suspect(self, now, inc, name, frm)
            s2 = self.suspicions.get(name)
            if s2 is not None and (s is None or s2.accusers != before):
                how = "push-pull" if id(self) in w.merging else "own probe" if frm == self.name else "message"
                w.suspicions[(self.name, name)].append((now, inc, frm, how, "start" if s is None else "confirm"))

        def _merge(self: C.Membership, now: float, records: list[list[Any]]) -> None:
            w.merging.add(id(self))
            try:
                merge(self, now, records)
            finally:
                w.merging.discard(id(self))

        def _on_suspicion_timeout(self: C.Membership, now: float, s: Any) -> None:
            r = self.view.get(s.name)
            if self.suspicions.get(s.name) is s and now >= s.deadline and r is not None and r.state == SUSPECT:
                w.verdicts.append((now, self.name, s.name, r.inc, sorted(s.accusers), s.start, s.deadline))
            timeout(self, now, s)

        def _on_alive(self: C.Membership, now: float, inc: int, name: str, *rest: Any) -> None:
            on_alive(self, now, inc, name, *rest)
            w.alive_seen.setdefault((self.name, name, inc), now)

        def _refute(self: C.Membership, now: float, accused: int) -> None:
            refute(self, now, accused)
            w.refutes[self.name].append((now, self.me.inc))

        def _on_dead(self: C.Membership, now: float, inc: int, name: str, frm: str) -> None:
            r = self.view.get(name)
            on_dead(self, now, inc, name, frm)
            r2 = self.view.get(name)
            if frm not in (self.name, name) and r is not None and r2 is not None and r.state < DEAD <= r2.state:
                w.dead_believed.append((now, self.name, name, inc, frm))

        M._on_suspect, M._merge, M._on_suspicion_timeout = _on_suspect, _merge, _on_suspicion_timeout  # type: ignore[method-assign]
        M._on_alive, M._refute, M._on_dead = _on_alive, _refute, _on_dead  # type: ignore[method-assign]
        pause = Sim._pause

        def _pause(sim: Sim, m: SimMember, t: float) -> None:
            was = m.lag
            pause(sim, m, t)
            if m.lag and not was:
                w.lags[m.name].append([t, None])
            elif was and not m.lag:
                w.lags[m.name][-1][1] = t

        Sim._pause = _pause  # type: ignore[method-assign]

    def lagging(self, name: str, t: float, delay: float) -> bool:
        return any(a is not None and a <= t and (b is None or t < b + delay) for a, b in self.lags.get(name, []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--delay", type=float, default=20.0)
    ap.add_argument("--plain", action="store_true", help="Lifeguard off (plain SWIM)")
    args = ap.parse_args()
    w = Watch()
    w.install()
    cpu0 = time.process_time()
    sim = Sim(args.size, seed=args.seed, timings=LAN.plain_swim() if args.plain else LAN,
              network=Network(loss=0.01), encode=False)
    for i in range(0, sim.n, 20):
        sim.slow(i, SlowPattern(seconds=args.delay, every=(30.0, 90.0), kind="lag", length=30.0))
    sim.run(args.seconds)
    slow = {m.name for m in sim.members if m.slow is not None}
    st = sim.stats
    healthy = [v for v in w.verdicts if v[2] not in slow]
    print(f"{args.size} members, {args.seconds:g} simulated s, seed {args.seed}, "
          f"{'plain SWIM' if args.plain else 'Lifeguard'}: {len(st.false_incidents) - st.false_slow} healthy and "
          f"{st.false_slow} slow members falsely dead; {len(healthy)} verdicts on healthy members, "
          f"{sum(v[1] in slow for v in healthy)} by slow observers "
          f"({sum(w.lagging(v[1], v[0], args.delay) for v in healthy)} lagging then); dead messages about "
          f"healthy members believed by others: {sum(1 for d in w.dead_believed if d[2] not in slow)}; "
          f"cpu {time.process_time() - cpu0:.0f} s")
    for t, obs, tgt, inc, accusers, start, deadline in healthy:
        tag = " (slow, lagging)" if w.lagging(obs, t, args.delay) else " (slow)" if obs in slow else ""
        print(f"\n{t:8.2f} {obs}{tag} declared {tgt} (incarnation {inc}) dead: suspicion from {start:.2f}, "
              f"timeout {deadline - start:.1f} s, accuser and confirmers {accusers}")
        for e in [e for e in w.suspicions[(obs, tgt)] if start <= e[0] <= t]:
            print(f"         {e[0]:8.2f} {e[4]:<7} from {e[2]}{' (slow)' if e[2] in slow else ''} by {e[3]}")
            if e[4] == "confirm" and e[2] is not None:
                for f in [f for f in w.suspicions[(e[2], tgt)] if f[0] <= e[0]]:
                    print(f"             at {e[2]}: {f[0]:8.2f} {f[4]:<7} from {f[2]} by {f[3]}")
        print(f"         {tgt} refuted at {[(round(a, 2), b) for a, b in w.refutes[tgt] if a < t + 30]}; "
              f"{obs} read it at {[round(w.alive_seen[(obs, tgt, k)], 2) for k in range(inc + 1, inc + 4) if (obs, tgt, k) in w.alive_seen]}; "
              f"others that believed the dead message: {sum(1 for d in w.dead_believed if d[2] == tgt and d[3] == inc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
