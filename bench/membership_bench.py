"""Membership at scale: SWIM + Lifeguard in the deterministic simulator (PERFORMANCE.md §9).

No memberlist binary runs here and nobody runs 10,000 machines on one, so the pure core is measured in
`membership.sim` (simulated clock and network, seeded). For each pool size n it reports:

- steady-state bytes and packets each member sends per second (1% loss, IP/UDP/TCP headers counted);
- time until a crash is known dead by 99.9% and by 100% of the running members (3 crashes, median);
- time until a join is known by 99.9%;
- false positives — healthy members declared dead (distinct (member, incarnation) incidents, and the
  (observer, member) verdicts) — per member-hour, with 1% loss and 5% of members stalling for 2 s about
  once a minute (every 30–90 s), with Lifeguard on and off (plain SWIM, the peer arm) alternated in the same run;
- CPU seconds of the simulator per simulated member-second, per arm.

The old heartbeat protocol's figures (issue 20) are printed beside them for comparison.

    .venv/bin/python bench/membership_bench.py                      # 100, 1,000, 5,000, 10,000
    .venv/bin/python bench/membership_bench.py --sizes 100 1000 --fp-seconds 600
    # one long false-positive arm across sessions: saved every 60 simulated seconds, resumed later
    .venv/bin/python bench/membership_bench.py --sizes 10000 --no-scale --arm on --fp-seconds 3600 --skip-noop \
        --progress runs/progress.json --checkpoint runs/fp-on.ckpt
    .venv/bin/python bench/membership_bench.py --sizes 10000 --no-scale --arm on --fp-seconds 3600 --skip-noop \
        --progress runs/progress.json --resume runs/fp-on.ckpt
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proconsul.membership import checkpoint as ck
from proconsul.membership.config import LAN
from proconsul.membership.sim import Network, Sim, SlowPattern

REPO = Path(__file__).resolve().parent.parent
# issue 20: the heartbeat protocol's push-pull of whole member lists, measured per member per second
OLD_BYTES_PER_MEMBER_S = {256: 73 * 1024, 512: 148 * 1024, 5000: 1.4 * 2**20, 10000: 2.9 * 2**20}
# Simulated seconds of each false-positive arm. Slow members make every pause a cluster-wide suspicion
# and refutation, so the simulator's work grows with n squared there: the large pools run shorter.
DEFAULT_FP_SECONDS = {100: 3600.0, 1000: 300.0, 5000: 40.0, 10000: 20.0}
PAUSE_EVERY = (30.0, 90.0)  # a slow member pauses for 2 s about once a minute (a GC pause, a starved CPU)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def scale_run(n: int, seed: int, warmup: float = 10.0, window: float = 30.0) -> dict[str, Any]:
    """Traffic in a settled pool, then 3 crashes and a join."""
    cpu0 = time.process_time()
    sim = Sim(n, seed=seed, network=Network(loss=0.01))
    sim.run(warmup)
    sim.reset_traffic()
    sim.run(warmup + window)
    members = sim.n
    bytes_s = sum(sim.bytes_out) / members / window
    packets_s = sum(sim.packets_out) / members / window
    t0 = sim.now
    victims = sim.rng.sample(range(1, n), 3)
    observers = [m.index for m in sim.running() if m.index not in victims]
    for k, v in enumerate(victims):
        sim.at(t0 + 0.37 * k, lambda v=v: sim.crash(v))
    joined: list[int] = []
    sim.at(t0 + 1.0, lambda: joined.append(sim.join(via=sim.rng.choice(observers))))
    end = t0 + 180.0
    while sim.now < end:
        sim.run(sim.now + 5.0)
        if all(known(sim.dead_seen.get(v, {}), sim.crashed_at.get(v, 0.0), observers, 1.0) is not None
               for v in victims) and joined and known(sim.join_seen[joined[0]], t0 + 1.0, observers, 1.0) is not None:
            break
    d999 = [known(sim.dead_seen.get(v, {}), sim.crashed_at[v], observers, 0.999) for v in victims]
    d100 = [known(sim.dead_seen.get(v, {}), sim.crashed_at[v], observers, 1.0) for v in victims]
    j999 = known(sim.join_seen[joined[0]], t0 + 1.0, observers, 0.999)
    sim.check_crashed_dead()
    return {"n": n, "seed": seed, "bytes_per_member_s": bytes_s, "packets_per_member_s": packets_s,
            "detect_999_s": _median(d999), "detect_100_s": _median(d100), "join_999_s": j999,
            "cpu_s": time.process_time() - cpu0, "false_pairs": sim.stats.false_pairs}


def run_sim(sim: Sim, seconds: float, step: float = 20.0,
            each: Callable[[], None] | None = None) -> None:
    """sim.run(seconds) in steps of `step` simulated seconds, with Python's cyclic garbage collector
    held back: the pool's hundreds of thousands of long-lived objects (records, views, queues) made
    every automatic full collection walk them all (~20% of the CPU at 10,000 members with slow
    members: docs/benchmarks.md). The simulator makes little cyclic garbage; it is collected once per step. Neither the
    steps nor the collector change the run (the fingerprint test steps it too)."""
    was = gc.isenabled()
    gc.collect()
    gc.freeze()  # what the pool was built with is never garbage
    gc.disable()
    try:
        while sim.now < seconds:
            sim.run(min(seconds, sim.now + step))
            gc.collect()
            if each is not None:
                each()
    finally:
        gc.unfreeze()
        if was:
            gc.enable()


def slow_down(sim: Sim, pattern: SlowPattern) -> None:
    """5% of the members (every 20th) slow with `pattern` from now on."""
    for i in range(0, sim.n, 20):
        sim.slow(i, pattern)


def fp_run(n: int, seed: int, seconds: float, lifeguard: bool, every: tuple[float, float] = PAUSE_EVERY,
           kind: str = "stall", delay: float = 2.0, length: float = 10.0,
           progress: Path | None = None, skip_noop: bool = False, checkpoint: Path | None = None,
           checkpoint_every: float = 60.0, resume: Path | None = None) -> dict[str, Any]:
    """False positives with 1% loss and 5% of members slow now and then: kind "stall" (they stop for
    `delay` seconds), or "lag" (for `length` seconds they handle every datagram `delay` seconds late,
    acks of their own probes included, while their timers keep time: slow observers).

    With `progress`, the figures so far are written beside it (one file per arm) as JSON every 20
    simulated seconds: a long run that cannot finish still reports the span it covered (running in
    steps is the same run, event for event). With `checkpoint`, the whole run is saved there (msgpack,
    membership/checkpoint.py) every `checkpoint_every` simulated seconds and at the end; `resume`
    continues a saved run — the same run as if it had never stopped, its CPU seconds carried over."""
    cpu = [time.process_time()]  # the simulator's CPU is process_time() - cpu[0] (checkpointing not counted)
    run = {"bench": "membership fp", "n": n, "seed": seed, "lifeguard": lifeguard, "kind": kind, "delay": delay,
           "length": length, "every": list(every), "skip_noop": skip_noop}
    if resume is not None:
        sim, meta = ck.load(resume, expect=run)
        cpu[0] -= meta["cpu_s"]
    else:
        timings = LAN if lifeguard else LAN.plain_swim()
        sim = Sim(n, seed=seed, timings=timings, network=Network(loss=0.01), encode=False, skip_noop=skip_noop)
        slow_down(sim, SlowPattern(seconds=delay, every=every, kind=kind, length=length))
    saved = [sim.now]

    def save(path: Path) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        size = ck.save(sim, path, {**run, "cpu_s": c0 - cpu[0]})
        cpu[0] += time.process_time() - c0
        saved[0] = sim.now
        print(f"  checkpoint at {sim.now:.0f} simulated s: {path} ({size / 2**20:.1f} MiB, "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)

    def each() -> None:
        if progress is not None:  # one file per arm: <stem>-n<n>-<on|off><suffix>
            part = _fp_figures(sim, n, seed, sim.now, lifeguard, kind, delay, length, every, cpu[0])
            arm = progress.with_name(f"{progress.stem}-n{n}-{'on' if lifeguard else 'off'}{progress.suffix}")
            arm.write_text(json.dumps({"partial": part, "load": load()}, indent=1))
        if checkpoint is not None and sim.now >= saved[0] + checkpoint_every:
            save(checkpoint)

    run_sim(sim, seconds, each=each)
    if checkpoint is not None and saved[0] < sim.now:
        save(checkpoint)
    return _fp_figures(sim, n, seed, seconds, lifeguard, kind, delay, length, every, cpu[0])


def _fp_figures(sim: Sim, n: int, seed: int, seconds: float, lifeguard: bool, kind: str, delay: float,
                length: float, every: tuple[float, float], cpu0: float) -> dict[str, Any]:
    cpu = time.process_time() - cpu0
    member_hours = n * seconds / 3600.0
    st = sim.stats
    healthy = len(st.false_incidents) - st.false_slow
    return {"n": n, "seed": seed, "lifeguard": lifeguard, "seconds": seconds, "member_hours": member_hours,
            "kind": kind, "delay": delay, "length": length, "every": list(every),
            "incidents": len(st.false_incidents), "healthy_incidents": healthy, "slow_incidents": st.false_slow,
            "healthy_seen_by_healthy": len(st.false_seen_by_healthy),
            "pairs": st.false_pairs, "per_member_hour": len(st.false_incidents) / member_hours,
            "healthy_per_member_hour": healthy / member_hours, "suspicions": st.suspicions,
            "refutes": st.refutes, "cpu_s": cpu, "cpu_per_member_s": cpu / (n * seconds),
            "skip_noop": sim.skip_noop, "datagrams": st.datagrams, "skipped_datagrams": st.skipped_datagrams,
            "skipped_messages": st.skipped_messages}


# --speed arms: (datagrams encoded, collector held back while it runs, news that changes nothing skipped)
SPEED_ARMS = {"encoded": (True, True, False), "decoded": (False, True, False), "decoded-gc": (False, False, False),
              "skip": (False, True, True)}


def speed_run(n: int, seconds: float, rounds: int, slow: bool, arms: list[str]) -> dict[str, Any]:
    """The simulator's own speed: CPU seconds per simulated second, alternated A B A B on the same seed.
    Arms: datagrams encoded (every delivery decoded by msgpack) or decoded messages handed over, with
    the cyclic garbage collector held back (run_sim, as the benchmark runs) or left to its defaults."""
    out: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(rounds):
        for arm in arms:
            encode, held, skip = SPEED_ARMS[arm]
            cpu0 = time.process_time()
            sim = Sim(n, seed=1, network=Network(loss=0.01), encode=encode, skip_noop=skip)
            if slow:
                slow_down(sim, SlowPattern(seconds=2.0, every=PAUSE_EVERY))
            built = time.process_time()
            if held:
                run_sim(sim, seconds)
            else:
                sim.run(seconds)
            cpu = time.process_time() - built
            out[arm].append(cpu / seconds)
            st = sim.stats
            print(f"  speed n={n} {arm}: build {built - cpu0:.1f} s, {cpu / seconds:.3f} CPU s per simulated second; "
                  f"{st.datagrams:,} datagrams, {st.skipped_datagrams:,} not delivered, {st.skipped_messages:,} "
                  f"news messages skipped; {st.suspicions:,} suspect events, {st.refutes} refutes; load {load()}",
                  flush=True)
    return {"n": n, "seconds": seconds, "slow": slow, **{k: statistics.median(v) for k, v in out.items()},
            "rounds": rounds}


def known(seen: dict[int, float], since: float, observers: list[int], fraction: float) -> float | None:
    """Seconds until `fraction` of `observers` had seen it (None: not that many did)."""
    need = max(1, math.ceil(fraction * len(observers) - 1e-9))
    times = sorted(seen[i] - since for i in observers if i in seen)
    return times[need - 1] if len(times) >= need else None


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if len(vals) == len(xs) else None


def _fmt(x: float | None, unit: str = "s") -> str:
    return "—" if x is None else f"{x:.1f} {unit}".strip()


def _fp(arm: dict[str, Any] | None) -> str:
    if arm is None:
        return "—"
    if "healthy_incidents" in arm:  # healthy victims, then the slow members themselves
        return (f"{arm['healthy_per_member_hour']:.4f} ({arm['healthy_incidents']} healthy + {arm['slow_incidents']} "
                f"slow in {arm['member_hours']:,.0f} member-h)")
    return f"{arm['per_member_hour']:.4f} ({arm['incidents']} in {arm['member_hours']:,.0f} member-h)"


def plot(rows: list[dict[str, Any]], fps: dict[int, dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install '.[bench]'): no plot drawn")
        return False
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].plot(ns, [r["detect_999_s"] for r in rows], "o-", label="crash known by 99.9%")
    ax[0].plot(ns, [r["detect_100_s"] for r in rows], "s-", label="crash known by 100%")
    ax[0].plot(ns, [r["join_999_s"] for r in rows], "^-", label="join known by 99.9%")
    ax[0].set(xscale="log", xlabel="members", ylabel="seconds", title="Detection and join")
    ax[0].legend()
    ax[1].plot(ns, [r["bytes_per_member_s"] / 1024 for r in rows], "o-", label="SWIM + Lifeguard")
    old = sorted(OLD_BYTES_PER_MEMBER_S.items())
    ax[1].plot([k for k, _ in old], [v / 1024 for _, v in old], "x--", label="old heartbeat push-pull")
    ax[1].set(xscale="log", yscale="log", xlabel="members", ylabel="KiB/s sent per member", title="Traffic")
    ax[1].legend()
    fns = sorted(fps)
    on = [fps[k]["on"].get("healthy_per_member_hour", fps[k]["on"]["per_member_hour"]) for k in fns]
    off = [fps[k]["off"].get("healthy_per_member_hour", fps[k]["off"]["per_member_hour"]) for k in fns]
    ax[2].plot(fns, off, "s--", label="plain SWIM")
    ax[2].plot(fns, on, "o-", label="Lifeguard")
    for k, v in zip(fns, off, strict=True):
        ax[2].annotate(f"{v:.1f}", (k, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    any_arm = fps[fns[0]]["on"] if fns else {}
    if any_arm.get("kind") == "lag":
        title = f"slow observers (5%, {any_arm['delay']:g} s lag), 1% loss"
    else:
        title = "1% loss, 5% members with 2 s pauses"
    ax[2].set(xscale="log", yscale="symlog", xlabel="members", ylabel="healthy members falsely dead per member-hour",
              title=title)
    ax[2].set_ylim(bottom=0)
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fp-seconds", type=float, default=None, help="simulated seconds of each false-positive arm")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "membership-sim.png")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--progress", type=Path, default=None,
                    help="write each false-positive arm's figures so far beside this path "
                         "(PATH-n<n>-<arm>.json) every 20 simulated seconds")
    ap.add_argument("--pause-every", type=float, nargs=2, default=PAUSE_EVERY, metavar=("LO", "HI"),
                    help="seconds between a slow member's 2 s pauses (uniform)")
    ap.add_argument("--no-scale", action="store_true", help="skip the traffic/detection/join run")
    ap.add_argument("--arm", choices=["on", "off", "both", "none"], default="both",
                    help="false-positive arms to run (none: only the traffic/detection/join run)")
    ap.add_argument("--slow-kind", choices=["stall", "lag"], default="stall",
                    help="stall: slow members stop for --delay s; lag: they handle datagrams --delay s late "
                         "for --lag-length s (Lifeguard's slow observers)")
    ap.add_argument("--delay", type=float, default=2.0, help="seconds of a stall, or of the lag")
    ap.add_argument("--lag-length", type=float, default=10.0, help="seconds a lag episode lasts")
    ap.add_argument("--rounds", type=int, default=None, help="false-positive rounds (seeds) per arm")
    ap.add_argument("--speed", type=float, default=None, metavar="SECONDS",
                    help="only time the simulator (see --speed-arms) for this many simulated seconds")
    ap.add_argument("--speed-arms", nargs="+", choices=list(SPEED_ARMS), default=list(SPEED_ARMS),
                    help="with --speed: encoded or decoded datagrams, -gc: the collector left to its defaults")
    ap.add_argument("--skip-noop", action="store_true",
                    help="false-positive arms: do not hand members news they are certain to ignore (the same run, "
                         "fewer deliveries: docs/membership.md)")
    ap.add_argument("--speed-slow", action="store_true", help="with --speed: 5%% of members pausing as in the FP runs")
    ap.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                    help="false-positive arm: save the whole run to PATH (msgpack) every --checkpoint-every simulated "
                         "seconds and at the end (one size, one arm, one round)")
    ap.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                    help="simulated seconds between checkpoints (default 60)")
    ap.add_argument("--resume", type=Path, default=None, metavar="PATH",
                    help="continue the false-positive run saved in PATH (the same run as if it had not stopped); "
                         "checkpoints go on to PATH unless --checkpoint says otherwise")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="only print the table and draw the plot from the --json files of earlier runs")
    args = ap.parse_args()
    if args.resume is not None and args.checkpoint is None:
        args.checkpoint = args.resume
    if args.checkpoint is not None and (len(args.sizes) != 1 or args.arm not in ("on", "off") or not args.no_scale
                                        or (args.rounds or 1) != 1 or args.speed or args.merge):
        print("membership_bench: --checkpoint/--resume need one size, --arm on or off, --no-scale and one round",
              file=sys.stderr)
        return 1
    print(f"load {load()}; {os.cpu_count()} CPUs", flush=True)
    if args.speed:
        res = [speed_run(n, args.speed, args.rounds or 2, args.speed_slow, args.speed_arms) for n in args.sizes]
        for r in res:
            print(f"n={r['n']}: " + ", ".join(f"{arm} {r[arm]:.3f}" for arm in args.speed_arms)
                  + " CPU s per simulated second (medians)")
        if args.json:
            args.json.write_text(json.dumps({"speed": res, "load": load()}, indent=1))
        return 0
    rows: list[dict[str, Any]] = []
    fps: dict[int, dict[str, Any]] = {}
    for path in args.merge or []:  # later files win, per size and arm
        data = json.loads(path.read_text())
        rows = [r for r in rows if r["n"] not in {x["n"] for x in data["scale"]}] + data["scale"]
        for k, v in data["false_positives"].items():
            fps.setdefault(int(k), {}).update(v)
    rows.sort(key=lambda r: r["n"])
    for n in [] if args.merge else args.sizes:
        r = None if args.no_scale else scale_run(n, args.seed)
        if r is not None:
            rows.append(r)
            print(f"n={n}: {r['bytes_per_member_s']:.0f} B/s and {r['packets_per_member_s']:.2f} packets/s per member; "
                  f"crash known by 99.9% in {_fmt(r['detect_999_s'])}, 100% in {_fmt(r['detect_100_s'])}; "
                  f"join by 99.9% in {_fmt(r['join_999_s'])}; cpu {r['cpu_s']:.1f} s; load {load()}", flush=True)
        seconds = args.fp_seconds or DEFAULT_FP_SECONDS.get(n, 600.0)
        rounds = 0 if args.arm == "none" else args.rounds or (1 if args.checkpoint else 3 if n * seconds <= 1000 * 3600 and n <= 1000 else 1)
        arms: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for k in range(rounds):  # A B A B: Lifeguard, then plain SWIM, same seed per round
            for arm, lg in (("on", True), ("off", False)):
                if args.arm not in ("both", arm):
                    continue
                try:
                    f = fp_run(n, args.seed + k, seconds, lg, tuple(args.pause_every), args.slow_kind, args.delay,
                               args.lag_length, progress=args.progress, skip_noop=args.skip_noop,
                               checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                               resume=args.resume)
                except ck.CheckpointError as e:
                    print(f"membership_bench: {e}", file=sys.stderr)
                    return 1
                arms[arm].append(f)
                print(f"  n={n} {args.slow_kind} {args.delay:g}s lifeguard={arm} seed={f['seed']}: "
                      f"{f['incidents']} false incidents ({f['healthy_incidents']} of healthy members, "
                      f"{f['healthy_seen_by_healthy']} of them declared by a member that was not slow) "
                      f"({f['pairs']} verdicts) in {f['member_hours']:.0f} member-hours, {f['suspicions']} "
                      f"suspicions, {f['refutes']} refutes; cpu {f['cpu_s']:.1f} s "
                      f"({f['cpu_per_member_s'] * 1e6:.1f} µs per member-second); load {load()}", flush=True)
        fps[n] = {}
        for arm, runs in arms.items():
            if not runs:
                continue
            fps[n][arm] = {
                "per_member_hour": statistics.median(x["per_member_hour"] for x in runs),
                "incidents": sum(x["incidents"] for x in runs), "pairs": sum(x["pairs"] for x in runs),
                "healthy_incidents": sum(x["healthy_incidents"] for x in runs),
                "healthy_seen_by_healthy": sum(x.get("healthy_seen_by_healthy", 0) for x in runs),
                "slow_incidents": sum(x["slow_incidents"] for x in runs),
                "healthy_per_member_hour": statistics.median(x["healthy_per_member_hour"] for x in runs),
                "kind": args.slow_kind, "delay": args.delay, "length": args.lag_length,
                "every": list(args.pause_every), "seconds": seconds,
                "member_hours": sum(x["member_hours"] for x in runs),
                "cpu_per_member_s": statistics.median(x["cpu_per_member_s"] for x in runs), "rounds": len(runs)}
    print("\n| members | bytes/s per member | packets/s per member | old protocol | crash → 99.9% | → 100% "
          "| join → 99.9% | false +/member-h Lifeguard | plain SWIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["n"]
        old = OLD_BYTES_PER_MEMBER_S.get(n)
        arms_n = fps.get(n, {})
        print(f"| {n:,} | {r['bytes_per_member_s']:.0f} B | {r['packets_per_member_s']:.2f} | "
              f"{'—' if old is None else f'{old / 1024:,.0f} KiB'} | {_fmt(r['detect_999_s'])} | "
              f"{_fmt(r['detect_100_s'])} | {_fmt(r['join_999_s'])} | {_fp(arms_n.get('on'))} | "
              f"{_fp(arms_n.get('off'))} |")
    complete = {n: v for n, v in fps.items() if "on" in v and "off" in v}
    if rows and plot(rows, complete, args.plot):
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"scale": rows, "false_positives": fps, "load": load()}, indent=1))
    print(f"load {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
