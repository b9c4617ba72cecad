"""Network coordinates from probe RTTs: what a probe's measurement costs and how good the estimates get.

N members at random points of a plane (RTT = distance + 0.5 ms per hop, ±10% jitter) probe random
peers, as SWIM's round-robin does; every ack carries the target's coordinate and every sample goes
through `ProbeCoordinates.on_rtt` (decode the ack payload, Vivaldi step, encode the new payload).
Arms, alternated over rounds: that whole path, and the bare Vivaldi step (`vivaldi.Client.update`,
the algorithm alone) on the same samples. Reports CPU µs per sample (process time), the ack's size
with and without a coordinate, and the median relative error of the estimated RTTs afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

from proconsul.agent.cluster.coordinates import ProbeCoordinates
from proconsul.agent.cluster.vivaldi import Client, distance
from proconsul.membership import codec as c

HERE = Path(__file__).resolve().parent


def plane(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(rng.uniform(0, 0.05), rng.uniform(0, 0.05)) for _ in range(n)]


def samples(pos: list[tuple[float, float]], count: int, seed: int) -> list[tuple[int, int, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.sample(range(len(pos)), 2)
        out.append((a, b, (math.dist(pos[a], pos[b]) + 0.0005) * rng.uniform(0.9, 1.1)))
    return out


def arm_probe(pos: list[tuple[float, float]], work: list[tuple[int, int, float]]) -> tuple[float, list]:
    members = [ProbeCoordinates(random.Random(i)) for i in range(len(pos))]
    t0 = time.process_time()
    for a, b, rtt in work:
        members[a].on_rtt(f"n{b}", rtt, members[b].payload())
    return time.process_time() - t0, [m.coord for m in members]


def arm_bare(pos: list[tuple[float, float]], work: list[tuple[int, int, float]]) -> tuple[float, list]:
    clients = [Client() for _ in pos]
    rng = random.Random(1)
    t0 = time.process_time()
    for a, b, rtt in work:
        clients[a].update(f"n{b}", clients[b].coord, rtt, rng)
    return time.process_time() - t0, [cl.coord for cl in clients]


def rel_error(pos: list[tuple[float, float]], coords: list) -> float:
    errs = []
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            true = math.dist(pos[i], pos[j]) + 0.0005
            errs.append(abs(distance(coords[i], coords[j]) - true) / true)
    return statistics.median(errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pos = plane(args.members, 1)
    work = samples(pos, args.samples, 2)
    cpu: dict[str, list[float]] = {"probe": [], "bare": []}
    errors: dict[str, list[float]] = {"probe": [], "bare": []}
    for _ in range(args.rounds):
        for name, arm in (("probe", arm_probe), ("bare", arm_bare)):
            spent, coords = arm(pos, work)
            cpu[name].append(spent / len(work) * 1e6)
            errors[name].append(rel_error(pos, coords))
    payload = ProbeCoordinates(random.Random(0)).payload()
    result = {
        "members": args.members, "samples": args.samples, "rounds": args.rounds,
        "cpu_us_per_sample": {k: statistics.median(v) for k, v in cpu.items()},
        "median_relative_error": {k: statistics.median(v) for k, v in errors.items()},
        "ack_bytes": {"with_coordinate": len(c.ack(1, payload)), "without": len(c.ack(1))},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "coordinates.json").write_text(json.dumps(result, indent=2))
    p, b = result["cpu_us_per_sample"]["probe"], result["cpu_us_per_sample"]["bare"]
    print(f"CPU per sample: probe path {p:.1f} us, bare Vivaldi step {b:.1f} us ({p / b:.2f}x); "
          f"CPU per 1,000 samples {p:.1f} ms vs {b:.1f} ms")
    print(f"median relative RTT error after {args.samples} samples: probe path "
          f"{result['median_relative_error']['probe']:.3f}, bare {result['median_relative_error']['bare']:.3f}")
    print(f"ack: {result['ack_bytes']['with_coordinate']} bytes with the coordinate, "
          f"{result['ack_bytes']['without']} without")


if __name__ == "__main__":
    main()
