"""The agent's local state on disk: one small file per service, check and check state.

Under `<data_dir>/local/`: `services/<h>.json`, `checks/<h>.json` and `check-state/<h>.json`, where
`<h>` is a hash of the entry's ID (IDs may hold any character). Writes are atomic (temp file, then
rename); registrations are also fsynced. Without a data dir (dev mode) nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("proconsul.local")


class EntryFiles:
    def __init__(self, data_dir: str | None) -> None:
        self.dir = Path(data_dir) / "local" if data_dir else None
        self.legacy_file = Path(data_dir) / "local-state.json" if data_dir else None

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def path(self, kind: str, key: str) -> Path | None:
        if self.dir is None:
            return None
        return self.dir / kind / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def write(self, kind: str, key: str, data: Any, *, durable: bool) -> None:
        """Atomic replace; `durable` also fsyncs (registrations), state updates need only survive a crash
        of this process, which the page cache already guarantees."""
        path = self.path(kind, key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def unlink(self, kind: str, key: str) -> None:
        path = self.path(kind, key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def read_dir(self, kind: str) -> list[Any]:
        assert self.dir is not None
        out = []
        folder = self.dir / kind
        if not folder.is_dir():
            return out
        for path in sorted(folder.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                log.error("ignoring unreadable saved local state %s: %s", path, e)
        return out

    def load_legacy(self) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, Any]]]]:
        """The single local-state.json of earlier builds: read once, then replaced by the per-entry files."""
        if self.legacy_file is None or not self.legacy_file.exists():
            return [], []
        try:
            data = json.loads(self.legacy_file.read_text())
            return list(data["services"]), [(x["row"], x["definition"]) for x in data["checks"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("ignoring unreadable saved local state %s: %s", self.legacy_file, e)
            return [], []
        finally:
            with contextlib.suppress(OSError):
                self.legacy_file.rename(self.legacy_file.with_suffix(".json.migrated"))
