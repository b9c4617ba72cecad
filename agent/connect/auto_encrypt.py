"""Consul's auto_encrypt: client agents get their agent TLS certificate from the servers' Connect CA.

Servers (`auto_encrypt { allow_tls = true }`) serve `auto_encrypt.sign` on the server port — to a TLS
client without a certificate too, and nothing else to such a client (rpc.ServerPort) — and trust the
Connect CA's roots for incoming connections besides `ca_file`, so the certificates they hand out open
the port under `verify_incoming`. A client agent (`auto_encrypt { tls = true }`, with only `ca_file`)
makes a key and a CSR for its agent identity (spiffe://…/agent/client/dc/<dc>/id/<node-id>, under the
placeholder trust domain it cannot know yet), asks a server with its agent token (node:write on its node),
and from then on dials every server with that certificate; it renews at half its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from proconsul.agent.local.stopping import until_stopped
from proconsul.connect import ca
from proconsul.connect.spiffe import AgentID

log = logging.getLogger("proconsul.auto_encrypt")

SIGN = "auto_encrypt.sign"
RETRY_MIN, RETRY_MAX = 0.5, 10.0


# ---------------------------------------------------------------------- servers
def serve(connect: Any, register: Callable[[str, Callable[[dict[str, Any]], Awaitable[Any]]], None],
          datacenter: str) -> None:
    """Register `auto_encrypt.sign` on a server (its ACL check, node:write on the node, is in rpc_acl)."""

    async def sign(args: dict[str, Any]) -> Any:
        issued = ca.sign_leaf(str(args.get("csr", "")), connect.active_root(), connect._trust_domain(),
                              ca_now(), ca_serial(), connect.leaf_ttl(), expect_agent_dc=datacenter)
        _, roots = connect.roots_body()
        log.info("auto_encrypt: signed the agent certificate of %s (%s)", args.get("node", "?"), issued["AgentURI"])
        return {"IssuedCert": issued, "RootCAs": [r["RootCert"] for r in roots["Roots"]]}

    register(SIGN, sign)


def ca_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ca_serial() -> int:
    return int.from_bytes(os.urandom(16), "big") >> 1


async def trust_connect_roots(connect: Any, server_ctx: ssl.SSLContext, stop: asyncio.Event) -> None:
    """Keep the server port trusting every Connect root (so certificates it signed verify), as roots rotate."""
    loaded: set[str] = set()
    index = 0
    while not stop.is_set():
        _, body = connect.roots_body()
        for root in body["Roots"]:
            if root["ID"] not in loaded:
                server_ctx.load_verify_locations(cadata=root["RootCert"])
                loaded.add(root["ID"])
                log.info("auto_encrypt: the server port trusts Connect root %s", root["ID"])
        waiter = await until_stopped(connect.wait_roots(index, 300.0), stop)
        if waiter is not None and waiter.exception() is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        index = connect.roots_body()[0]


# ---------------------------------------------------------------------- client agents
class AutoEncryptClient:
    """A client agent's certificate from the servers: obtained before the agent serves, renewed in time."""

    def __init__(self, *, node: str, node_id: str, datacenter: str, data_dir: str, client_ctx: ssl.SSLContext,
                 call: Callable[[str, dict[str, Any]], Awaitable[Any]], reset: Callable[[], Awaitable[None]],
                 dns_san: list[str] | None = None) -> None:
        self.node, self.node_id, self.datacenter = node, node_id, datacenter
        self.dir = Path(data_dir) / "auto-encrypt"
        self.client_ctx = client_ctx
        self._call = call
        self._reset = reset  # drop open connections: the next ones present the certificate
        self.dns_san = dns_san or []
        self.not_after: dt.datetime | None = None
        self.not_before: dt.datetime | None = None

    async def obtain(self, stop: asyncio.Event) -> bool:
        """Ask until a server signs (True) or `stop` is set (False); every failure is logged, named."""
        delay = RETRY_MIN
        while not stop.is_set():
            try:
                await self._once()
                return True
            except Exception as e:
                log.error("auto_encrypt: cannot get this agent's TLS certificate from the servers: %s "
                          "(retrying in %.1fs)", e, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, RETRY_MAX)
        return False

    async def _once(self) -> None:
        key = ca.generate_key()
        uri = AgentID(ca.PLACEHOLDER_TRUST_DOMAIN, self.datacenter, self.node_id).uri
        csr = ca.make_csr(uri, key, self.node, [*self.dns_san, "localhost"])
        reply = await self._call(SIGN, {"csr": csr, "node": self.node})
        issued = reply["IssuedCert"]
        self.dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = self.dir / "agent.pem", self.dir / "agent-key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(ca.key_pem(key))
        cert_path.write_text(issued["CertPEM"])
        self.client_ctx.load_cert_chain(str(cert_path), str(key_path))
        first = self.not_after is None
        leaf = x509.load_pem_x509_certificate(issued["CertPEM"].encode())
        self.not_before, self.not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        if first:  # connections opened without a certificate serve only this call: open new ones
            await self._reset()
        log.info("auto_encrypt: this agent's TLS certificate is %s, valid until %s", issued["AgentURI"],
                 issued["ValidBefore"])

    async def renew(self, stop: asyncio.Event) -> None:
        """Ask again at half the certificate's lifetime."""
        while not stop.is_set() and self.not_after is not None and self.not_before is not None:
            half = self.not_before + (self.not_after - self.not_before) / 2
            wait = max((half - dt.datetime.now(dt.UTC)).total_seconds(), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set() or not await self.obtain(stop):
                return
