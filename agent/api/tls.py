"""The HTTPS listener's TLS context (Consul's `ports.https` with `tls.https` / `tls.defaults`): TLS 1.2 or
newer (`tls_min_version`, `tls_cipher_suites`), the agent's certificate, and with `verify_incoming` only clients whose certificate the CA signed.
Files that cannot be used stop the agent with one line naming the setting."""

from __future__ import annotations

import ssl

from proconsul.agent.config import tls_policy
from proconsul.agent.config.model import TLSSettings


class HTTPSConfigError(Exception):
    """The HTTPS settings cannot be honoured; the message names the setting."""


def https_context(t: TLSSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_policy.apply(ctx, t.tls_min_version, t.tls_cipher_suites)
    try:
        ctx.load_cert_chain(t.cert_file, t.key_file)
    except FileNotFoundError as e:
        raise HTTPSConfigError(f"tls.https: cannot read cert_file/key_file: {e.filename}: {e.strerror}") from None
    except (OSError, ssl.SSLError) as e:
        raise HTTPSConfigError(f"tls.https: cert_file {t.cert_file!r} and key_file {t.key_file!r} cannot be used "
                               f"(missing, not PEM, or the key does not match the certificate): {e}") from None
    if t.ca_file:
        try:
            ctx.load_verify_locations(t.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise HTTPSConfigError(f"tls.https: ca_file {t.ca_file!r} cannot be used: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if t.verify_incoming else ssl.CERT_NONE
    return ctx
