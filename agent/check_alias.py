"""Alias checks: mirror the health of another service instance (AliasService, on AliasNode or this
node) or of a node (AliasNode alone), following the catalog with blocking queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from proconsul.catalog.store import CRITICAL, aggregate_status

from .checks import RUNNERS, CheckManager, ResultSink, TaskRunner

log = logging.getLogger("proconsul.checks")
WAIT = 60.0


class AliasRunner(TaskRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: CheckManager) -> None:
        super().__init__(check_id, sink, rng)
        self.agent = manager.context["agent"]
        self.service = defn.get("AliasService") or ""
        self.node = defn.get("AliasNode") or self.agent.config.node_name

    def verdict(self, checks: list[dict[str, Any]], services: list[str]) -> tuple[str, str]:
        checks = [c for c in checks if c["CheckID"] != self.check_id]  # never mirror ourselves
        if self.service:
            if self.service not in services:
                return CRITICAL, f"Service {self.service!r} not found on node {self.node!r}"
            relevant = [c for c in checks if c["ServiceID"] == self.service]  # Consul: the service's own checks
            what = f"service {self.service!r} on node {self.node!r}"
        else:
            relevant = [c for c in checks if not c["ServiceID"]]
            what = f"node {self.node!r}"
        status = aggregate_status(relevant)
        return status, f"All checks passing for {what}" if status == "passing" else \
            f"Aliased {what} is {status}"

    async def _loop(self) -> None:
        index = 0
        last: tuple[str, str] | None = None
        backend = self.agent.backend
        while True:
            try:
                index, checks = await backend.query("health.node", {"node": self.node}, index, WAIT)
                _, ns = await backend.query("catalog.node_services", {"node": self.node})
                services = [s["ID"] for s in ns["Services"]] if ns else []
                result = self.verdict(checks, services) if ns else (CRITICAL, f"Node {self.node!r} not found")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a server hiccup: report it and retry after a pause
                log.warning("alias check %s: %s", self.check_id, e)
                result = (CRITICAL, f"alias check failed: {e}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.sleep(1 + self._rng.random())
                index = 0
            if result != last:
                self._sink(self.check_id, *result)
                last = result


RUNNERS["alias"] = AliasRunner
