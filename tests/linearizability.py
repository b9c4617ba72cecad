"""Linearizability checker for histories of a key-value store whose keys are independent registers.

The search is Wing & Gong's, with Lowe's memoisation ("Testing for linearizability", 2017), as used by
Knossos and Porcupine:

* The history is split per key (P-compositionality: a history of independent objects is
  linearizable iff each object's sub-history is) and each key is checked on its own.
* Each key's operations become call and return events sorted by time in a doubly linked list. At
  equal times calls sort before returns, so `a.complete == b.invoke` counts as concurrent: only
  `a.complete < b.invoke` orders `a` before `b`.
* Scanning from the head, a call whose operation is legal in the current state is *lifted* (its call
  and return leave the list), pushed on a stack and the scan restarts. Reaching a return means that
  operation could not be placed before its response: pop the last choice, *unlift* it and try the
  next call after it. A set of (linearized-ops bitset, state) pairs prunes any configuration that was
  already explored.
* One pruning beyond plain WGL: when a pending read-only op (a completed get, or a completed cas that
  failed) is legal in the current state it is linearized at once and never tried elsewhere (see the
  argument in `_check_key`). Linearizable histories of ~2,000 ops on one key from 16 busy clients then
  check in well under a second. Refuting a history can still take exponential time (the problem is
  NP-complete), notably with many unanswered writes of few distinct values: `timeout` bounds it.

Operations without a response (`complete is None`: a timeout or crash) may have taken effect at any
time after they were invoked, or never: they have no return event (their response is at +infinity)
and the search succeeds once every *completed* operation is linearized, so they may be left out. An
indeterminate get constrains nothing and is dropped up front.

Pure: no I/O; the only outside input is the monotonic clock, read to enforce `timeout`. Tests import
it the way they import `support` (tests/conftest.py puts tests/ on sys.path):
`from linearizability import Op, check`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CheckResult", "Op", "check", "describe"]

KINDS = ("put", "get", "cas")
_GET, _PUT, _CAS = 0, 1, 2
_KIND_CODE = {"get": _GET, "put": _PUT, "cas": _CAS}
_DEADLINE_EVERY = 1024  # search steps between clock reads
_PREFIX_SHOWN = 8  # how many of the last linearized operations a failure reason spells out


@dataclass(frozen=True)
class Op:
    """One client operation on one key, as observed by the client.

    `client` is informational (a client's operations never overlap in time); `value` is the value a
    put writes or a cas installs (None for a get); `expect` is the value a cas compares against (None
    means "key absent"); `invoke` and `complete` are the request and response times, `complete=None`
    meaning no response arrived. `result` is the value a get read (None = absent), True for a put
    (not consulted: a completed put took effect), True/False for a cas; ignored when `complete` is
    None.
    """

    client: int
    kind: str
    key: str
    value: str | None
    expect: str | None
    invoke: float
    complete: float | None
    result: object


@dataclass(frozen=True)
class CheckResult:
    """The verdict of `check`.

    `ok` is True only if every key's history was proven linearizable. On failure `key` names the
    first key (in order of first appearance) that is not linearizable, or whose search timed out
    (`unknown=True`, `ok=False`), and `reason` says why. `prefix` is the longest sequence of that
    key's operations the search managed to linearize and `stuck` the completed operation that could
    then not be placed before its response (both empty/None when ok or unknown).
    """

    ok: bool
    key: str | None = None
    reason: str = ""
    unknown: bool = False
    prefix: tuple[Op, ...] = ()
    stuck: Op | None = None


def describe(op: Op) -> str:
    """A one-line human-readable rendering of an operation, e.g. `c3 cas('k', 'a'->'b') -> True [1, 2]`."""
    if op.kind == "get":
        call = f"get({op.key!r})"
    elif op.kind == "put":
        call = f"put({op.key!r}, {op.value!r})"
    else:
        call = f"cas({op.key!r}, {op.expect!r}->{op.value!r})"
    if op.complete is None:
        return f"c{op.client} {call} [{op.invoke:g}, no response)"
    outcome = "" if op.kind == "put" else f" -> {op.result!r}"
    return f"c{op.client} {call}{outcome} [{op.invoke:g}, {op.complete:g}]"


def _validate(op: Op) -> None:
    if op.kind not in _KIND_CODE:
        raise ValueError(f"unknown operation kind {op.kind!r} (expected one of {KINDS}): {op!r}")
    if math.isnan(op.invoke) or (op.complete is not None and math.isnan(op.complete)):
        raise ValueError(f"NaN time in {op!r}")
    if op.complete is not None and op.complete < op.invoke:
        raise ValueError(f"operation completes before it is invoked: {op!r}")
    if op.kind == "cas" and op.complete is not None and not isinstance(op.result, bool):
        raise ValueError(f"a completed cas needs a bool result: {op!r}")


def check(history: Sequence[Op], timeout: float = 30.0) -> CheckResult:
    """Decide whether `history` is linearizable w.r.t. one register per key, each initially absent.

    put(v) sets the value; get returns it; cas(expect, new) succeeds iff the value equals `expect`
    (None = absent), then sets `new`, and a failed cas changes nothing. Raises ValueError on a
    malformed operation. `timeout` (seconds, for the whole history) bounds the search; running out
    yields `ok=False, unknown=True`.
    """
    for op in history:
        _validate(op)
    per_key: dict[str, list[Op]] = {}
    for op in history:
        if op.kind == "get" and op.complete is None:
            continue  # an unanswered read constrains nothing
        per_key.setdefault(op.key, []).append(op)
    deadline = time.monotonic() + timeout
    for key, ops in per_key.items():
        result = _check_key(key, ops, deadline)
        if not result.ok:
            return result
    return CheckResult(ok=True)


def _check_key(key: str, ops: list[Op], deadline: float) -> CheckResult:
    n = len(ops)
    # Events: (time, 0 = call / 1 = return, op index). Calls sort first at equal times (concurrent).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if op.complete is not None:
            events.append((op.complete, 1, i))
    events.sort()

    # Doubly linked list over nodes 0 (head sentinel), 1..m (events), m + 1 (tail sentinel).
    m = len(events)
    tail = m + 1
    nxt = list(range(1, m + 2)) + [tail]
    prv = [0] + list(range(0, m + 1))
    is_call = [False] * (m + 2)
    op_of = [-1] * (m + 2)
    match = [0] * (m + 2)  # call node -> its return node (0 if the op never returned)
    call_node = [0] * n
    for node, (_, kind, i) in enumerate(events, start=1):
        op_of[node] = i
        if kind == 0:
            is_call[node] = True
            call_node[i] = node
        else:
            match[call_node[i]] = node

    code = [_KIND_CODE[op.kind] for op in ops]
    value = [op.value for op in ops]
    expect = [op.expect for op in ops]
    result = [op.result for op in ops]
    determinate = [op.complete is not None for op in ops]
    # Read-only: a completed get or a completed failed cas. Legal or not, it never changes the state.
    readonly = [determinate[i] and (code[i] == _GET or (code[i] == _CAS and not result[i])) for i in range(n)]
    bit = [1 << i for i in range(n)]
    remaining = sum(determinate)

    state: str | None = None
    linearized = 0
    # (lifted call node, state before it, forced: a read-only op taken because it was legal, see below)
    stack: list[tuple[int, str | None, bool]] = []
    cache: set[tuple[int, str | None]] = set()
    best_depth = -1
    best_prefix: list[int] = []
    best_state: str | None = None
    best_stuck = -1
    steps = 0
    fresh = True  # just reached a new configuration: look for a legal read-only op first
    entry = 0

    while remaining:
        if steps % _DEADLINE_EVERY == 0 and time.monotonic() >= deadline:
            return CheckResult(ok=False, key=key, unknown=True,
                               reason=f"key {key!r}: search timed out after {steps} steps "
                                      f"({n} operations, {len(cache)} configurations cached)")
        steps += 1
        if fresh:
            # Pending ops are the calls before the first return. If a read-only one is legal now, taking it
            # now loses nothing: in any linearization from here, moving it to the front keeps every op
            # legal (it changes no state and sees the current one) and breaks no real-time order (all ops
            # that returned before it was invoked are already linearized). So it is the only choice tried
            # here: if that fails, this whole configuration fails.
            fresh = False
            node = nxt[0]
            while is_call[node]:
                i = op_of[node]
                if readonly[i] and (state == result[i] if code[i] == _GET else state != expect[i]):
                    break
                node = nxt[node]
            else:
                entry = nxt[0]  # none: try the writes, in order
                continue
            config = (linearized | bit[i], state)
            if config not in cache:
                cache.add(config)
                stack.append((node, state, True))
                linearized = config[0]
                remaining -= 1
                _lift(node, nxt, prv, match)
                fresh = True
                continue
            # else: explored before without success, so this configuration fails too; backtrack.
        elif is_call[entry]:
            i = op_of[entry]
            if not readonly[i]:  # read-only ops here are not legal (else the fresh pass took one)
                new = value[i]
                if code[i] == _PUT:
                    # An unanswered op that would change nothing is the same as leaving it out.
                    legal = determinate[i] or new != state
                elif determinate[i]:  # a cas that succeeded
                    legal = state == expect[i]
                else:  # an unanswered cas: if it took effect at all, it succeeded
                    legal = state == expect[i] and new != state
                if legal:
                    config = (linearized | bit[i], new)
                    if config not in cache:
                        cache.add(config)
                        stack.append((entry, state, False))
                        linearized, state = config
                        if determinate[i]:
                            remaining -= 1
                        _lift(entry, nxt, prv, match)
                        fresh = True
                        continue
            entry = nxt[entry]
            continue
        else:
            # A return (or, defensively, the tail): that op cannot be placed before it. Backtrack.
            if len(stack) > best_depth:
                best_depth = len(stack)
                best_prefix = [op_of[node] for node, _, _ in stack]
                best_state = state
                best_stuck = op_of[entry]
        # Backtrack: undo the last choice and try the next call after it; undo a forced one and keep going.
        while stack:
            node, state, forced = stack.pop()
            i = op_of[node]
            linearized &= ~bit[i]
            if determinate[i]:
                remaining += 1
            _unlift(node, nxt, prv, match)
            if not forced:
                entry = nxt[node]
                break
        else:
            break  # nothing left to undo: not linearizable
    else:
        return CheckResult(ok=True)

    prefix = tuple(ops[i] for i in best_prefix)
    stuck = ops[best_stuck] if best_stuck >= 0 else None
    shown = "; ".join(describe(op) for op in prefix[-_PREFIX_SHOWN:]) or "nothing"
    elided = f"... {len(prefix) - _PREFIX_SHOWN} earlier, then " if len(prefix) > _PREFIX_SHOWN else ""
    stuck_text = describe(stuck) if stuck is not None else "?"
    reason = (f"key {key!r} is not linearizable ({n} operations): the longest linearizable prefix has "
              f"{len(prefix)} operation(s) [{elided}{shown}], leaving the value {best_state!r}; "
              f"no pending operation could then be placed before {stuck_text} returned")
    return CheckResult(ok=False, key=key, reason=reason, prefix=prefix, stuck=stuck)


def _lift(call: int, nxt: list[int], prv: list[int], match: list[int]) -> None:
    """Unlink a call event and its return event (if any) from the list."""
    nxt[prv[call]] = nxt[call]
    prv[nxt[call]] = prv[call]
    ret = match[call]
    if ret:
        nxt[prv[ret]] = nxt[ret]
        prv[nxt[ret]] = prv[ret]


def _unlift(call: int, nxt: list[int], prv: list[int], match: list[int]) -> None:
    """Relink what `_lift` unlinked (the return first: the reverse order of unlinking)."""
    ret = match[call]
    if ret:
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
    nxt[prv[call]] = call
    prv[nxt[call]] = call
