"""TLS for the mesh: contexts from the agent's leaf and roots, and the peer's SPIFFE identity.

Python's `ssl` loads certificates and keys only from files, so each rebuild writes the leaf and key
to a private temporary directory (mode 0700), loads them and removes them at once. Contexts are
immutable once built: a rotation builds new ones, and the public listener picks the newest for
every new handshake through `sni_callback` (which OpenSSL calls for every ClientHello, with or
without SNI), so established connections keep their session and new ones use the new leaf at once.

Handshakes are the expensive part of a new connection (OpenSSL 3.0 spends ~1.5 ms of CPU on each
side of a full TLS 1.3 handshake with certificates), so the upstream side resumes the session it last
had with the same sidecar (`MeshClientContext`): a resumed handshake skips the certificates, the
signatures and the chain checks. Each rebuild starts with no sessions, so a new leaf or root is used
by the very next connection.
"""

from __future__ import annotations

import contextvars
import functools
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509

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
    # Resumption from the server's own session cache (TLS 1.3 "stateful" tickets: the ticket is a key
    # into the cache) rather than self-contained tickets: a self-contained ticket carries the client's
    # certificate, which OpenSSL 3.0 decodes again on every resumption (~0.4 ms). One ticket per
    # handshake: the client side offers one session per instance. The cache is OpenSSL's (at most
    # 20,480 sessions of ~1 KB; they expire after 2 hours).
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 1
    _load_chain(ctx, creds)
    return ctx


# The session the current task's next TLS connection offers (set by `offer_session` just before it dials).
_OFFER: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar("proconsul_proxy_offer", default=None)
MAX_SESSIONS = 4096
SESSION_REFRESH = 60.0  # seconds a held session is offered before a newer one replaces it


class MeshClientContext(ssl.SSLContext):
    """The upstream side's TLS context, with a session per upstream instance to resume.

    asyncio and uvloop create a connection's TLS object (`wrap_bio`) in the context of the task that
    called `create_connection`, so the dialing task names its session with `offer_session` first and
    concurrent dials never mix their sessions up. A session is offered again and again (OpenSSL
    servers accept a TLS 1.3 ticket more than once without early data; peers in the mesh have no
    privacy to lose by being linked), and replaced when the server did not resume it or it is older
    than `SESSION_REFRESH` seconds: reading a session back costs as much as a certificate parse."""

    sessions: dict[str, tuple[ssl.SSLSession, float]]

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if session is None and not server_side:
            session = _OFFER.get()
            _OFFER.set(None)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def offer_session(self, key: str) -> None:
        """Resume `key`'s session (if any) on the next connection this task makes."""
        held = self.sessions.get(key)
        _OFFER.set(held[0] if held is not None else None)

    def wants_session(self, key: str, ssl_object: Any, now: float) -> bool:
        """Whether the session of this new connection to `key` should replace the one held."""
        held = self.sessions.get(key)
        return held is None or not ssl_object.session_reused or now - held[1] > SESSION_REFRESH

    def keep_session(self, key: str, ssl_object: Any, now: float) -> None:
        """Hold the session of an established connection to `key` (once its ticket has arrived)."""
        session = ssl_object.session if ssl_object is not None else None
        if session is None or not session.has_ticket:
            return
        if len(self.sessions) >= MAX_SESSIONS and key not in self.sessions:
            self.sessions.pop(next(iter(self.sessions)))
        self.sessions[key] = (session, now)


def client_context(creds: Credentials) -> MeshClientContext:
    ctx = MeshClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sessions = {}
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


_TLS_VERSIONS = {"TLSv1_0": ssl.TLSVersion.TLSv1, "TLSv1_1": ssl.TLSVersion.TLSv1_1,
                 "TLSv1_2": ssl.TLSVersion.TLSv1_2, "TLSv1_3": ssl.TLSVersion.TLSv1_3}


def gateway_server_context(creds: Credentials, min_version: str, max_version: str = "",
                           ciphers: tuple[str, ...] = (), alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A gateway listener's TLS for clients outside the mesh: the leaf (with its DNS SANs), no client
    certificate asked for, Consul's version bounds (`TLSv1_2` …) and cipher suites (OpenSSL names)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION
    try:
        ctx.minimum_version = _TLS_VERSIONS[min_version]
        if max_version:
            ctx.maximum_version = _TLS_VERSIONS[max_version]
        if ciphers:
            ctx.set_ciphers(":".join(ciphers))
    except (KeyError, ssl.SSLError, ValueError) as e:
        raise MeshTLSError(f"cannot apply the TLS settings ({min_version}..{max_version or 'any'}, "
                           f"{len(ciphers)} cipher suite(s)): {e}") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    _load_chain(ctx, creds)
    ctx.verify_mode = ssl.CERT_NONE  # the outside client is not in the mesh
    return ctx


@dataclass(frozen=True, slots=True)
class PeerCert:
    uri: str  # the first URI SAN (a SPIFFE ID in the mesh), "" when there is none
    not_after: float  # unix time the certificate expires


@functools.lru_cache(maxsize=1024)
def _peer_cert(der: bytes) -> PeerCert:
    """What the proxy needs of a verified peer certificate; memoized by its DER bytes (pure), since
    decoding a certificate again on every connection costs more than the rest of the accept path."""
    try:
        cert = x509.load_der_x509_certificate(der)
        not_after = cert.not_valid_after_utc.timestamp()
    except ValueError:
        return PeerCert("", 0.0)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        uris = []
    return PeerCert(uris[0] if uris else "", not_after)


def peer_cert(ssl_object: Any) -> PeerCert | None:
    """The verified peer certificate's identity and expiry (None when the peer sent none)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return _peer_cert(der) if der else None


def resumption_refusal(cert: PeerCert | None, session_time: float, now: float, trust_reduced_at: float) -> str:
    """Why a resumed TLS session may not be used ("" when it may). Resumption skips the certificate
    checks, so the certificate the session was made with must still be unexpired, and no root may have
    left the trusted set since the session was made (its chain may have ended there)."""
    if cert is None or not cert.uri:
        return "resumed TLS session without a peer identity"
    if cert.not_after <= now:
        return "resumed TLS session whose client certificate has expired"
    if trust_reduced_at and session_time <= trust_reduced_at:
        return "resumed TLS session from before a CA root was removed"
    return ""


def peer_uri(ssl_object: Any) -> str | None:
    """The first URI SAN of the verified peer certificate (a SPIFFE ID in the mesh), or None."""
    cert = peer_cert(ssl_object)
    return cert.uri or None if cert is not None else None


def sni_name(service: str, datacenter: str, trust_domain: str) -> str:
    """Consul's SNI for a service: `<svc>.default.<dc>.internal.<trust-domain>` (mesh gateways route on it)."""
    return f"{service}.default.{datacenter}.internal.{trust_domain}"
