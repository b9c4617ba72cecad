"""The pure Vivaldi core: coordinates converge on a simulated network's round-trip times, as Serf's do."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from proconsul.agent.cluster.vivaldi import Client, Coordinate, CoordinateError, distance, sort_by_distance


def simulate(positions: list[tuple[float, float]], rounds: int, seed: int, jitter: float = 0.0) -> list[Client]:
    """Every node samples a random peer each round; the true RTT is the planar distance (seconds)."""
    rng = random.Random(seed)
    clients = [Client() for _ in positions]
    for _ in range(rounds):
        for i, me in enumerate(clients):
            j = rng.randrange(len(clients) - 1)
            j += j >= i
            true_rtt = math.dist(positions[i], positions[j]) + 0.0005  # plus a fixed per-hop cost
            sample = true_rtt * (1 + rng.uniform(-jitter, jitter))
            me.update(f"n{j}", clients[j].coord, sample, rng)
    return clients


def relative_errors(positions: list[tuple[float, float]], clients: list[Client]) -> list[float]:
    out = []
    for i in range(len(clients)):
        for j in range(i + 1, len(clients)):
            true_rtt = math.dist(positions[i], positions[j]) + 0.0005
            out.append(abs(distance(clients[i].coord, clients[j].coord) - true_rtt) / true_rtt)
    return out


def test_coordinates_converge_on_a_grid() -> None:
    positions = [(x * 0.010, y * 0.010) for x in range(5) for y in range(5)]  # 10 ms grid, 25 nodes
    clients = simulate(positions, rounds=200, seed=7)
    errors = relative_errors(positions, clients)
    assert statistics.median(errors) < 0.15, statistics.median(errors)
    assert max(c.coord.error for c in clients) < 0.5  # every node is confident in its coordinate now


def test_noise_does_not_stop_convergence_and_same_seed_replays() -> None:
    rng = random.Random(3)
    positions = [(rng.uniform(0, 0.08), rng.uniform(0, 0.08)) for _ in range(20)]
    a = simulate(positions, rounds=250, seed=11, jitter=0.2)
    assert statistics.median(relative_errors(positions, a)) < 0.25
    b = simulate(positions, rounds=250, seed=11, jitter=0.2)
    assert [c.coord for c in a] == [c.coord for c in b]  # pure: time and randomness come in as arguments


def test_samples_and_coordinates_are_checked() -> None:
    with pytest.raises(CoordinateError):
        Client().update("x", Coordinate(), -1.0, random.Random(1))
    with pytest.raises(CoordinateError):
        Client().update("x", Coordinate(), float("nan"), random.Random(1))
    with pytest.raises(CoordinateError, match="8 numbers"):
        Coordinate.from_json({"Vec": [0.0] * 3})
    with pytest.raises(CoordinateError, match="finite"):
        Coordinate.from_json({"Vec": [0.0] * 8, "Error": float("inf")})
    c = Coordinate((0.001,) * 8, 0.3, 0.0001, 0.00002)
    assert Coordinate.from_json(c.to_json()) == c


def test_sort_by_distance_puts_unknown_nodes_last_in_their_order() -> None:
    coords = {"a": Coordinate(), "b": Coordinate((0.010,) + (0.0,) * 7), "c": Coordinate((0.002,) + (0.0,) * 7)}
    rows = [{"Node": n} for n in ("x", "b", "y", "c", "a")]
    assert [r["Node"] for r in sort_by_distance(rows, lambda r: r["Node"], coords, "A")] == ["a", "c", "b", "x", "y"]
    assert sort_by_distance(rows, lambda r: r["Node"], coords, "nowhere") == rows
