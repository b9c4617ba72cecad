"""The built-in certificate authority (Consul's "consul" provider) with the `cryptography` package.

Functions take the time, keys and serial numbers as inputs: the leader generates them and proposes
the results through the log, so every server stores the same CA state. Roots are EC P-256 (or
P-384), 10 years; leaves carry the service's SPIFFE URI and a DNS name, 72 h by default. Rotation
cross-signs the new root with the old key so leaves of either root verify during the change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import InvalidCAConfig, InvalidCSR
from .spiffe import AgentID, ServiceID, parse

ROOT_TTL = dt.timedelta(days=3650)
DEFAULT_LEAF_TTL = 72 * 3600.0
CLOCK_SKEW = dt.timedelta(minutes=1)
CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1}


@dataclass(frozen=True, slots=True)
class Root:
    """A CA root as Consul's API shows it, plus its signing key (kept out of API answers)."""

    row: dict[str, Any]
    key_pem: str


def generate_key(bits: int = 256) -> ec.EllipticCurvePrivateKey:
    curve = CURVES.get(bits)
    if curve is None:
        raise InvalidCAConfig(f"PrivateKeyBits {bits} is not supported for ec keys: use 256 or 384")
    return ec.generate_private_key(curve())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _ski(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _root_row(cert: x509.Certificate, name: str, intermediates: list[str], active: bool, bits: int) -> dict[str, Any]:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return {
        "ID": _colon_hex(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest()),
        "Name": name,
        # Consul keeps the low 64 bits (Go's big.Int.Uint64): openssl's roots have 159-bit random serials.
        "SerialNumber": cert.serial_number & 0xFFFF_FFFF_FFFF_FFFF,
        "SigningKeyID": _colon_hex(ski),
        "ExternalTrustDomain": "",
        "NotBefore": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "NotAfter": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "RootCert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "IntermediateCerts": intermediates,
        "Active": active,
        "PrivateKeyType": "ec",
        "PrivateKeyBits": bits,
    }


def generate_root(trust_domain: str, now: dt.datetime, serial: int, key: ec.EllipticCurvePrivateKey | None = None,
                  bits: int = 256) -> Root:
    """A new self-signed root for `trust_domain`."""
    key = key or generate_key(bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Proconsul CA {serial}")])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(_ski(key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Root(_root_row(cert, "Proconsul CA Primary Cert", [], True, key.curve.key_size), key_pem(key))


def root_from_config(private_key: str, root_cert: str) -> Root:
    """An operator-supplied root: both PEMs must parse, the key must match, the cert must be a CA."""
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise InvalidCAConfig(f"Config.PrivateKey does not parse as an unencrypted PEM private key: {e}") from None
    try:
        cert = x509.load_pem_x509_certificate(root_cert.encode())
    except ValueError as e:
        raise InvalidCAConfig(f"Config.RootCert does not parse as a PEM certificate: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidCAConfig("Config.PrivateKey must be an EC key (PrivateKeyType \"ec\")")
    if key.public_key().public_numbers() != getattr(cert.public_key(), "public_numbers", lambda: None)():
        raise InvalidCAConfig("Config.PrivateKey does not match the public key in Config.RootCert")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise InvalidCAConfig("Config.RootCert is not a CA certificate (BasicConstraints CA:true is missing)")
    if not any(isinstance(e.value, x509.SubjectKeyIdentifier) for e in cert.extensions):
        raise InvalidCAConfig("Config.RootCert has no SubjectKeyIdentifier extension")
    return Root(_root_row(cert, "Proconsul CA Primary Cert", [], True, key.curve.key_size), private_key)


def cross_sign(new_root: Root, old_root: Root, now: dt.datetime, serial: int) -> str:
    """The new root's public key and subject, issued and signed by the old root: a bridge for clients
    that trust only the old root while leaves move to the new one."""
    new_cert = x509.load_pem_x509_certificate(new_root.row["RootCert"].encode())
    old_cert = x509.load_pem_x509_certificate(old_root.row["RootCert"].encode())
    old_key = serialization.load_pem_private_key(old_root.key_pem.encode(), password=None)
    not_after = min(new_cert.not_valid_after_utc, old_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(new_cert.subject).issuer_name(old_cert.subject).public_key(new_cert.public_key())
               .serial_number(serial).not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after))
    for ext in new_cert.extensions:
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue  # the issuer is now the old root: its key identifier is added below (openssl roots have one)
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(old_cert.public_key()),
                                    critical=False)
    return builder.sign(old_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def make_csr(uri: str, key: ec.EllipticCurvePrivateKey, common_name: str, dns_names: list[str] | None = None) -> str:
    """A CSR for a SPIFFE identity (made on the agent; the key never leaves it)."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns_names or []]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


INTERMEDIATE_TTL = dt.timedelta(days=365)


def make_intermediate_csr(trust_domain: str, datacenter: str, key: ec.EllipticCurvePrivateKey) -> str:
    """A secondary datacenter's request for an intermediate CA, for the primary's root to sign."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Proconsul CA {datacenter}")]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                          critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def sign_intermediate(csr_pem: str, root: Root, trust_domain: str, now: dt.datetime, serial: int) -> str:
    """The primary signs a secondary's intermediate CA (pathlen 0: it signs leaves only). The CSR must
    be for this trust domain; the intermediate never outlives the root."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise InvalidCSR(f"intermediate CSR does not parse as PEM: {e}") from None
    if not csr.is_signature_valid:
        raise InvalidCSR("intermediate CSR signature is not valid")
    try:
        uris = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [f"spiffe://{trust_domain}"]:
        raise InvalidCSR(f"intermediate CSR must name exactly spiffe://{trust_domain}, not {uris}")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidCSR("intermediate CSR must carry an EC key")
    root_cert = x509.load_pem_x509_certificate(root.row["RootCert"].encode())
    root_key = serialization.load_pem_private_key(root.key_pem.encode(), password=None)
    not_after = min(now + INTERMEDIATE_TTL, root_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(root_cert.subject).public_key(key).serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .add_extension(_ski(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_cert.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def service_dns_name(service: str, trust_domain: str) -> str:
    return f"{service}.svc.default.{trust_domain.split('.')[0][:8]}.mesh"


# auto_encrypt: a client agent does not know the trust domain before it has a certificate, so its CSR names
# this one (Consul's placeholder) and the server signs for the real one.
PLACEHOLDER_TRUST_DOMAIN = "dummy.trustdomain"


def sign_leaf(csr_pem: str, root: Root, trust_domain: str, now: dt.datetime, serial: int,
              ttl_seconds: float = DEFAULT_LEAF_TTL, expect_service: str | None = None,
              expect_agent_dc: str | None = None) -> dict[str, Any]:
    """Sign a service (or agent) CSR with the active root; returns Consul's IssuedCert shape
    (without the private key, which the agent adds). Refuses another trust domain or service. With
    `expect_agent_dc` (auto_encrypt) only an agent identity of that datacenter, under the placeholder
    trust domain, is signed — for the real one."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise InvalidCSR(f"CSR does not parse as PEM: {e}") from None
    if not csr.is_signature_valid:
        raise InvalidCSR("CSR signature is not valid")
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidCSR("CSR has no SubjectAlternativeName with a SPIFFE URI") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidCSR(f"CSR must carry exactly one URI SAN, found {len(uris)}")
    ident = parse(uris[0])
    if expect_agent_dc is not None:
        if not isinstance(ident, AgentID) or ident.datacenter != expect_agent_dc or \
                ident.trust_domain != PLACEHOLDER_TRUST_DOMAIN:
            raise InvalidCSR(f"an auto_encrypt CSR must be for an agent of datacenter {expect_agent_dc} under "
                             f"spiffe://{PLACEHOLDER_TRUST_DOMAIN}, not {uris[0]!r}")
        ident = AgentID(trust_domain, ident.datacenter, ident.node_id)
        uris = [ident.uri]
    if ident.trust_domain != trust_domain:
        raise InvalidCSR(f"CSR is for trust domain {ident.trust_domain!r}, this CA signs for {trust_domain!r}")
    if expect_service is not None:
        if not isinstance(ident, ServiceID) or ident.service != expect_service:
            raise InvalidCSR(f"CSR is for {uris[0]!r}, not for service {expect_service!r}")
    # In a secondary datacenter the signer is its intermediate (SigningCert), itself signed by the root.
    root_cert = x509.load_pem_x509_certificate((root.row.get("SigningCert") or root.row["RootCert"]).encode())
    root_key = serialization.load_pem_private_key(root.key_pem.encode(), password=None)
    dns = list(sans.get_values_for_type(x509.DNSName))
    if isinstance(ident, ServiceID):
        dns = [service_dns_name(ident.service, trust_domain)] + [d for d in dns if d != service_dns_name(
            ident.service, trust_domain)]
        cn = ident.service
    else:
        cn = ident.node_id
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uris[0])] + [x509.DNSName(d) for d in dns]
    not_after = now + dt.timedelta(seconds=ttl_seconds)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(root_cert.subject).public_key(csr.public_key()).serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(_ski(csr.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_cert.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    chain = "".join(root.row.get("IntermediateCerts") or [])
    return {
        "SerialNumber": _colon_hex(serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")),
        "CertPEM": pem + chain,
        "Service": ident.service if isinstance(ident, ServiceID) else "",
        "ServiceURI": uris[0] if isinstance(ident, ServiceID) else "",
        "Agent": ident.node_id if isinstance(ident, AgentID) else "",
        "AgentURI": uris[0] if isinstance(ident, AgentID) else "",
        "ValidAfter": (now - CLOCK_SKEW).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ValidBefore": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def leaf_needs_renewal(cert_pem: str, now: dt.datetime, jitter: float = 0.0) -> bool:
    """Renew after 60–90% of the lifetime (`jitter` in [0, 1) picks the point), as Consul spreads renewals."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * (0.6 + 0.3 * jitter)


def verify_signed_by(cert_pem: str, issuer_pem: str) -> bool:
    """True when `cert_pem`'s first certificate is signed by `issuer_pem`'s key."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    issuer = x509.load_pem_x509_certificate(issuer_pem.encode())
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
