"""Deterministic simulation of whole clusters of the Raft core (see consensus/sim.py).

Every seed runs a random fault schedule (loss, duplication, reordering, delay, partitions, crashes
and restarts from durable state, membership changes, transfers, snapshots, reads) with safety
invariants checked after every event, then heals and demands liveness. A failing seed names
itself; replay exactly one with:

    PROCONSUL_SIM_SEED=1234 .venv/bin/python -m pytest tests/consensus/test_simulation.py -q
"""

from __future__ import annotations

import os

import pytest

from proconsul.consensus.sim import Simulator

DEFAULT_SEEDS = 1000
CHUNK = 100
DURATION = 1000  # simulated time units per seed before healing (100 ticks of each server)


def run_seed(seed: int, duration: int = DURATION, spares: int | None = None) -> Simulator:
    sim = Simulator(seed, voters=3 if seed % 2 else 5, spares=1 + seed % 2 if spares is None else spares)
    try:
        sim.run(duration)
        sim.check_log_matching()
        sim.check_liveness()
    except AssertionError as exc:
        raise AssertionError(
            f"simulation seed {seed} failed: {exc}\n{sim.describe()}\n"
            f"replay: PROCONSUL_SIM_SEED={seed} .venv/bin/python -m pytest tests/consensus/test_simulation.py -q"
        ) from exc
    return sim


def _seeds() -> list[range]:
    one = os.environ.get("PROCONSUL_SIM_SEED")
    if one:
        return [range(int(one), int(one) + 1)]
    total = int(os.environ.get("PROCONSUL_SIM_SEEDS", DEFAULT_SEEDS))
    return [range(lo, min(lo + CHUNK, total)) for lo in range(0, total, CHUNK)]


@pytest.mark.parametrize("seeds", _seeds(), ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_simulated_clusters_stay_safe_and_live(seeds: range) -> None:
    for seed in seeds:
        run_seed(seed)


# Seeds that once found a bug (kept so that the bug stays fixed).
REGRESSIONS = [
    # (seed, spares, duration)
    (21381, 1, 3000),  # a leader's own uncommitted removal left no server able to win an election
]


@pytest.mark.parametrize(("seed", "spares", "duration"), REGRESSIONS)
def test_regression_seeds(seed: int, spares: int, duration: int) -> None:
    run_seed(seed, duration=duration, spares=spares)


def test_a_seed_replays_exactly() -> None:
    a, b = run_seed(4242), run_seed(4242)
    assert a.trace == b.trace and a.stats == b.stats and a.events == b.events
    assert a.digest_at == b.digest_at


def test_the_simulation_exercises_every_fault() -> None:
    totals: dict[str, int] = {}
    for seed in range(60):
        for k, v in run_seed(seed).stats.items():
            totals[k] = totals.get(k, 0) + v
    for kind in ("crash", "restart", "partition", "dropped", "proposals", "snapshots", "conf_changes",
                 "transfers", "reads"):
        assert totals.get(kind, 0) > 0, f"no {kind} in 60 seeds: {totals}"


@pytest.mark.slow
def test_simulation_soak() -> None:
    total = int(os.environ.get("PROCONSUL_SIM_SOAK_SEEDS", 20_000))
    for seed in range(100_000, 100_000 + total):
        run_seed(seed, duration=5000)
