"""Lightweight LAN members for the end-to-end membership test: N gossip pools (the agent's own
`LANGossip`, nothing else) in one process, joined through one address. Every membership event is
printed as a JSON line `[observer, kind, member, monotonic seconds]`; SIGTERM makes every pool leave
gracefully.

    python membership_swarm.py --join 127.0.0.1:8301 --prefix w --count 17
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
import uuid
from typing import Any

from proconsul.agent.cluster.lan import LANGossip


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--join", required=True)
    ap.add_argument("--prefix", default="w")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--dc", default="dc1")
    args = ap.parse_args()
    pools: list[LANGossip] = []

    def printer(observer: str) -> Any:
        def on_event(kind: str, name: str, detail: Any) -> None:
            if kind not in ("rtt", "unreached"):  # per probe: too many to print
                print(json.dumps([observer, kind, name, round(time.monotonic(), 3)]), flush=True)
        return on_event

    for i in range(args.count):
        name = f"{args.prefix}{i:02d}"
        tags = {"role": "node", "dc": args.dc, "id": str(uuid.uuid4()), "port": "8300", "segment": ""}
        g = LANGossip(name, "127.0.0.1", 0, tags, args.dc, "127.0.0.1", rng=random.Random(name),
                      on_event=printer(name))
        port = await g.start()
        g.members.update_me(port, tags)
        await g.join([args.join])
        pools.append(g)
    print(json.dumps(["swarm", "ready", args.count]), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.gather(*(g.stop(leave=True) for g in pools))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
