"""User events (/v1/event): a bounded buffer of the most recent events this agent has seen.

Consul spreads events by gossip and keeps the last 256 in each agent; the index of an event list is
derived from the newest event's ID so that blocking queries work without a Raft index.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import deque
from typing import Any

EVENT_BUFFER = 256


def event_matches(event: dict[str, Any], node_name: str, services: list[dict[str, Any]]) -> bool:
    """Whether this agent keeps an event, as Consul's: NodeFilter is a regular expression on the node name,
    ServiceFilter on a local service's name, TagFilter (with a service filter) on one of its tags."""
    try:
        if event.get("NodeFilter") and not re.fullmatch(event["NodeFilter"], node_name):
            return False
        if event.get("ServiceFilter"):
            svc = re.compile(event["ServiceFilter"])
            tag = re.compile(event["TagFilter"]) if event.get("TagFilter") else None
            return any(svc.fullmatch(s.get("Service", "")) and (tag is None or any(
                tag.fullmatch(t) for t in s.get("Tags") or [])) for s in services)
    except re.error:
        return False
    return True


class EventBuffer:
    def __init__(self, node_name: str) -> None:
        self._node = node_name
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENT_BUFFER)
        self._ltime = 0
        self._changed = asyncio.Event()

    def fire(self, name: str, payload: bytes, node_filter: str = "", service_filter: str = "",
             tag_filter: str = "") -> dict[str, Any]:
        self._ltime += 1
        event = {"ID": str(uuid.uuid4()), "Name": name, "Payload": payload, "NodeFilter": node_filter,
                 "ServiceFilter": service_filter, "TagFilter": tag_filter, "Version": 1, "LTime": self._ltime}
        self.receive(event)
        return event

    def receive(self, event: dict[str, Any]) -> None:
        self._ltime = max(self._ltime, event["LTime"])
        self._events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def index(self, events: list[dict[str, Any]]) -> int:
        """Consul's trick: the index is the newest event's UUID folded into 64 bits."""
        if not events:
            return 1
        raw = uuid.UUID(events[-1]["ID"]).int
        return ((raw >> 64) ^ raw) & 0xFFFF_FFFF_FFFF_FFFF or 1

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
