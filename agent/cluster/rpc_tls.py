"""TLS contexts for the server port (Raft and RPC) from the agent's `tls` settings, as Consul's
`tls.internal_rpc`: a server with `cert_file`/`key_file` accepts only TLS on its server port and,
with `verify_incoming`, only peers whose certificate the CA signed; with `verify_outgoing` an agent
dials servers over TLS, checking their certificate against `ca_file` — and, with
`verify_server_hostname`, that it names `server.<datacenter>.<domain>`. With `auto_encrypt.tls` a client
agent dials with `ca_file` and, once the servers have signed it (agent/connect/auto_encrypt.py), its own
certificate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from proconsul.agent.config import tls_policy
from proconsul.agent.config.model import AgentConfig


class TLSConfigError(Exception):
    """The TLS files cannot be used; the message names the setting and the reason."""


@dataclass(frozen=True)
class RPCTLS:
    server: ssl.SSLContext | None  # wraps the server port's listener
    client: ssl.SSLContext | None  # for dialling servers (RPC and Raft)
    server_hostname: str | None  # the name checked on servers' certificates (verify_server_hostname)
    # verify_incoming with auto_encrypt.allow_tls: the handshake lets a client without a certificate in, and
    # the server port then serves it nothing but the auto_encrypt calls.
    cert_required: bool = False


def _auto_encrypt_errors(cfg: AgentConfig) -> None:
    t = cfg.tls
    if cfg.auto_encrypt_tls:
        if cfg.server:
            raise TLSConfigError("auto_encrypt.tls is for client agents (servers sign their certificates: "
                                 "auto_encrypt.allow_tls)")
        if not t.ca_file:
            raise TLSConfigError("auto_encrypt.tls needs tls ca_file: the CA that signed the servers' certificates")
        if t.cert_file:
            raise TLSConfigError("auto_encrypt.tls and tls cert_file/key_file exclude each other: the agent "
                                 "certificate comes from the servers")
    if cfg.auto_encrypt_allow_tls:
        if not cfg.server:
            raise TLSConfigError("auto_encrypt.allow_tls is for servers (client agents ask with auto_encrypt.tls)")
        if not cfg.connect_enabled:
            raise TLSConfigError("auto_encrypt.allow_tls needs Connect (connect.enabled): the Connect CA signs "
                                 "the agent certificates")


def rpc_tls(cfg: AgentConfig) -> RPCTLS:
    t = cfg.tls
    _auto_encrypt_errors(cfg)
    if not t.enabled and not cfg.auto_encrypt_tls:
        if t.verify_incoming:
            raise TLSConfigError("tls: verify_incoming needs cert_file and key_file (the server's own certificate)")
        return RPCTLS(None, None, None)
    if (t.verify_incoming or t.verify_outgoing) and not t.ca_file:
        raise TLSConfigError("tls: verify_incoming/verify_outgoing need ca_file (the CA that signs agent certificates)")
    if bool(t.cert_file) != bool(t.key_file):
        raise TLSConfigError("tls: cert_file and key_file go together")
    if cfg.server and not t.cert_file:
        raise TLSConfigError("tls: a server needs cert_file and key_file to serve TLS on its server port")
    server_ctx = client_ctx = None
    try:
        if cfg.server:
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_policy.apply(server_ctx, t.tls_min_version, t.tls_cipher_suites)
            server_ctx.load_cert_chain(t.cert_file, t.key_file)
            if t.ca_file:
                server_ctx.load_verify_locations(t.ca_file)
            server_ctx.verify_mode = ssl.CERT_REQUIRED if t.verify_incoming and not cfg.auto_encrypt_allow_tls \
                else ssl.CERT_OPTIONAL if t.ca_file or cfg.auto_encrypt_allow_tls else ssl.CERT_NONE
        client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=t.ca_file or None)
        tls_policy.apply(client_ctx, t.tls_min_version, t.tls_cipher_suites)
        client_ctx.check_hostname = t.verify_server_hostname
        client_ctx.verify_mode = ssl.CERT_REQUIRED if t.ca_file else ssl.CERT_NONE
        if t.cert_file:
            client_ctx.load_cert_chain(t.cert_file, t.key_file)
    except (OSError, ssl.SSLError) as e:
        raise TLSConfigError(f"tls: cannot load the certificates (ca_file={t.ca_file!r}, cert_file={t.cert_file!r}, "
                             f"key_file={t.key_file!r}): {getattr(e, 'strerror', None) or e}") from None
    hostname = f"server.{cfg.datacenter}.{cfg.domain.rstrip('.')}" if t.verify_server_hostname else None
    return RPCTLS(server_ctx, client_ctx, hostname, bool(cfg.server and t.verify_incoming and cfg.auto_encrypt_allow_tls))
