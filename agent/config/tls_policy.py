"""Consul's `tls_min_version` and `tls_cipher_suites` (in `tls.defaults`, `tls.internal_rpc`, `tls.https`, or
the legacy top-level keys), read and applied to Python's TLS contexts.

Versions are Consul's names (`TLSv1_2`, `TLSv1_3`; the older `tls12`, `tls13` too). TLS 1.0 and 1.1 cannot
be honoured — the OpenSSL these agents run on refuses them at its default security level — so asking for
them stops the agent with one line rather than quietly serving 1.2. Cipher suites are Go's names (what
Consul's configs carry), each mapped to OpenSSL's; they govern TLS 1.2 only, so with `TLSv1_3` they are
an error, as in Consul.
"""

from __future__ import annotations

import ssl

from proconsul.agent.config.model import ConfigError

VERSIONS = {"TLSv1_2": ssl.TLSVersion.TLSv1_2, "TLSv1_3": ssl.TLSVersion.TLSv1_3}
LEGACY_VERSIONS = {"tls12": "TLSv1_2", "tls13": "TLSv1_3", "tls10": "TLSv1_0", "tls11": "TLSv1_1"}
GO_CIPHERS = {  # the ECDHE suites Consul accepts, by Go's name → OpenSSL's
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
}


def min_version(key: str, value: object, src: str) -> str:
    """A `tls_min_version` value as Consul's name (`TLSv1_2`, `TLSv1_3`)."""
    text = str(value)
    name = LEGACY_VERSIONS.get(text, text)
    if name in ("TLSv1_0", "TLSv1_1"):
        raise ConfigError(f"{src}: {key} {text!r} cannot be honoured: TLS 1.0 and 1.1 are refused by this "
                          "agent's OpenSSL; use TLSv1_2 or TLSv1_3")
    if name not in VERSIONS:
        raise ConfigError(f"{src}: {key} must be TLSv1_2 or TLSv1_3, got {text!r}")
    return name


def cipher_suites(key: str, value: object, src: str) -> str:
    """A `tls_cipher_suites` value (Go's names, comma-separated) as OpenSSL's cipher string."""
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{src}: {key} lists no cipher suite")
    unknown = [n for n in names if n not in GO_CIPHERS]
    if unknown:
        raise ConfigError(f"{src}: {key}: {', '.join(unknown)} is not a supported cipher suite (supported: "
                          f"{', '.join(GO_CIPHERS)})")
    return ":".join(dict.fromkeys(GO_CIPHERS[n] for n in names))


def check(version: str, ciphers: str, where: str) -> None:
    """Consul's rule: cipher suites cannot be chosen for TLS 1.3."""
    if ciphers and version == "TLSv1_3":
        raise ConfigError(f"{where}: tls_cipher_suites cannot be set with tls_min_version TLSv1_3 (TLS 1.3's "
                          "suites are not configurable)")


def apply(ctx: ssl.SSLContext, version: str, ciphers: str) -> None:
    """Set a context's lowest version and its TLS 1.2 suites."""
    ctx.minimum_version = VERSIONS.get(version or "TLSv1_2", ssl.TLSVersion.TLSv1_2)
    if ciphers:
        ctx.set_ciphers(ciphers)
