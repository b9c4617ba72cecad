"""Certificates for agent TLS (`proconsul tls ca create` / `tls cert create`), as Consul's tls command
makes them: an EC CA, and server/client/cli certificates signed by it with the expected names."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .ca import generate_key, key_pem
from .errors import InvalidCAConfig


def create_ca(domain: str, now: dt.datetime, serial: int, days: int = 1825) -> tuple[str, str]:
    """(certificate PEM, key PEM) of a new CA for agent TLS (`domain` names it, it does not constrain it)."""
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Proconsul Agent CA {serial} ({domain.rstrip('.')})"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Proconsul")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))  # no name constraints, as Consul's default (its -name-constraint is off)
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


def create_cert(kind: str, datacenter: str, domain: str, ca_pem: str, ca_key_pem: str, now: dt.datetime,
                serial: int, days: int = 365, dns_names: list[str] | None = None,
                ip_addresses: list[str] | None = None) -> tuple[str, str]:
    """(certificate PEM, key PEM) for a `server`, `client` or `cli` certificate."""
    if kind not in ("server", "client", "cli"):
        raise InvalidCAConfig(f"certificate kind must be server, client or cli, not {kind!r}")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem.encode())
        ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    except ValueError as e:
        raise InvalidCAConfig(f"the CA certificate or key does not parse: {e}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or \
            ca_key.public_key().public_numbers() != getattr(ca_cert.public_key(), "public_numbers", lambda: None)():
        raise InvalidCAConfig("the CA key does not match the CA certificate")
    dom = domain.rstrip(".")
    cn = f"{kind}.{datacenter}.{dom}"
    names = [cn, "localhost"] if kind in ("server", "client") else [cn]
    names += [d for d in dns_names or [] if d not in names]
    ips = ["127.0.0.1"] if kind in ("server", "client") else []
    ips += [i for i in ip_addresses or [] if i not in ips]
    try:
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names] + [
            x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    except ValueError as e:
        raise InvalidCAConfig(f"bad additional IP address: {e}") from None
    usages = {"server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
              "client": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
              "cli": [ExtendedKeyUsageOID.CLIENT_AUTH]}[kind]
    key = generate_key()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)
