"""A member's view: records, counts, bucket hashes, and the shared baseline the simulator folds into."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.membership.errors import InvariantViolation
from proconsul.membership.view import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    Baseline,
    Node,
    Rec,
    View,
    entry_hash,
    fold,
    summary_bits,
)

NODES = [Node(f"n{i}", f"10.0.0.{i}", 8301, {"i": str(i)}) for i in range(40)]


def snapshot(v: View) -> dict[str, tuple[int, int]]:
    return {r.node.name: (r.inc, r.state) for r in v}


def hashes_from_scratch(v: View) -> list[int]:
    out = [0] * 256
    for r in v:
        out[r.node.h & 255] ^= entry_hash(r.node.h, r.inc, r.state)
    return out


def test_put_get_forget_keep_counts_hashes_and_graveyard() -> None:
    v = View()
    v.put(Rec(NODES[0], 0, ALIVE, 0.0))
    v.put(Rec(NODES[1], 0, ALIVE, 0.0))
    assert v.get("n0").inc == 0 and v.get("nope") is None and len(v) == 2 and v.size == 2
    old = v.put(Rec(NODES[1], 1, SUSPECT, 1.0))
    assert old.state == ALIVE and v.counts == [1, 1, 0, 0]
    v.put(Rec(NODES[1], 1, DEAD, 2.0))
    assert v.counts == [1, 0, 1, 0] and v.graveyard == [(2.0, "n1")]
    assert v.bucket_hashes() == hashes_from_scratch(v)
    assert v.forget("n1").state == DEAD and v.get("n1") is None and v.counts == [1, 0, 0, 0]
    assert v.bucket_hashes() == hashes_from_scratch(v) and v.size == 1
    v.put(Rec(NODES[0], 5, ALIVE, 0.0))
    with pytest.raises(InvariantViolation, match="go back"):
        v.put(Rec(NODES[0], 4, ALIVE, 0.0))


def test_bucket_hashes_fold_to_fewer_buckets_and_find_their_members() -> None:
    v = View()
    for n in NODES:
        v.put(Rec(n, 1, ALIVE, 0.0))
    fine = v.bucket_hashes()
    for bits in (0, 1, 3, 8):
        coarse = v.bucket_hashes(bits)
        assert len(coarse) == 1 << bits
        for b in range(1 << bits):
            x = 0
            for f in range(256):
                if f & ((1 << bits) - 1) == b:
                    x ^= fine[f]
            assert coarse[b] == x
        names = {r.node.name for r in v.in_buckets(bits, [0])}
        assert names == {n.name for n in NODES if n.h & ((1 << bits) - 1) == 0}
    assert [summary_bits(n) for n in (1, 32, 33, 100, 1000, 10_000, 100_000)] == [0, 0, 1, 2, 5, 8, 8]


ops = st.lists(st.tuples(st.integers(0, 39), st.sampled_from(["alive", "suspect", "dead", "left", "forget"])),
               max_size=60)


@settings(max_examples=120, deadline=None)
@given(ops, ops)
def test_views_on_a_shared_baseline_behave_like_private_views_and_fold_changes_nothing(a: list, b: list) -> None:
    start = [Rec(n, 0, ALIVE, 0.0) for n in NODES[:25]]
    base = Baseline(start)
    shared = [View(base), View(base)]
    private = [View(), View()]
    for p in private:
        for r in start:
            p.put(r)
    states = {"alive": ALIVE, "suspect": SUSPECT, "dead": DEAD, "left": LEFT}
    for k, seq in enumerate((a, b)):
        for t, (i, op) in enumerate(seq):
            for v in (shared[k], private[k]):
                if op == "forget":
                    v.forget(NODES[i].name)
                else:
                    cur = v.get(NODES[i].name)
                    v.put(Rec(NODES[i], (cur.inc if cur else 0) + 1, states[op], float(t)))
    for s, p in zip(shared, private, strict=True):
        assert snapshot(s) == snapshot(p) and s.counts == p.counts
        assert s.bucket_hashes() == p.bucket_hashes() == hashes_from_scratch(p)
    before = [snapshot(s) for s in shared]
    fold(base, shared)
    for s, snap in zip(shared, before, strict=True):
        assert snapshot(s) == snap and s.bucket_hashes() == hashes_from_scratch(s)
        assert sorted(r.node.name for r in s) == sorted(snap)
        names = [s.name_at(i) for i in range(s.size)]
        assert len(names) == len(set(names))


def test_fold_moves_what_every_view_agrees_on_into_the_baseline() -> None:
    base = Baseline([Rec(n, 0, ALIVE, 0.0) for n in NODES[:3]])
    views = [View(base) for _ in range(3)]
    newcomer = Node("new", "10.0.1.1", 8301)
    for k, v in enumerate(views):
        v.put(Rec(NODES[0], 1, DEAD, float(k)))  # everyone agrees
        v.put(Rec(newcomer, 0, ALIVE, 0.0))
    views[0].put(Rec(NODES[1], 1, ALIVE, 0.0))  # only one view knows this
    assert fold(base, views) == 2
    assert base.records["n0"].state == DEAD and base.records["n0"].since == 2.0 and "new" in base.records
    assert all(dict(v.differences()).keys() <= {"n1"} for v in views)
    assert views[0].get("n1").inc == 1 and views[1].get("n1").inc == 0
    assert all(v.size == 4 for v in views) and base.counts == [3, 0, 1, 0]
    with pytest.raises(ValueError):
        fold(base, [View()])
