"""The keys of what the aiohttp application carries (aiohttp's typed `AppKey`s, not strings)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

AGENT: web.AppKey[Any] = web.AppKey("agent")  # the Agent serving this API
TELEMETRY: web.AppKey[Any] = web.AppKey("telemetry")  # its HTTPCounters (agent/api/app.py)
HTTP_POLICY: web.AppKey[Any] = web.AppKey("http_policy")  # http_config as applied (agent/api/http_policy.py)
KEYSETS: web.AppKey[Any] = web.AppKey("keysets")  # the jwt auth methods' fetched key sets (agent/acl/keysets.py)
