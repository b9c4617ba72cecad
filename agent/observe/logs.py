"""The agent's logging: text or JSON lines (Consul's `log_json` field names) to stderr and optionally a
file (`log_file`, rotated by `log_rotate_bytes`), and a fan-out handler that `/v1/agent/monitor` streams
from. Each monitor subscriber has a bounded queue: a slow reader loses lines (counted), never memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

from proconsul.agent.config.model import AgentConfig

TEXT_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"
LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
# Consul's level names in its log lines and /v1/agent/monitor.
CONSUL_LEVEL = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN", logging.ERROR: "ERROR",
                logging.CRITICAL: "ERROR"}


def level_number(name: str) -> int:
    return LEVELS.get(name.lower(), logging.INFO)


class JSONFormatter(logging.Formatter):
    """One JSON object per line with Consul's keys: @level, @message, @module, @timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "@level": CONSUL_LEVEL.get(record.levelno, "INFO").lower(),
            "@message": record.getMessage(),
            "@module": record.name,
            "@timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def formatter(as_json: bool) -> logging.Formatter:
    return JSONFormatter() if as_json else logging.Formatter(TEXT_FORMAT)


def _log_path(log_file: str) -> Path:
    p = Path(log_file)
    if log_file.endswith("/") or p.is_dir():  # Consul: a directory gets consul-<timestamp>.log files
        p.mkdir(parents=True, exist_ok=True)
        return p / f"proconsul-{int(time.time())}.log"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def configure(cfg: AgentConfig) -> None:
    """Set up the root logger from the agent's config (raises OSError if log_file cannot be opened)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    level = level_number(cfg.log_level)
    root.setLevel(level)
    fmt = formatter(cfg.log_json)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    stderr.setLevel(level)  # a monitor asking for debug lowers the root's level, not what stderr shows
    root.addHandler(stderr)
    if cfg.log_file:
        path = _log_path(cfg.log_file)
        if cfg.log_rotate_bytes > 0:
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=cfg.log_rotate_bytes, backupCount=max(cfg.log_rotate_max_files, 1))
        else:
            handler = logging.FileHandler(path)
        handler.setFormatter(fmt)
        handler.setLevel(level)
        root.addHandler(handler)


class Subscriber:
    def __init__(self, level: int, as_json: bool, size: int) -> None:
        self.level = level
        self.formatter = formatter(as_json)
        self.queue: asyncio.Queue[str] = asyncio.Queue(size)
        self.dropped = 0


class LogMonitor(logging.Handler):
    """Fans log records out to `/v1/agent/monitor` subscribers, each at its own level and format."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_size: int = 512) -> None:
        super().__init__(logging.DEBUG)
        self._loop = loop
        self._subs: set[Subscriber] = set()
        self._size = queue_size

    def subscribe(self, level: int, as_json: bool) -> Subscriber:
        sub = Subscriber(level, as_json, self._size)
        self._subs.add(sub)
        self._levels()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)
        self._levels()

    def _levels(self) -> None:
        """The root logger passes the most verbose level anyone listens at (its handlers keep theirs)."""
        root = logging.getLogger()
        if not hasattr(self, "_base_level"):
            self._base_level = root.level
        root.setLevel(min([self._base_level, *(s.level for s in self._subs)]))

    def emit(self, record: logging.LogRecord) -> None:
        if not self._subs:
            return
        for sub in list(self._subs):
            if record.levelno < sub.level:
                continue
            try:
                line = sub.formatter.format(record)
            except Exception:  # noqa: BLE001 - a bad record must not break logging
                continue
            self._loop.call_soon_threadsafe(self._offer, sub, line)

    @staticmethod
    def _offer(sub: Subscriber, line: str) -> None:
        try:
            sub.queue.put_nowait(line)
        except asyncio.QueueFull:
            sub.dropped += 1
