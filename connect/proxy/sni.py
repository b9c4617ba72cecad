"""Mesh gateways' routing, pure: the server name in a TLS ClientHello, and what Consul's SNI names mean.

A gateway never terminates TLS: it reads the first TLS record, takes the SNI from the ClientHello,
and splices the bytes on. `client_hello_sni` raises `Incomplete` until the whole record has arrived
and `NotClientHello` for anything else (a malformed or non-TLS first record is dropped, never
crashes the gateway). `parse_sni_name` reads Consul's service SNI,
`[<subset>.]<service>.default.<datacenter>.internal.<trust-domain>`.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HELLO = 16 * 1024 + 5  # one TLS record at most


class Incomplete(Exception):  # noqa: N818 — "need more bytes", not an error
    """The ClientHello record has not fully arrived yet."""


class NotClientHello(Exception):  # noqa: N818 — the peer's bytes are the problem, named as such
    """The first record is not a TLS ClientHello (or is malformed); the message says how."""


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise NotClientHello("truncated ClientHello")


def client_hello_sni(data: bytes) -> str | None:
    """The server name in the ClientHello that starts `data` (None when it carries none)."""
    if len(data) < 5:
        raise Incomplete
    if data[0] != 0x16 or data[1] != 0x03:
        raise NotClientHello(f"first record is not a TLS handshake (type {data[0]:#x})")
    length = int.from_bytes(data[3:5], "big")
    if length > MAX_HELLO - 5:
        raise NotClientHello(f"first record of {length} bytes is too long for a ClientHello")
    if len(data) < 5 + length:
        raise Incomplete
    rec = data[5:5 + length]
    _need(rec, 4)
    if rec[0] != 0x01:
        raise NotClientHello(f"first handshake message is type {rec[0]}, not ClientHello")
    hs_len = int.from_bytes(rec[1:4], "big")
    body = rec[4:4 + hs_len]
    if len(body) < hs_len:
        raise NotClientHello("ClientHello spans more than one record")
    pos = 2 + 32  # client_version, random
    _need(body, pos + 1)
    pos += 1 + body[pos]  # session_id
    _need(body, pos + 2)
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher_suites
    _need(body, pos + 1)
    pos += 1 + body[pos]  # compression_methods
    if pos == len(body):
        return None  # no extensions
    _need(body, pos + 2)
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    _need(body, end)
    pos += 2
    while pos + 4 <= end:
        ext_type, ext_len = int.from_bytes(body[pos:pos + 2], "big"), int.from_bytes(body[pos + 2:pos + 4], "big")
        pos += 4
        _need(body, pos + ext_len)
        if ext_type == 0:  # server_name: a list of (type, name); type 0 is a host name
            ext = body[pos:pos + ext_len]
            i = 2
            while i + 3 <= len(ext):
                name_type, name_len = ext[i], int.from_bytes(ext[i + 1:i + 3], "big")
                name = ext[i + 3:i + 3 + name_len]
                if len(name) < name_len:
                    raise NotClientHello("truncated server_name")
                if name_type == 0:
                    try:
                        return name.decode("ascii").lower()
                    except UnicodeDecodeError:
                        raise NotClientHello("server_name is not ASCII") from None
                i += 3 + name_len
            return None
        pos += ext_len
    return None


@dataclass(frozen=True, slots=True)
class SNITarget:
    service: str
    datacenter: str
    subset: str = ""


def parse_sni_name(sni: str, trust_domain: str) -> SNITarget | None:
    """`[<subset>.]<service>.default.<dc>.internal.<trust-domain>` → (service, dc, subset); None for any other
    name. Consul's service names are DNS labels, so a name with two labels before the namespace is a subset's."""
    suffix = f".internal.{trust_domain.lower()}"
    if not trust_domain or not sni.endswith(suffix):
        return None
    parts = sni[: -len(suffix)].split(".")
    if len(parts) not in (3, 4) or parts[-2] != "default" or not parts[-1] or not all(parts[:-2]):
        return None
    return SNITarget(parts[-3], parts[-1], parts[0] if len(parts) == 4 else "")
