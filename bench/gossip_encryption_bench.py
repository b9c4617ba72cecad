"""What gossip encryption costs: CPU per gossip packet with and without the AES-GCM keyring.

Two measurements, arms alternated (plain, encrypted, plain, … ≥ 3 rounds), medians:

1. **Real pools on loopback.** Each arm is a child process running `--members` LAN pools
   (`membership.pool.Pool` over real UDP/TCP sockets, fast timings so packets flow) for `--seconds`;
   it counts the datagrams the pools received and reports CPU seconds (utime+stime of the child,
   from /proc/<pid>/stat) per 1,000 datagrams. Everything a packet costs is in it: the syscalls,
   the codec, the core's rules, and (encrypted arm) the seal and the open.
2. **Seal + open alone**, per datagram size (a bare ping, a probe with news, a full 1,400-byte
   gossip packet): microseconds per packet, against the codec's own decode of the same packet.

The peer is the plaintext arm of the same run (Consul's memberlist cannot run here).
Run: `nice -n 10 .venv/bin/python bench/gossip_encryption_bench.py [--rounds 3 --seconds 6 --members 8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_seconds, loadavg, report

from proconsul.membership import codec as c
from proconsul.membership.config import Timings
from proconsul.membership.core import Membership
from proconsul.membership.keyring import GossipSealer, Keyring
from proconsul.membership.pool import Pool

KEY = bytes(range(32))
FAST = Timings(probe_interval=0.05, probe_timeout=0.025, gossip_interval=0.02, suspicion_mult=4,
               push_pull_interval=1.0, tcp_timeout=2.0)


class Counting:
    """Counts received datagrams and stream frames; seals with the keyring when given one."""

    def __init__(self, sealer: GossipSealer | None) -> None:
        self.sealer = sealer
        self.opened = 0

    def seal(self, frame: bytes) -> bytes:
        return self.sealer.seal(frame) if self.sealer else frame

    def open(self, data: bytes) -> bytes:
        self.opened += 1
        return self.sealer.open(data) if self.sealer else data


async def _pools(members: int, seconds: float, encrypted: bool) -> dict[str, float]:
    counters, pools = [], []
    for i in range(members):
        name = f"bench-member-{i}"
        tags = {"role": "node", "dc": "dc1", "id": name, "build": "bench"}
        core = Membership(name, "127.0.0.1", 0, tags, rng=random.Random(i), timings=FAST, label="lan:dc1")
        counter = Counting(GossipSealer(Keyring([KEY])) if encrypted else None)
        pool = Pool(core, "127.0.0.1", 0, on_events=lambda ev: None, sealer=counter)
        port = await pool.start()
        core.port = core.me.node.port = port
        counters.append(counter)
        pools.append(pool)
    for pool in pools[1:]:
        await pool.join([f"127.0.0.1:{pools[0].port}"], 0)
    await asyncio.sleep(2.0)  # let the pool settle before the measured window
    before_n, before_cpu = sum(x.opened for x in counters), cpu_seconds([os.getpid()])
    await asyncio.sleep(seconds)
    n, cpu = sum(x.opened for x in counters) - before_n, cpu_seconds([os.getpid()]) - before_cpu
    failed = sum(p.core.stats.get("probes_failed", 0) for p in pools)
    for pool in pools:
        await pool.stop()
    return {"packets": n, "cpu_s": cpu, "cpu_s_per_1k": 1000 * cpu / max(n, 1), "probes_failed": failed}


def _child(args: argparse.Namespace, encrypted: bool) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", "encrypted" if encrypted else "plain",
                          "--seconds", str(args.seconds), "--members", str(args.members)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _packets() -> dict[str, bytes]:
    co = c.Codec("lan:dc1")
    tags = {"role": "node", "dc": "dc1", "id": "0b6c1e0e-8f42-4a57-9a7d-2d2f0c5e9a11", "build": "0.1.0", "vsn": "2"}
    news = [c.alive(i + 1, f"client-{i:04d}", "10.0.0.1", 8301, tags) for i in range(20)]
    ping = co.packet([c.ping(1, "client-0001", "server-0", "10.0.0.2", 8301)])
    probe = co.packet([c.ping(2, "client-0001", "server-0", "10.0.0.2", 8301), *news[:2]])
    full, n = [], 0
    for m in news:
        if n + len(m) > 1300:
            break
        full.append(m)
        n += len(m)
    return {"ping": ping, "probe+news": probe, "full gossip": co.packet(full)}


def _micro(rounds: int) -> dict[str, dict[str, float]]:
    sealer = GossipSealer(Keyring([KEY]))
    co = c.Codec("lan:dc1")
    out = {}
    for label, pkt in _packets().items():
        sealed = sealer.seal(pkt)
        reps = 20000
        plain_t, enc_t = [], []
        for _ in range(rounds):
            t = time.process_time()
            for _ in range(reps):
                co.decode(pkt)
            plain_t.append((time.process_time() - t) / reps)
            t = time.process_time()
            for _ in range(reps):
                co.decode(sealer.open(sealer.seal(pkt)))
            enc_t.append((time.process_time() - t) / reps)
        p, e = statistics.median(plain_t), statistics.median(enc_t)
        out[label] = {"bytes": len(pkt), "sealed_bytes": len(sealed), "decode_us": round(p * 1e6, 2),
                      "seal_open_decode_us": round(e * 1e6, 2), "added_us": round((e - p) * 1e6, 2)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--child", choices=["plain", "encrypted"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_pools(args.members, args.seconds, args.child == "encrypted"))))
        return 0
    load = loadavg()
    arms: dict[str, list[dict[str, float]]] = {"plain": [], "encrypted": []}
    for i in range(args.rounds):
        for name in arms:
            r = _child(args, name == "encrypted")
            arms[name].append(r)
            print(f"  round {i + 1} {name:<10} packets={r['packets']:.0f} cpu={r['cpu_s']:.2f}s "
                  f"cpu/1k={r['cpu_s_per_1k']:.3f}s probes_failed={r['probes_failed']:.0f}", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in arms.items()}
    micro = _micro(args.rounds)
    report("gossip_encryption", {
        "load_before": load, "load_after": loadavg(), "members": args.members, "seconds": args.seconds,
        "rounds": args.rounds, "pools": med,
        "cpu_ratio_encrypted_vs_plain": round(med["encrypted"]["cpu_s_per_1k"] / med["plain"]["cpu_s_per_1k"], 3),
        "micro_per_packet": micro})
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
