"""Checkpoint and resume (membership/checkpoint.py): a run saved, resumed in a fresh Python process (another
hash seed) and run on is the same run as one never interrupted — the cores' states and random states,
traffic, counters and false-positive statistics equal — also when the resumed run is saved and resumed
again; bad checkpoint files are refused with one clear error."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from proconsul.membership import checkpoint as ck
from proconsul.membership.sim import Network, Sim, SlowPattern

REPO = Path(__file__).resolve().parents[2]
N, T, T1, T2 = 150, 3.0, 9.0, 20.0
MODES = {"encoded": {"encode": True}, "skip_noop": {"encode": False, "skip_noop": True}}


def scenario(sim: Sim) -> None:
    """Stalling and lagging members, a crash and a join still pending at the first checkpoint."""
    for i in range(0, N, 20):
        sim.slow(i, SlowPattern(seconds=2.0, every=(5.0, 15.0)))
    for i in (7, 77):
        sim.slow(i, SlowPattern(seconds=8.0, every=(5.0, 10.0), kind="lag", length=10.0))
    sim.call(4.0, "crash", 33)
    sim.call(6.0, "join", 5)


def fingerprint(sim: Sim) -> dict[str, Any]:
    st = sim.stats
    return {"now": sim.now, "events": sim.events_digest(), "state": sim.state_digest(), "rng": repr(sim.rng.getstate()), "n": sim.n,
            "bytes": sim.bytes_out, "packets": sim.packets_out, "counters": sorted(sim.counters().items()),
            "false": [st.false_pairs, sorted(st.false_incidents), st.false_slow, sorted(st.false_seen_by_healthy)],
            "stats": [st.suspicions, st.refutes, st.events, st.datagrams, st.skipped_datagrams, st.skipped_messages],
            "crashed": sorted(sim.crashed_at.items()), "dead_seen": sorted((k, sorted(v.items())) for k, v in sim.dead_seen.items()),
            "join_seen": sorted((k, sorted(v.items())) for k, v in sim.join_seen.items()), "heap": len(sim._heap)}


# The fresh process: load, run to T1 and save again, run on to T2, print the fingerprint.
CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_checkpoint import fingerprint
from proconsul.membership import checkpoint as ck
src, until, save_at, dst = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
sim, meta = ck.load(src, expect={"test": "checkpoint"})
if save_at:
    sim.run(save_at)
    ck.save(sim, dst, meta)
sim.run(until)
print(json.dumps(fingerprint(sim)))
"""


def child(src: Path, until: float, save_at: float = 0.0, dst: Path | None = None, hash_seed: str = "1") -> Any:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(src), str(until),
                          str(save_at), str(dst or "")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_run_resumed_in_a_fresh_process_is_the_same_run(mode: str, tmp_path: Path) -> None:
    """Saved at T (the crash and the join still to come), resumed in another process with another hash
    seed, saved again at T1 there and resumed in a third: at T2 all three runs agree with the run that
    never stopped."""
    never = Sim(N, seed=11, network=Network(loss=0.01), events_trace=True, **MODES[mode])
    scenario(never)
    never.run(T2)
    whole = json.loads(json.dumps(fingerprint(never)))  # as JSON, as the children report
    assert never.stats.suspicions > 0 and never.stats.refutes > 0 and 33 in never.crashed_at and never.n == N + 1
    sim = Sim(N, seed=11, network=Network(loss=0.01), events_trace=True, **MODES[mode])
    scenario(sim)
    sim.run(T)
    first, second = tmp_path / "t.ckpt", tmp_path / "t1.ckpt"
    ck.save(sim, first, {"test": "checkpoint"})
    resumed = child(first, T2, T1, second, hash_seed="1")
    assert resumed == whole
    assert child(second, T2, hash_seed="2") == whole  # a resume of a resume
    sim.run(T2)  # saving changed nothing in the process that saved
    assert json.loads(json.dumps(fingerprint(sim))) == whole


def small(**kw: Any) -> Sim:
    sim = Sim(20, seed=3, network=Network(loss=0.01), **kw)
    sim.slow(4, SlowPattern(seconds=2.0, every=(3.0, 6.0)))
    sim.run(2.0)
    return sim


