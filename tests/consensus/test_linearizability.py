"""The WGL linearizability checker (tests/linearizability.py) both passes and fails histories.

Hand-written histories pin down the semantics (real-time order, cas, indeterminate operations);
hypothesis builds histories that are linearizable by construction (a real atomic register applied at
a point inside each operation's interval) and then breaks them, and compares the checker with a
brute-force search on tiny arbitrary histories.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linearizability import CheckResult, Op, check, describe

NEVER_WRITTEN = "never-written"


def put(client: int, key: str, value: str, invoke: float, complete: float | None) -> Op:
    return Op(client, "put", key, value, None, invoke, complete, True)


def get(client: int, key: str, result: str | None, invoke: float, complete: float) -> Op:
    return Op(client, "get", key, None, None, invoke, complete, result)


def cas(client: int, key: str, expect: str | None, new: str, invoke: float, complete: float | None,
        result: bool | None) -> Op:
    return Op(client, "cas", key, new, expect, invoke, complete, result)


def assert_not_linearizable(result: CheckResult, key: str) -> None:
    assert not result.ok and not result.unknown, result
    assert result.key == key
    assert f"key {key!r} is not linearizable" in result.reason
    assert result.stuck is not None and describe(result.stuck) in result.reason


# ---------------------------------------------------------------------------------------- linearizable


def test_empty_history_is_linearizable() -> None:
    assert check([]) == CheckResult(ok=True)


def test_sequential_history() -> None:
    h = [
        get(1, "k", None, 0, 1),
        put(1, "k", "a", 2, 3),
        get(2, "k", "a", 4, 5),
        put(2, "k", "b", 6, 7),
        get(1, "k", "b", 8, 9),
    ]
    result = check(h)
    assert result.ok and result.key is None and not result.unknown and result.reason == ""


@pytest.mark.parametrize("seen", [None, "a"])
def test_read_concurrent_with_put_may_see_either_value(seen: str | None) -> None:
    h = [put(1, "k", "a", 0, 10), get(2, "k", seen, 2, 3)]
    assert check(h).ok


def test_concurrent_puts_then_reads_agree_on_one_order() -> None:
    h = [
        put(1, "k", "a", 0, 10),
        put(2, "k", "b", 0, 10),
        get(3, "k", "b", 1, 2),  # b first ...
        get(3, "k", "a", 3, 4),  # ... then a overwrote it
        get(4, "k", "a", 11, 12),
    ]
    assert check(h).ok


def test_equal_times_count_as_concurrent() -> None:
    # The read is invoked at the very instant the put's response arrived: not strictly after it.
    assert check([put(1, "k", "a", 0, 5), get(2, "k", None, 5, 6)]).ok


def test_cas_success_and_failure() -> None:
    h = [
        cas(1, "k", None, "a", 0, 1, True),  # absent -> a
        cas(2, "k", None, "b", 2, 3, False),  # no longer absent
        cas(1, "k", "a", "b", 4, 5, True),
        cas(2, "k", "a", "c", 6, 7, False),
        get(1, "k", "b", 8, 9),
    ]
    assert check(h).ok


def test_concurrent_cas_with_same_expect_one_wins() -> None:
    h = [
        put(1, "k", "0", 0, 1),
        cas(1, "k", "0", "1", 2, 5, True),
        cas(2, "k", "0", "2", 2, 5, False),
        get(3, "k", "1", 6, 7),
    ]
    assert check(h).ok


def test_indeterminate_put_later_observed() -> None:
    h = [put(1, "k", "a", 0, None), get(2, "k", None, 1, 2), get(2, "k", "a", 50, 51)]
    assert check(h).ok


def test_indeterminate_put_never_observed() -> None:
    h = [put(1, "k", "a", 0, None), get(2, "k", None, 5, 6), get(2, "k", None, 7, 8)]
    assert check(h).ok


def test_indeterminate_cas_may_take_effect_or_not() -> None:
    base = [put(1, "k", "a", 0, 1), cas(2, "k", "a", "b", 2, None, None)]
    assert check([*base, get(3, "k", "b", 5, 6)]).ok
    assert check([*base, get(3, "k", "a", 5, 6)]).ok


def test_indeterminate_get_is_ignored() -> None:
    h = [put(1, "k", "a", 0, 1), Op(2, "get", "k", None, None, 2, None, "garbage")]
    assert check(h).ok


def test_keys_are_independent() -> None:
    h = [put(1, "x", "a", 0, 1), get(2, "y", None, 2, 3), get(2, "x", "a", 4, 5)]
    assert check(h).ok


# ------------------------------------------------------------------------------------ not linearizable


def test_stale_read_after_completed_put() -> None:
    h = [put(1, "k", "a", 0, 1), get(2, "k", None, 2, 3)]
    result = check(h)
    assert_not_linearizable(result, "k")
    assert result.stuck == h[1]


def test_two_successful_cas_with_same_expect() -> None:
    h = [
        put(1, "k", "0", 0, 1),
        cas(1, "k", "0", "1", 2, 5, True),
        cas(2, "k", "0", "2", 2, 5, True),
    ]
    assert_not_linearizable(check(h), "k")


def test_read_of_value_never_written() -> None:
    h = [put(1, "k", "a", 0, 1), get(2, "k", "zzz", 2, 3), put(1, "k", "b", 2, 4)]
    result = check(h)
    assert_not_linearizable(result, "k")
    assert result.stuck == h[1]
    assert "'zzz'" in result.reason


def test_read_goes_backwards() -> None:
    h = [
        put(1, "k", "old", 0, 1),
        put(1, "k", "new", 2, 10),
        get(2, "k", "new", 3, 4),
        get(2, "k", "old", 5, 6),  # after seeing new, in real time
    ]
    result = check(h)
    assert_not_linearizable(result, "k")
    assert result.stuck == h[3]
    # The longest prefix got as far as the first read of "new".
    assert result.prefix == (h[0], h[1], h[2])
    assert "leaving the value 'new'" in result.reason


def test_indeterminate_put_cannot_be_undone() -> None:
    h = [put(1, "k", "a", 0, None), get(2, "k", "a", 5, 6), get(2, "k", None, 7, 8)]
    assert_not_linearizable(check(h), "k")


def test_failed_cas_must_not_see_its_expected_value() -> None:
    h = [put(1, "k", "a", 0, 1), cas(2, "k", "a", "b", 2, 3, False)]
    assert_not_linearizable(check(h), "k")


def test_failure_names_the_first_failing_key() -> None:
    h = [
        put(1, "good", "a", 0, 1),
        put(1, "bad", "a", 2, 3),
        get(2, "good", "a", 4, 5),
        get(2, "bad", None, 4, 5),
        get(3, "worse", "x", 6, 7),
    ]
    assert_not_linearizable(check(h), "bad")


def test_timeout_reports_unknown() -> None:
    result = check([put(1, "k", "a", 0, 1)], timeout=0)
    assert not result.ok and result.unknown and result.key == "k" and "timed out" in result.reason


@pytest.mark.parametrize("bad", [
    Op(1, "delete", "k", None, None, 0, 1, True),
    Op(1, "put", "k", "a", None, 2, 1, True),
    Op(1, "cas", "k", "a", "b", 0, 1, "yes"),
    Op(1, "get", "k", None, None, float("nan"), 1, None),
])
def test_malformed_operations_are_rejected(bad: Op) -> None:
    with pytest.raises(ValueError):
        check([bad])


# ------------------------------------------------------------------- histories linearizable by construction

KEYS = ["k0", "k1", "k2", "k3"]
VALUES = ["a", "b", "c"]

# client, kind (0 get, 1 put, 2 cas), key index, value index, cas expect choice, gap before invoke,
# duration, linearization point offset (clamped to the duration), fate (0 answered, 1 no response but
# took effect, 2 no response and never took effect).
Step = tuple[int, int, int, int, int, int, int, int, int]


def simulate(steps: Sequence[Step], n_keys: int = len(KEYS)) -> list[Op]:
    """Run `steps` against a real atomic register, each op taking effect at one instant of its interval.

    A client's next operation starts `gap` after its previous one ended. Operations are applied in order
    of their linearization points; a cas with expect choice 0 expects the value it will find (so it
    succeeds), otherwise a fixed value (None or one of VALUES), and learns whether it matched.
    """
    clocks: dict[int, int] = {}
    planned = []
    for seq, (client, kind, key, value, expect_choice, gap, duration, offset, fate) in enumerate(steps):
        invoke = clocks.get(client, 0) + gap
        complete = invoke + duration
        clocks[client] = complete
        point = invoke + min(offset, duration)
        planned.append((point, seq, client, kind, KEYS[key % n_keys], VALUES[value % len(VALUES)],
                        expect_choice, invoke, complete, fate))
    planned.sort()
    store: dict[str, str | None] = {}
    ops: list[tuple[int, Op]] = []
    for _, seq, client, kind, key, value, expect_choice, invoke, complete, fate in planned:
        current = store.get(key)
        effective = fate != 2
        done = complete if fate == 0 else None
        if kind == 0:
            op = Op(client, "get", key, None, None, invoke, done, current)
        elif kind == 1:
            if effective:
                store[key] = value
            op = Op(client, "put", key, value, None, invoke, done, True)
        else:
            expect = current if expect_choice == 0 else ([None, *VALUES])[expect_choice % (len(VALUES) + 1)]
            swapped = expect == current
            if swapped and effective:
                store[key] = value
            op = Op(client, "cas", key, value, expect, invoke, done, swapped if effective else False)
        ops.append((seq, op))
    return [op for _, op in sorted(ops, key=lambda pair: pair[0])]


steps_strategy = st.lists(
    st.tuples(
        st.integers(0, 5),  # client
        st.integers(0, 2),  # kind
        st.integers(0, 3),  # key
        st.integers(0, 2),  # value
        st.integers(0, 4),  # cas expect choice
        st.integers(0, 3),  # gap
        st.integers(0, 6),  # duration
        st.integers(0, 6),  # linearization point offset
        st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2]),  # fate
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_strategy, n_keys=st.integers(1, 4), data=st.data())
def test_constructed_histories_pass_and_a_corrupted_read_fails(steps: list[Step], n_keys: int,
                                                                data: st.DataObject) -> None:
    history = simulate(steps, n_keys)
    result = check(history, timeout=10)
    assert result.ok, result.reason

    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.complete is not None]
    if reads:
        victim = data.draw(st.sampled_from(reads), label="corrupted read")
        corrupted = list(history)
        corrupted[victim] = replace(history[victim], result=NEVER_WRITTEN)
    else:
        corrupted = [*history, get(99, "k0", NEVER_WRITTEN, 10_000, 10_001)]
        victim = len(history)
    bad = check(corrupted, timeout=10)
    assert_not_linearizable(bad, corrupted[victim].key)


# ---------------------------------------------------------------------------- brute-force cross-check


def brute_force(history: Sequence[Op]) -> bool:
    """Try every order (and every subset of unanswered writes) directly; exponential, tiny inputs only."""
    pending = [op for op in history if not (op.kind == "get" and op.complete is None)]

    def search(remaining: list[Op], store: dict[str, str | None]) -> bool:
        if all(op.complete is None for op in remaining):
            return True
        for i, op in enumerate(remaining):
            others = remaining[:i] + remaining[i + 1:]
            if any(o.complete is not None and o.complete < op.invoke for o in others):
                continue  # something still unplaced finished before `op` began
            current = store.get(op.key)
            if op.kind == "get":
                if op.result == current:
                    after = store
                else:
                    continue
            elif op.kind == "put":
                after = {**store, op.key: op.value}
            elif op.complete is None or op.result:
                if op.expect != current:
                    continue  # (an unanswered cas that fails is the same as leaving it out)
                after = {**store, op.key: op.value}
            else:
                if op.expect == current:
                    continue
                after = store
            if search(others, after):
                return True
        return False

    return search(pending, {})


arbitrary_op = st.builds(
    lambda kind, key, value, expect, result, invoke, duration, answered: Op(
        0, kind, key, None if kind == "get" else value, expect if kind == "cas" else None, invoke,
        invoke + duration if answered else None,
        {"get": result, "put": True, "cas": result == "a"}[kind]),
    kind=st.sampled_from(["get", "put", "cas"]),
    key=st.sampled_from(["x", "y"]),
    value=st.sampled_from(["a", "b"]),
    expect=st.sampled_from([None, "a", "b"]),
    result=st.sampled_from([None, "a", "b"]),
    invoke=st.integers(0, 6),
    duration=st.integers(0, 4),
    answered=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(history=st.lists(arbitrary_op, max_size=6))
def test_agrees_with_brute_force_on_tiny_arbitrary_histories(history: list[Op]) -> None:
    history = [replace(op, client=i) for i, op in enumerate(history)]
    result = check(history)
    assert result.ok == brute_force(history), (result, history)
    assert not result.unknown
    if not result.ok:
        assert result.key is not None and result.reason and result.stuck is not None


# --------------------------------------------------------------------------------------- performance


def busy_steps(rng: random.Random, n_ops: int, n_clients: int, n_keys: int,
               indeterminate: float = 0.01) -> list[Step]:
    """`n_ops` steps for `n_clients` clients that are always busy: the next step goes to the client free first."""
    clocks = [0] * n_clients
    steps: list[Step] = []
    for _ in range(n_ops):
        client = min(range(n_clients), key=clocks.__getitem__)
        gap, duration = rng.randint(0, 2), rng.randint(1, 30)
        clocks[client] += gap + duration
        r = rng.random()
        fate = 0 if r >= indeterminate else rng.choice([1, 2])
        steps.append((client, rng.choice([0, 0, 1, 2]), rng.randrange(n_keys), rng.randrange(len(VALUES)),
                      rng.randrange(5), gap, duration, rng.randint(0, duration), fate))
    return steps


@pytest.mark.parametrize("n_ops,n_keys", [(2_000, 4), (2_000, 1)])
def test_sixteen_busy_clients_check_quickly(n_ops: int, n_keys: int) -> None:
    history = simulate(busy_steps(random.Random(n_ops * 31 + n_keys), n_ops, 16, n_keys), n_keys)
    # CPU time, not wall time: the check is CPU-bound in this process, and a busy machine must not fail it.
    start = time.process_time()
    result = check(history)
    elapsed = time.process_time() - start
    assert result.ok, result.reason
    assert elapsed < 5, f"{n_ops} ops on {n_keys} key(s) took {elapsed:.2f}s"

    # A single corrupted read in the middle is found, just as fast.
    middle = next(i for i in range(len(history) // 2, len(history))
                  if history[i].kind == "get" and history[i].complete is not None)
    corrupted = [*history[:middle], replace(history[middle], result=NEVER_WRITTEN), *history[middle + 1:]]
    start = time.process_time()
    bad = check(corrupted)
    elapsed = time.process_time() - start
    assert_not_linearizable(bad, history[middle].key)
    assert elapsed < 5, f"refuting {n_ops} ops on {n_keys} key(s) took {elapsed:.2f}s"
