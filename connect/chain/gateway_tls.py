"""TLS on ingress-gateway listeners, as Consul configures it (pure: the config entry in, settings out).

`TLS { Enabled, TLSMinVersion, TLSMaxVersion, CipherSuites }` on the entry applies to every listener; a
listener's own `TLS` block replaces it. The certificate is the gateway's leaf from the Connect CA, whose
DNS SANs the agent fills in as Consul's does: `*.ingress.<domain>` and `*.ingress.<dc>.<domain>` (the
default `<service>.ingress.*` hosts), the same under the alt domain, and every `Hosts` name of the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TLS_VERSIONS = ("TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3")
DEFAULT_MIN = "TLSv1_2"  # Consul's (Envoy's) default for a listener
# Consul's (Go's) cipher-suite names → OpenSSL's; TLS 1.3 suites are not configurable (as in Consul).
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
}


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    min_version: str = DEFAULT_MIN  # one of TLS_VERSIONS other than TLS_AUTO
    max_version: str = ""  # "" : the highest the library speaks
    cipher_suites: tuple[str, ...] = ()  # OpenSSL names, for TLS ≤ 1.2


def _version(v: str | None, default: str) -> str:
    return default if not v or v == "TLS_AUTO" else v


def listener_tls(entry: dict[str, Any], listener: dict[str, Any]) -> ListenerTLS | None:
    """The TLS a listener serves (its own block, else the entry's), or None for plain text."""
    block = listener.get("TLS") or entry.get("TLS") or {}
    if not block.get("Enabled"):
        return None
    return ListenerTLS(_version(block.get("TLSMinVersion"), DEFAULT_MIN), _version(block.get("TLSMaxVersion"), ""),
                       tuple(CIPHER_SUITES[c] for c in block.get("CipherSuites") or [] if c in CIPHER_SUITES))


def tls_enabled(entry: dict[str, Any]) -> bool:
    return any(listener_tls(entry, lst) is not None for lst in entry.get("Listeners") or [])


def dns_sans(entry: dict[str, Any] | None, datacenter: str, domain: str, alt_domain: str = "") -> list[str]:
    """The DNS names the gateway's leaf carries when any listener serves TLS (else none)."""
    if not entry or entry.get("Kind") != "ingress-gateway" or not tls_enabled(entry):
        return []
    out = []
    for d in (domain, alt_domain):
        d = d.strip(".")
        if d:
            out += [f"*.ingress.{d}", f"*.ingress.{datacenter}.{d}"]
    for lst in entry.get("Listeners") or []:
        for svc in lst.get("Services") or []:
            out += [h for h in svc.get("Hosts") or [] if h not in out]
    return out


def version_rank(v: str) -> int:
    return TLS_VERSIONS.index(v) if v in TLS_VERSIONS else -1
