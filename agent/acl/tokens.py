"""The agent's own tokens (Consul's `acl.tokens`): from the config, replaced at run time through
/v1/agent/token/:type, and kept across restarts in `<data_dir>/acl-tokens.json` when
`enable_token_persistence` is on (the config's value wins only when nothing was persisted)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("proconsul.acl")
TOKENS_FILE = "acl-tokens.json"
# /v1/agent/token/:type accepts Consul's names, old and new.
TYPE_ALIASES = {"acl_token": "default", "acl_agent_token": "agent", "acl_agent_master_token": "agent_recovery",
                "agent_master": "agent_recovery", "acl_replication_token": "replication"}
TYPES = ("default", "agent", "agent_recovery", "replication", "config_file_service_registration", "dns")


def load_agent_tokens(config: Any) -> dict[str, str]:
    tokens = dict(config.acl.tokens)
    if config.acl.enable_token_persistence and config.data_dir and not config.dev:
        path = Path(config.data_dir) / TOKENS_FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError) as e:
            log.error("cannot read persisted ACL tokens from %s (%s): using the configured ones", path, e)
            saved = {}
        tokens.update({k: v for k, v in saved.items() if k in TYPES and isinstance(v, str)})
    return tokens


def save_agent_tokens(data_dir: str, tokens: dict[str, str], configured: dict[str, str]) -> None:
    path = Path(data_dir) / TOKENS_FILE
    body = {k: v for k, v in tokens.items() if k in TYPES and v != configured.get(k)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
