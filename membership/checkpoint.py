"""Checkpoint and resume for the simulator, in msgpack (never pickle: nothing we write is pickled).

A checkpoint is the whole `Sim` — every member's core (views and their records on the shared
`Baseline`, suspicions, broadcast queues, probe state, health, counters, pending effects, its
`random.Random` state), the event heap, the network, slow members, traffic, statistics — written
field by field: each object of a known class (`_CLASSES`) as its class name and its attributes, lists,
tuples, dicts and sets as tagged msgpack arrays, and every object or container reached twice written
once and referred to after (a record shared by the baseline and a view, a view's reference to its
baseline's dict, a stream's conversation shared by two heap entries: identity is kept, so `is`
comparisons hold after a resume). Dicts are rebuilt in their insertion order, so they iterate the
same; sets are rebuilt in their saved order (the run never depends on a set's order: its sets hold
strings, bytes or tuples of them, whose order changes with every process's hash seed anyway).

Callables: the heap's scenario steps must be `Action`s (a Sim method by name and its arguments,
`Sim.call`) or the Sim's own `_fold`; a core's `pack` is `tuple` or its codec's `packet`. Anything else
(a lambda, a closure such as `Sim.leave`'s check) is refused with `CheckpointError`, as is a Sim with the
delivery trace on (`trace=True`: a blake2b object's state cannot be read, so a resumed run could not
continue it; the events trace is a `ChainDigest`, whose lines and chained digest are saved).
The decode cache is not saved (it is rebuilt as datagrams come; decoding is pure).

The file: msgpack of [MAGIC, VERSION, meta, blake2b digest of the body, body], written to a temporary
file, fsynced, and renamed over the target. `load` refuses (CheckpointError, one readable line) a file
that is not a checkpoint, one of another format version, a truncated or corrupt one, or one whose
meta (seed, size, configuration, and what the caller adds) differs from what the caller expects.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import msgpack

from .broadcast import BroadcastQueue
from .codec import Codec
from .config import Timings
from .core import Membership, _Probe
from .health import LocalHealth
from .sim import Action, ChainDigest, Network, Sim, SimMember, SlowPattern, Stats
from .suspicion import Suspicion
from .view import Baseline, Node, Rec, View

MAGIC = "proconsul-sim-checkpoint"
VERSION = 1

_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    Sim, SimMember, SlowPattern, ChainDigest, Network, Stats, Action, Membership, _Probe, Suspicion, BroadcastQueue,
    LocalHealth, View, Baseline, Node, Rec, Codec, Timings)}
_METHODS = {Sim: frozenset({"_fold"}), Codec: frozenset({"packet"})}  # bound methods a checkpoint may hold
_SKIP = {Sim: ("_trace",)}  # fields that must be off (None) to checkpoint
_EMPTY = {Sim: ("_decoded",)}  # caches written as empty

# tags of the first element of an encoded container
_REF, _LIST, _TUPLE, _DICT, _SET, _OBJ, _RANDOM, _METHOD, _BUILTIN = range(9)
_BUILTINS: dict[str, Any] = {"tuple": tuple}


class CheckpointError(Exception):
    """A checkpoint that cannot be written (a state we cannot serialise) or read (missing, truncated,
    corrupt, another format version, another run's)."""


def _fields(cls: type) -> tuple[str, ...] | None:
    slots: list[str] = []
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__")
        if s is not None:
            slots += [s] if isinstance(s, str) else list(s)
    return tuple(slots) if slots and "__dict__" not in slots else None


_SLOTS = {cls: _fields(cls) for cls in _CLASSES.values()}


class _Encoder:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.keep: list[Any] = []  # what `ids` refers to stays alive while we write

    def enc(self, x: Any) -> Any:
        t = type(x)
        if t is str or t is int or t is float or t is bytes or t is bool or x is None:
            return x
        if t is tuple:
            return [_TUPLE, *map(self.enc, x)]
        k = self.ids.get(id(x))
        if k is not None:
            return [_REF, k]
        k = self.ids[id(x)] = len(self.ids)
        self.keep.append(x)
        if t is list:
            return [_LIST, k, *map(self.enc, x)]
        if t is dict:
            out = [_DICT, k]
            enc = self.enc
            for key, v in x.items():
                out.append(enc(key))
                out.append(enc(v))
            return out
        if t is set:
            return [_SET, k, *map(self.enc, x)]
        if t is random.Random:
            return [_RANDOM, k, self.enc(x.getstate())]
        if _CLASSES.get(t.__name__) is t:
            return self._obj(k, t, x)
        if t.__name__ == "method" and callable(x):
            owner, name = x.__self__, x.__name__
            if name in _METHODS.get(type(owner), ()):
                return [_METHOD, k, self.enc(owner), name]
        for name, b in _BUILTINS.items():
            if x is b:
                return [_BUILTIN, k, name]
        what = getattr(x, "__qualname__", t.__name__)
        raise CheckpointError(f"cannot checkpoint {what!r} (a {t.__name__}): scenario steps must be "
                              f"Sim.call(when, method, *args) actions, not lambdas or closures")

    def _obj(self, k: int, t: type, x: Any) -> list[Any]:
        out: list[Any] = [_OBJ, k, t.__name__]
        skip = _SKIP.get(t, {})
        for f in skip:
            if getattr(x, f) is not None:
                raise CheckpointError(f"cannot checkpoint a Sim with {f.lstrip('_')} on: a blake2b digest's state "
                                      f"cannot be saved (build it with trace=False; events_trace can be saved)")
        empty = _EMPTY.get(t, ())
        slots = _SLOTS[t]
        items = ((f, getattr(x, f)) for f in slots if hasattr(x, f)) if slots is not None else x.__dict__.items()
        for f, v in items:
            if f in skip:
                continue
            out.append(f)
            out.append(type(v)() if f in empty else self.enc(v))
        return out


class _Decoder:
    def __init__(self) -> None:
        self.objs: dict[int, Any] = {}

    def dec(self, x: Any) -> Any:
        if type(x) is not list:
            return x
        tag = x[0]
        dec = self.dec
        if tag == _TUPLE:
            return tuple(map(dec, x[1:]))
        if tag == _REF:
            return self.objs[x[1]]
        k = x[1]
        if tag == _LIST:
            out: Any = []
            self.objs[k] = out
            out.extend(map(dec, x[2:]))
        elif tag == _DICT:
            out = self.objs[k] = {}
            for i in range(2, len(x), 2):
                out[dec(x[i])] = dec(x[i + 1])
        elif tag == _SET:
            out = self.objs[k] = set()
            for v in x[2:]:
                out.add(dec(v))
        elif tag == _RANDOM:
            out = self.objs[k] = random.Random()
            out.setstate(dec(x[2]))
        elif tag == _OBJ:
            cls = _CLASSES.get(x[2])
            if cls is None:
                raise CheckpointError(f"unknown class {x[2]!r} in the checkpoint")
            out = self.objs[k] = object.__new__(cls)
            setattr_ = object.__setattr__
            for i in range(3, len(x), 2):
                f = x[i]
                if type(f) is not str or f.startswith("__"):
                    raise CheckpointError(f"bad field name {f!r} of a {x[2]} in the checkpoint")
                setattr_(out, f, dec(x[i + 1]))
            if cls is Action and (type(out.method) is not str or out.method.startswith("_")):
                raise CheckpointError(f"a scenario step calls {out.method!r}, not a public Sim method")
            for f in _SKIP.get(cls, {}):
                setattr_(out, f, None)
        elif tag == _METHOD:
            owner = dec(x[2])
            if x[3] not in _METHODS.get(type(owner), ()):
                raise CheckpointError(f"a checkpoint may not hold the method {x[3]!r} of a {type(owner).__name__}")
            out = self.objs[k] = getattr(owner, x[3])
        elif tag == _BUILTIN:
            out = self.objs[k] = _BUILTINS[x[2]]
        else:
            raise CheckpointError(f"unknown tag {tag!r} in the checkpoint")
        return out


def sim_meta(sim: Sim) -> dict[str, Any]:
    """What identifies a run: a checkpoint of another seed, size or configuration is refused."""
    t = sim.timings
    return {"seed": sim.seed, "initial_n": len(sim.baseline.names), "label": sim.label, "encode": sim.encode,
            "skip_noop": sim.skip_noop, "fold_every": sim.fold_every,
            "network": [sim.net.loss, list(sim.net.latency), sim.net.jitter],
            "timings": {f: (list(v) if isinstance(v, tuple) else v) for f, v in vars(t).items()}}


def save(sim: Sim, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> int:
    """Write `sim` (and the caller's `meta`, plain msgpack data) to `path` atomically; returns its size."""
    enc = _Encoder()
    try:
        body = msgpack.packb(enc.enc(sim), use_bin_type=True)
        data = msgpack.packb([MAGIC, VERSION, {"sim": sim_meta(sim), "caller": meta or {}},
                              hashlib.blake2b(body, digest_size=32).digest(), body], use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot checkpoint this Sim: {e}") from e
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # the rename itself survives a crash once the directory is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return len(data)


def read_meta(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """The checkpoint's meta and its verified body; CheckpointError for anything else."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    try:
        top = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for truncated or garbled input
        raise CheckpointError(f"{path} is not a checkpoint, or is truncated or corrupt ({type(e).__name__})") from e
    if not (isinstance(top, list) and len(top) == 5 and top[0] == MAGIC):
        raise CheckpointError(f"{path} is not a simulator checkpoint")
    if top[1] != VERSION:
        raise CheckpointError(f"{path} is a checkpoint of format version {top[1]!r}; this code reads version {VERSION}")
    meta, digest, body = top[2], top[3], top[4]
    if not (isinstance(meta, dict) and isinstance(body, bytes) and isinstance(digest, bytes)):
        raise CheckpointError(f"{path} is a corrupt checkpoint (bad layout)")
    if hashlib.blake2b(body, digest_size=32).digest() != digest:
        raise CheckpointError(f"{path} is a corrupt checkpoint (its digest does not match its contents)")
    return meta, body


def load(path: str | os.PathLike[str], expect: dict[str, Any] | None = None,
         expect_sim: dict[str, Any] | None = None) -> tuple[Sim, dict[str, Any]]:
    """The Sim saved in `path`, and the caller's meta saved with it. `expect`: fields the caller's meta
    must have (the run it means to continue); `expect_sim`: a `sim_meta` the saved Sim's must equal."""
    meta, body = read_meta(path)
    caller = meta.get("caller", {})
    for key, want in (expect or {}).items():
        if caller.get(key) != want:
            raise CheckpointError(f"{path} is a checkpoint of another run: {key} is {caller.get(key)!r} "
                                  f"there, {want!r} here")
    if expect_sim is not None:
        for key, want in expect_sim.items():
            have = meta.get("sim", {}).get(key)
            if have != want:
                raise CheckpointError(f"{path} is a checkpoint of another simulation: {key} is {have!r} there, "
                                      f"{want!r} here")
    try:
        tree = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
        sim = _Decoder().dec(tree)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is a corrupt checkpoint ({type(e).__name__}: {e})") from e
    if type(sim) is not Sim:
        raise CheckpointError(f"{path} does not hold a simulator")
    return sim, caller


__all__ = ["MAGIC", "VERSION", "CheckpointError", "load", "read_meta", "save", "sim_meta"]
