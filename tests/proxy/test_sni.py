"""The mesh gateway's pure parts: the SNI of real ClientHellos (made by Python's ssl), Consul's names."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.connect.proxy.sni import Incomplete, NotClientHello, client_hello_sni, parse_sni_name


def hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_of_a_real_client_hello_and_incomplete_until_the_record_is_whole() -> None:
    data = hello("web.default.dc2.internal.1234.mesh")
    assert client_hello_sni(data) == "web.default.dc2.internal.1234.mesh"
    for cut in (0, 3, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(Incomplete):
            client_hello_sni(data[:cut])
    assert client_hello_sni(data + b"more bytes after the record") == "web.default.dc2.internal.1234.mesh"


def test_no_sni_and_not_tls() -> None:
    assert client_hello_sni(hello(None)) is None
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"\x17\x03\x03\x00\x01x"):
        with pytest.raises(NotClientHello):
            client_hello_sni(junk)


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        client_hello_sni(data)
    except (Incomplete, NotClientHello):
        pass


HELLO = hello("db.default.dc1.internal.abcd.mesh")


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=400))
def test_corrupting_a_real_hello_never_crashes(i: int) -> None:
    data = bytearray(HELLO)
    data[min(i, len(data) - 1)] ^= 0xFF
    try:
        client_hello_sni(bytes(data))
    except (Incomplete, NotClientHello):
        pass


def test_consul_sni_names() -> None:
    t = parse_sni_name("web.default.dc2.internal.11-22.mesh", "11-22.mesh")
    assert t is not None and (t.service, t.datacenter) == ("web", "dc2")
    assert parse_sni_name("web.default.dc2.internal.other.mesh", "11-22.mesh") is None
    assert parse_sni_name("web.ns1.dc2.internal.11-22.mesh", "11-22.mesh") is None
    assert parse_sni_name("dc2.internal.11-22.mesh", "11-22.mesh") is None
    assert parse_sni_name(".default.dc2.internal.11-22.mesh", "11-22.mesh") is None
    sub = parse_sni_name("v2.web.default.dc2.internal.11-22.mesh", "11-22.mesh")
    assert sub is not None and (sub.subset, sub.service, sub.datacenter) == ("v2", "web", "dc2")
    assert parse_sni_name("a.v2.web.default.dc2.internal.11-22.mesh", "11-22.mesh") is None
    assert parse_sni_name(".web.default.dc2.internal.11-22.mesh", "11-22.mesh") is None
