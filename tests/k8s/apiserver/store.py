"""Objects, resourceVersions, history and watch fan-out of the test API server (no I/O).

One global resourceVersion counter like etcd's revision: every write takes the next one. The history of
writes (with the object before and after) is kept until compacted; it serves watches that start from an
old resourceVersion and consistent `continue` pages (the state at a past version is the current one with
the later writes undone). A watch or a continue token older than the compaction point gets 410 Expired.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .selectors import parse_fields, parse_labels

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


class ApiError(Exception):
    """An error the server answers with a metav1.Status."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    qual = f"{resource}.{group}" if group else resource
    return ApiError(404, "NotFound", f'{qual} "{name}" not found', {"name": name, "group": group, "kind": resource})


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


@dataclass(frozen=True, slots=True)
class Kind:
    """One served resource type."""

    resource: str
    kind: str
    group: str = ""
    version: str = "v1"
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    fields: frozenset[str] = frozenset()
    status: bool = False
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


@dataclass(slots=True)
class Event:
    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    obj: Obj
    prev: Obj | None


@dataclass(slots=True)
class Watch:
    """A subscriber: gets every later event of its resource that its namespace and selectors let through."""

    resource: str
    namespace: str
    labels: Callable[[dict[str, str]], bool]
    fields: Callable[[Obj], bool]
    send: Callable[[str, Obj], None]
    closed: bool = False

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(obj)

    def offer(self, ev: Event) -> None:
        """Translate one write into this watch's view (an object that stops matching is DELETED here)."""
        if self.closed or ev.resource != self.resource:
            return
        now, before = self.matches(ev.obj if ev.type != "DELETED" else None), self.matches(ev.prev)
        if ev.type == "DELETED":
            if before:
                self.send("DELETED", ev.obj)
        elif now and before:
            self.send("MODIFIED", ev.obj)
        elif now:
            self.send("ADDED", ev.obj)
        elif before:
            self.send("DELETED", ev.obj)


