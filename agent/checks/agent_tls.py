"""Consul's `enable_agent_tls_for_checks`: HTTP, TCP+TLS and gRPC checks present the agent's own certificate
(`tls.defaults` / `tls.internal_rpc` `cert_file` and `key_file`) and trust its `ca_file`, so a service whose
health endpoint demands mutual TLS can be checked. Without the setting checks use the system's trust and
no client certificate."""

from __future__ import annotations

import ssl
from typing import Any

CONTEXT_KEY = "agent_tls"  # where the manager's shared context keeps the settings


def check_context(manager_context: dict[str, Any], skip_verify: bool, alpn: list[str] | None = None
                  ) -> ssl.SSLContext:
    """The client TLS context for one check: the agent's credentials when the setting is on."""
    tls = manager_context.get(CONTEXT_KEY)
    ctx = ssl.create_default_context(cafile=(tls.ca_file or None) if tls is not None else None)
    if tls is not None and tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def uses_agent_tls(manager_context: dict[str, Any]) -> bool:
    return manager_context.get(CONTEXT_KEY) is not None