def test_a_lambda_or_a_trace_digest_is_refused_and_the_old_checkpoint_stays(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    sim = small()
    ck.save(sim, path)
    before = path.read_bytes()
    sim.at(5.0, lambda: sim.crash(3))
    with pytest.raises(ck.CheckpointError, match="lambda.*Sim.call"):
        ck.save(sim, path)
    with pytest.raises(ck.CheckpointError, match="trace"):
        ck.save(small(trace=True), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temp file left
    with pytest.raises(ValueError, match="no public method"):
        sim.call(5.0, "_fold")


def test_bad_checkpoint_files_are_refused_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    sim = small()
    ck.save(sim, path, {"seed": 3})
    good = path.read_bytes()
    restored, meta = ck.load(path, expect={"seed": 3}, expect_sim=ck.sim_meta(sim))
    assert meta == {"seed": 3} and restored.state_digest() == sim.state_digest()

    def refused(data: bytes | None, match: str, **kw: Any) -> None:
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(ck.CheckpointError, match=match) as e:
            ck.load(path, **kw)
        assert "\n" not in str(e.value)

    refused(good[: len(good) // 2], "truncated or corrupt")
    flipped = bytearray(good)
    flipped[-1000] ^= 0xFF
    refused(bytes(flipped), "digest does not match")
    top = msgpack.unpackb(good, raw=False)
    refused(msgpack.packb([top[0], 99, *top[2:]], use_bin_type=True), "format version 99; this code reads version 1")
    refused(msgpack.packb({"not": "a checkpoint"}), "not a simulator checkpoint")
    refused(b"", "truncated or corrupt")
    refused(good, "another run: seed is 3 there, 4 here", expect={"seed": 4})
    refused(None, "another simulation: seed is 3 there, 5 here", expect_sim=ck.sim_meta(Sim(20, seed=5)))
    refused(None, "another simulation: initial_n is 20 there, 21 here", expect_sim=ck.sim_meta(Sim(21, seed=3)))
    # a well-formed file naming what a checkpoint may not hold: nothing is called or built from it
    for tree, why in (([7, 0, [5, 1, "Codec"], "why_not_ours"], "may not hold the method 'why_not_ours'"),
                      ([5, 0, "Action", "sim", None, "method", "_fold", "args", [2]], "not a public Sim method"),
                      ([5, 0, "Sim", "__class__", None], "bad field name"), ([5, 0, "Popen"], "unknown class"),
                      ([5, 0, "Stats"], "does not hold a simulator")):
        body = msgpack.packb(tree, use_bin_type=True)
        refused(msgpack.packb([ck.MAGIC, ck.VERSION, {}, hashlib.blake2b(body, digest_size=32).digest(), body],
                              use_bin_type=True), why)
    path.unlink()
    refused(None, "cannot read checkpoint")


def test_the_bench_resumes_and_says_why_it_cannot_in_one_line(tmp_path: Path) -> None:
    bench = [sys.executable, str(REPO / "bench" / "membership_bench.py"), "--sizes", "40", "--no-scale", "--arm",
             "on", "--skip-noop", "--plot", str(tmp_path / "p.png")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*bench, *args], capture_output=True, text=True, timeout=120)

    ckpt = tmp_path / "fp.ckpt"
    part = run("--fp-seconds", "20", "--checkpoint", str(ckpt), "--checkpoint-every", "20")
    assert part.returncode == 0 and "checkpoint at 20 simulated s" in part.stdout, part.stderr
    done = run("--fp-seconds", "40", "--resume", str(ckpt), "--json", str(tmp_path / "r.json"))
    whole = run("--fp-seconds", "40", "--rounds", "1", "--json", str(tmp_path / "w.json"))
    assert done.returncode == whole.returncode == 0, done.stderr + whole.stderr
    r, w = (json.loads((tmp_path / f).read_text())["false_positives"]["40"]["on"] for f in ("r.json", "w.json"))
    keys = ("incidents", "pairs", "healthy_incidents", "slow_incidents", "member_hours", "seconds")
    assert [r[k] for k in keys] == [w[k] for k in keys]
    said = [re.search(r"seed=1: (.* refutes);", x.stdout) for x in (done, whole)]
    assert said[0] and said[1] and said[0][1] == said[1][1] and "suspicions" in said[0][1]
    other = run("--fp-seconds", "40", "--resume", str(ckpt), "--seed", "2")
    assert other.returncode == 1 and other.stderr.strip() == \
        f"membership_bench: {ckpt} is a checkpoint of another run: seed is 1 there, 2 here"
    ckpt.write_bytes(b"not a checkpoint")
    bad = run("--fp-seconds", "40", "--resume", str(ckpt))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    both = run("--fp-seconds", "40", "--resume", str(ckpt), "--arm", "both")
    assert both.returncode == 1 and "one size, --arm on or off" in both.stderr
