"""TLS for the mesh: contexts from the agent's leaf and roots, and the peer's SPIFFE identity.

Python's `ssl` loads certificates and keys only from files, so each rebuild writes the leaf and key
to a private temporary directory (mode 0700), loads them and removes them at once. Contexts are
immutable once built: a rotation builds new ones, and the public listener picks the newest for
every new handshake through `sni_callback` (which OpenSSL calls for every ClientHello, with or
without SNI), so established connections keep their session and new ones use the new leaf at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from proconsul.connect.errors import ConnectError


class MeshTLSError(ConnectError):
    """The leaf, key or roots cannot be loaded into a TLS context."""


@dataclass(frozen=True, slots=True)
class Credentials:
    cert_pem: str  # leaf, then any intermediates (a cross-signed root after a rotation)
    key_pem: str
    roots_pem: str  # every trusted root, concatenated
    trust_domain: str
    root_ids: tuple[str, ...] = ()


def _load_chain(ctx: ssl.SSLContext, creds: Credentials) -> None:
    with tempfile.TemporaryDirectory(prefix="proconsul-proxy-") as d:
        os.chmod(d, 0o700)
        cert, key = os.path.join(d, "leaf.pem"), os.path.join(d, "leaf-key.pem")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(creds.key_pem)
        with open(cert, "w") as f:
            f.write(creds.cert_pem)
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as e:
            raise MeshTLSError(f"cannot load the leaf certificate and key: {e}") from None
    try:
        ctx.load_verify_locations(cadata=creds.roots_pem)
    except (ssl.SSLError, ValueError) as e:
        raise MeshTLSError(f"cannot load the CA roots: {e}") from None


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: both sides present a leaf chaining to our roots
    ctx.options |= ssl.OP_NO_COMPRESSION


def server_context(creds: Credentials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    _load_chain(ctx, creds)
    return ctx


def client_context(creds: Credentials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # identity is the SPIFFE URI, checked after the handshake
    _harden(ctx)
    _load_chain(ctx, creds)
    return ctx


class ServerContexts:
    """The public listener's TLS: one listening context whose every handshake switches to the newest."""

    def __init__(self, creds: Credentials) -> None:
        self.current = server_context(creds)
        self.listening = server_context(creds)
        self.listening.sni_callback = self._pick

    def _pick(self, ssl_obj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        if ctx is not self.current:
            ssl_obj.context = self.current
        return None

    def update(self, creds: Credentials) -> None:
        self.current = server_context(creds)


def peer_uri(ssl_object: Any) -> str | None:
    """The first URI SAN of the verified peer certificate (a SPIFFE ID in the mesh), or None."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI":
            return value
    return None


def sni_name(service: str, datacenter: str, trust_domain: str) -> str:
    """Consul's SNI for a service: `<svc>.default.<dc>.internal.<trust-domain>` (mesh gateways route on it)."""
    return f"{service}.default.{datacenter}.internal.{trust_domain}"
