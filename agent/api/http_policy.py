"""The agent's `http_config` as the API applies it to every request (Consul's `wrap`): blocked endpoint
prefixes (403 "Endpoint is blocked by agent configuration"), writes only from `allow_write_http_from`
(403 "Access is restricted"), and `response_headers` — with `X-Consul-Translate-Addresses` when
`translate_wan_addrs` is on — on every answer."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from proconsul.catalog.translate import HEADER as TRANSLATE_HEADER

BLOCKED = "Endpoint is blocked by agent configuration"
RESTRICTED = "Access is restricted"
READS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class HTTPPolicy:
    blocked_prefixes: tuple[str, ...] = ()
    writers: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty: anyone may write
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> HTTPPolicy:
        headers = dict(cfg.http_response_headers)
        if cfg.translate_wan_addrs:
            headers[TRANSLATE_HEADER] = "true"
        return cls(tuple(cfg.http_block_endpoints),
                   tuple(ipaddress.ip_network(c, strict=False) for c in cfg.allow_write_http_from), headers)

    @property
    def active(self) -> bool:
        return bool(self.blocked_prefixes or self.writers or self.headers)

    def refusal(self, method: str, path: str, remote: str | None) -> str:
        """Why this request is refused with 403 ("" when it is not)."""
        if any(path.startswith(p) for p in self.blocked_prefixes):
            return BLOCKED
        if self.writers and method not in READS:
            try:
                ip = ipaddress.ip_address((remote or "").split("%")[0])
            except ValueError:
                return RESTRICTED  # a unix socket or an unreadable peer: not in any allowed network
            if not any(ip in net for net in self.writers):
                return RESTRICTED
        return ""
