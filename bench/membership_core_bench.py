"""The membership core's packet path, one checkout against another (is the real agents' hot path slower?).

The simulator's speed-ups touch `membership/core.py` (on_packet split into decode + `on_messages`; the
datagram framing behind `Membership.pack`). Real agents call `on_packet` with bytes from the socket
and send what `codec.packet` frames, so this feeds one core the datagrams a member of a 1,000-member pool
receives — pings it answers, acks of its probes, gossip packets of news (new and already known) — and
times them, loading `membership/` from each checkout given, arms alternated A B A B, CPU seconds per
1,000 datagrams (median of the rounds).

    .venv/bin/python bench/membership_core_bench.py /work/main /work/wt/swimsim --rounds 5
"""

from __future__ import annotations

import argparse
import importlib
import random
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any


def load(checkout: Path, alias: str) -> ModuleType:
    """membership/ of a checkout as a package named `alias` (it imports only itself, relatively)."""
    mod = ModuleType(alias)
    mod.__path__ = [str(checkout / "membership")]  # a namespace package, as in the repo
    sys.modules[alias] = mod
    return mod


def workload(pkg: str, n: int, packets: int, seed: int) -> tuple[Any, list[bytes]]:
    """A core with a view of n members, and the datagrams it will receive (built by the same checkout)."""
    core_m = importlib.import_module(pkg + ".core")
    c = importlib.import_module(pkg + ".codec")
    rng = random.Random(seed)
    me = core_m.Membership("node-00000", "10.0.0.0", 8301, {"role": "node"}, rng=random.Random(seed), label="lan:dc1")
    peers = [(f"node-{i:05d}", f"10.0.{i >> 8}.{i & 255}") for i in range(1, n)]
    me.on_packet(0.0, me.codec.packet([c.alive(0, name, addr, 8301, {"role": "node", "dc": "dc1"})
                                       for name, addr in peers[:1]]))
    for k in range(0, len(peers), 12):  # everyone joins, 12 alive messages a datagram
        me.on_packet(0.0, me.codec.packet([c.alive(0, name, addr, 8301, {"role": "node", "dc": "dc1"})
                                           for name, addr in peers[k:k + 12]]))
    data: list[bytes] = []
    inc = {name: 0 for name, _ in peers}
    for s in range(packets):
        kind = s % 4
        name, addr = peers[rng.randrange(len(peers))]
        if kind == 0:  # a ping we answer
            data.append(me.codec.packet([c.ping(s, "node-00000", name, addr, 8301)]))
        elif kind == 1:  # an ack (of a probe we are not running: counted, dropped), with news piggybacked
            data.append(me.codec.packet([c.ack(s), c.suspect(inc[name], name, "node-00007")]))
        elif kind == 2:  # gossip: a refutation (new news) and ten items we already know
            inc[name] += 1
            known = [c.alive(0, p, a, 8301, {"role": "node", "dc": "dc1"}) for p, a in rng.sample(peers, 10)]
            data.append(me.codec.packet([c.alive(inc[name], name, addr, 8301, {"role": "node", "dc": "dc1"})] + known))
        else:  # an indirect ping for someone
            data.append(me.codec.packet([c.indirect_ping(s, name, addr, 8301, True, "node-00009", "10.0.0.9", 8301)]))
    me.out.clear()
    me.timers.clear()
    me.events.clear()
    return me, data


def arm(pkg: str, n: int, packets: int, seed: int) -> float:
    core, data = workload(pkg, n, packets, seed)
    now = 1.0
    t0 = time.process_time()
    for d in data:
        now += 0.0001
        core.on_packet(now, d)
        if len(core.out) > 1000:
            core.out.clear()
            core.timers.clear()
            core.events.clear()
    return (time.process_time() - t0) / len(data) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", type=Path, nargs=2, help="A and B: directories holding membership/")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--packets", type=int, default=40_000)
    args = ap.parse_args()
    pkgs = []
    for k, path in enumerate(args.checkouts):
        load(path.resolve(), f"membership_{k}")
        pkgs.append(f"membership_{k}")
    import os

    print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: list[list[float]] = [[], []]
    for r in range(args.rounds):
        for k, pkg in enumerate(pkgs):
            results[k].append(arm(pkg, args.members, args.packets, seed=r))
    a, b = (statistics.median(x) for x in results)
    for k, path in enumerate(args.checkouts):
        print(f"{path}: {statistics.median(results[k]) * 1000:.1f} ms CPU per 1,000 datagrams "
              f"(rounds: {', '.join(f'{x * 1000:.1f}' for x in results[k])})")
    print(f"B / A = {b / a:.3f}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