@dataclass
class Store:
    kinds: dict[str, Kind]
    history_limit: int = 100_000
    clock: Callable[[], float] = time.time
    rv: int = 0
    compacted: int = 0  # history holds every write with rv > compacted
    objects: dict[str, dict[Key, Obj]] = field(default_factory=dict)
    history: deque[Event] = field(default_factory=deque)
    watches: list[Watch] = field(default_factory=list)

    def __post_init__(self) -> None:
        for r in self.kinds:
            self.objects.setdefault(r, {})

    # ------------------------------------------------------------------ writes
    def _commit(self, resource: str, type_: str, key: Key, obj: Obj, prev: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if type_ == "DELETED":
            self.objects[resource].pop(key, None)
        else:
            self.objects[resource][key] = obj
        ev = Event(self.rv, resource, type_, key, obj, prev)
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            self.compacted = self.history.popleft().rv
        for w in list(self.watches):
            w.offer(ev)
        return copy.deepcopy(obj)

    def now_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))

    def create(self, resource: str, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[resource]:
            k = self.kinds[resource]
            qual = f"{resource}.{k.group}" if k.group else resource
            raise ApiError(409, "AlreadyExists", f'{qual} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": k.group, "kind": resource})
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self.now_iso()
        meta.pop("resourceVersion", None)
        return self._commit(resource, "ADDED", key, obj, None)

    def update(self, resource: str, obj: Obj, expect_rv: str | None = None) -> Obj:
        """Replace an object; `expect_rv` (when set) must be its current resourceVersion."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        cur = self.objects[resource].get(key)
        if cur is None:
            raise not_found(resource, meta["name"], self.kinds[resource].group)
        if expect_rv and expect_rv != cur["metadata"]["resourceVersion"]:
            k = self.kinds[resource]
            qual = f"{resource}.{k.group}" if k.group else resource
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qual} "{meta["name"]}": the object '
                           "has been modified; please apply your changes to the latest version and try again",
                           {"name": meta["name"], "group": k.group, "kind": resource})
        for f in ("uid", "creationTimestamp"):
            meta[f] = cur["metadata"][f]
        if _strip_rv(obj) == _strip_rv(cur):
            return copy.deepcopy(cur)  # a no-op write keeps its resourceVersion, as etcd-backed storage does
        return self._commit(resource, "MODIFIED", key, obj, cur)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        cur = self.objects[resource].get((namespace, name))
        if cur is None:
            raise not_found(resource, name, self.kinds[resource].group)
        gone = copy.deepcopy(cur)
        return self._commit(resource, "DELETED", (namespace, name), gone, cur)

    # ------------------------------------------------------------------ reads
    def get(self, resource: str, namespace: str, name: str) -> Obj:
        cur = self.objects[resource].get((namespace, name))
        if cur is None:
            raise not_found(resource, name, self.kinds[resource].group)
        return copy.deepcopy(cur)

    def state_at(self, resource: str, rv: int) -> dict[Key, Obj]:
        """The objects of `resource` as they were at resourceVersion `rv` (410 when compacted away)."""
        if rv < self.compacted:
            raise expired(f"too old resource version: {rv} ({self.compacted})")
        state = dict(self.objects[resource])
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.resource != resource:
                continue
            if ev.prev is None:
                state.pop(ev.key, None)
            else:
                state[ev.key] = ev.prev
        return state

    def list(self, resource: str, namespace: str = "", *, label_selector: str = "", field_selector: str = "",
             limit: int = 0, cont: str = "") -> tuple[list[Obj], str, str, int | None]:
        """(items, list resourceVersion, continue token, remaining item count) — a consistent snapshot."""
        kind = self.kinds[resource]
        labels = parse_labels(label_selector)
        fields = parse_fields(field_selector, kind.fields | {"metadata.name", "metadata.namespace"})
        start = ""
        at = self.rv
        if cont:
            at, start = _decode_continue(cont)
            if at < self.compacted:
                raise expired("The provided continue parameter is too old to display a consistent list result. "
                              "You can start a new list without the continue parameter.")
        state = self.state_at(resource, at) if at != self.rv else self.objects[resource]
        items = []
        for key in sorted(state):
            ns, name = key
            if namespace and ns != namespace:
                continue
            if start and f"{ns}/{name}" <= start:
                continue
            obj = state[key]
            if labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj):
                items.append(obj)
        token, remaining = "", None
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = _encode_continue(at, f"{last.get('namespace', '')}/{last['name']}")
            remaining = len(items) - limit
            items = items[:limit]
        return copy.deepcopy(items), str(at), token, remaining

    # ------------------------------------------------------------------ watches
    def watch(self, resource: str, namespace: str, label_selector: str, field_selector: str, since: str,
              send: Callable[[str, Obj], None]) -> Watch:
        """Start a watch: events after `since` (a resourceVersion); "" or "0" first sends every current object."""
        kind = self.kinds[resource]
        w = Watch(resource, namespace, parse_labels(label_selector),
                  parse_fields(field_selector, kind.fields | {"metadata.name", "metadata.namespace"}), send)
        if since in ("", "0"):
            for key in sorted(self.objects[resource]):
                obj = self.objects[resource][key]
                if w.matches(obj):
                    send("ADDED", obj)
        else:
            rv = _parse_rv(since)
            if rv < self.compacted:
                raise expired(f"too old resource version: {rv} ({self.compacted})")
            for ev in self.history:
                if ev.rv > rv:
                    w.offer(ev)
        self.watches.append(w)
        return w

    def unwatch(self, w: Watch) -> None:
        w.closed = True
        if w in self.watches:
            self.watches.remove(w)

    def compact(self) -> int:
        """Forget all history (what etcd compaction does); later watches from older versions get 410."""
        self.history.clear()
        self.compacted = self.rv
        return self.compacted


def _strip_rv(obj: Obj) -> Obj:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}
    return out


def _parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        raise ApiError(400, "BadRequest", f'invalid resource version "{value}"') from None
    if rv < 0:
        raise ApiError(400, "BadRequest", f'invalid resource version "{value}"')
    return rv


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(raw["rv"]), str(raw["start"]).rstrip("\x00")
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ApiError(400, "BadRequest", "continue key is not valid: illegal base64 data") from None
