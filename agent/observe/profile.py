"""A sampling profiler for `/v1/agent/debug/profile` (Consul's pprof, in Python terms): a thread looks at
the main thread's stack every few milliseconds and counts collapsed stacks (`a;b;c N`, the input of
flame-graph tools). Off unless enable_debug is set; it costs nothing when nobody asks."""

from __future__ import annotations

import collections
import sys
import threading
import time


def sample_stacks(seconds: float, interval: float = 0.005, thread_id: int | None = None) -> str:
    """Collapsed stacks of `thread_id` (the main thread by default), sampled for `seconds`."""
    target = thread_id if thread_id is not None else threading.main_thread().ident
    counts: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frame = sys._current_frames().get(target)  # noqa: SLF001 - the documented way to sample a thread
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
            frame = frame.f_back
        if names:
            counts[";".join(reversed(names))] += 1
        time.sleep(interval)
    return "".join(f"{stack} {n}\n" for stack, n in counts.most_common())
