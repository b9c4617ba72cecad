"""User events (/v1/event): Consul's event shape and rules, and the bounded buffer of recent events.

An event is fired once (`new_event` checks it as Consul's validateUserEventParams does) and delivered to
every agent, which keeps it only when it matches the event's node/service/tag filters (`accepts`, Consul's
shouldProcessUserEvent) and has not seen its ID before. Consul spreads events by gossip; here they reach the
local agent and, from a client agent, the server it forwards them to (gossip delivery arrives with the SWIM
membership, which calls `EventBuffer.receive`). Each agent keeps the last 256; the index of an event list is
derived from the newest event's ID so that blocking queries work without a Raft index.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

EVENT_BUFFER = 256
SIZE_LIMIT = 512  # Serf's default UserEventSizeLimit: name + payload, before encoding
EVENT_VERSION = 1


def id_to_index(event_id: str) -> int:
    """Consul's IDToIndex: an event's UUID folded into the 64-bit index of a list ending with it."""
    raw = uuid.UUID(event_id).int
    return ((raw >> 64) ^ raw) & 0xFFFF_FFFF_FFFF_FFFF or 1


class EventError(ValueError):
    """A user event Consul would refuse (the message is Consul's)."""


def _regexp(text: str, what: str) -> None:
    if text:
        try:
            re.compile(text)
        except re.error as e:
            raise EventError(f"Invalid {what} filter: {e}") from None


def new_event(name: str, payload: bytes, node_filter: str = "", service_filter: str = "",
              tag_filter: str = "", event_id: str | None = None) -> dict[str, Any]:
    """A new event in Consul's shape (LTime is stamped by the buffer that first keeps it)."""
    if not name:
        raise EventError("User event missing name")
    if name.startswith("_") and name != "_rexec":  # _rexec is `exec`'s (agent/local/remote_exec.py)
        raise EventError(f"User event name {name!r} starts with an underscore: those are reserved for Consul")
    if tag_filter and not service_filter:
        raise EventError("Cannot provide tag filter without service filter")
    _regexp(node_filter, "node")
    _regexp(service_filter, "service")
    _regexp(tag_filter, "tag")
    if len(name) + len(payload) > SIZE_LIMIT:
        raise EventError(f"user event exceeds configured limit of {SIZE_LIMIT} bytes before encoding "
                         f"(name and payload are {len(name) + len(payload)} bytes)")
    return {"ID": event_id or str(uuid.uuid4()), "Name": name, "Payload": payload, "NodeFilter": node_filter,
            "ServiceFilter": service_filter, "TagFilter": tag_filter, "Version": EVENT_VERSION, "LTime": 0}


def accepts(event: dict[str, Any], node_name: str, services: Iterable[tuple[str, Iterable[str]]]) -> bool:
    """Whether an agent called `node_name` running `services` ((name, tags) pairs) keeps `event`."""
    try:
        if event.get("NodeFilter") and not re.search(event["NodeFilter"], node_name):
            return False
        if event.get("ServiceFilter"):
            svc_re = re.compile(event["ServiceFilter"])
            tag_re = re.compile(event["TagFilter"]) if event.get("TagFilter") else None
            return any(svc_re.search(name) and (tag_re is None or any(tag_re.search(t) for t in tags))
                       for name, tags in services)
    except (re.error, TypeError):
        return False  # a malformed event from the network is dropped, never a crash
    return True


class EventBuffer:
    def __init__(self, node_name: str) -> None:
        self._node = node_name
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENT_BUFFER)
        self._seen: deque[str] = deque(maxlen=EVENT_BUFFER * 4)  # IDs recently kept: gossip delivers twice
        self._ltime = 0
        self._changed = asyncio.Event()

    def stamp(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with the next Lamport time of this agent (for an event fired here)."""
        self._ltime += 1
        return dict(event, LTime=self._ltime)

    def receive(self, event: dict[str, Any]) -> bool:
        """Keep an event (already checked against this agent's filters); False when it was seen before."""
        if event["ID"] in self._seen:
            return False
        self._seen.append(event["ID"])
        self._ltime = max(self._ltime, int(event.get("LTime") or 0))
        self._events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def index(self, events: list[dict[str, Any]]) -> int:
        """Consul's trick: the index is the newest event's UUID folded into 64 bits."""
        return id_to_index(events[-1]["ID"]) if events else 1

    def matching(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self._events if not name or e["Name"] == name]

    async def list(self, name: str, min_index: int, wait: float) -> tuple[int, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        events = self.matching(name)
        while min_index and self.index(events) == min_index and loop.time() < deadline:
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
            events = self.matching(name)
        return self.index(events), events
