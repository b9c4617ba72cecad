"""The gossip keyring and its AES-GCM sealer: key checks, memberlist's keyring rules, sealing and opening
(wrong key, plaintext, tampering, the rolling-enablement switches), and garbage that never crashes it."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proconsul.membership import codec as c
from proconsul.membership.errors import Malformed
from proconsul.membership.keyring import (
    SEAL_OVERHEAD,
    GossipSealer,
    Keyring,
    KeyringError,
    decode_key,
    read_keyring_file,
    write_keyring_file,
)

K1, K2, K3 = bytes(range(32)), bytes(range(1, 33)), bytes(range(16))
CODEC = c.Codec("lan:dc1")


def frame() -> bytes:
    return CODEC.packet([c.alive(7, "node-secret-name", "127.0.0.1", 8301, {"role": "node"})])


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"), ("not base64!", "not valid base64"), (base64.b64encode(b"x" * 20).decode(), "decodes to 20 bytes"),
])
def test_a_malformed_key_is_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(KeyringError, match=says):
        decode_key(text, "encrypt")


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_128_192_and_256_keys_are_accepted(size: int) -> None:
    raw = os.urandom(size)
    assert decode_key(base64.b64encode(raw).decode()) == raw
    s = GossipSealer(Keyring([raw]))
    assert s.open(s.seal(frame())) == frame()


def test_keyring_rules_follow_memberlist() -> None:
    kr = Keyring([K1])
    kr.install(K2)
    kr.install(K2)  # idempotent
    assert kr.keys == [K1, K2] and kr.primary == K1
    with pytest.raises(KeyringError, match="Requested key is not in the keyring"):
        kr.use(K3)
    with pytest.raises(KeyringError, match="Removing the primary key is not allowed"):
        kr.remove(K1)
    kr.use(K2)
    assert kr.primary == K2
    kr.remove(K1)
    kr.remove(K1)  # removing a key that is not there changes nothing
    assert kr.keys == [K2]


def test_a_sealed_frame_hides_the_payload_and_opens_only_with_an_installed_key() -> None:
    a, b = GossipSealer(Keyring([K1])), GossipSealer(Keyring([K2]))
    sealed = a.seal(frame())
    assert b"node-secret-name" not in sealed and b"lan:dc1" in sealed  # the label stays in clear (it is the AAD)
    assert sealed[1] & c.FLAG_ENCRYPTED and len(sealed) == len(frame()) + SEAL_OVERHEAD
    assert a.seal(frame()) != sealed  # a fresh nonce every time
    with pytest.raises(Malformed) as e:
        b.open(sealed)
    assert e.value.reason == "key"
    b.keyring.install(K1)  # the rotation's transition state: any installed key opens
    assert b.open(sealed) == frame()


def test_tampering_with_the_header_or_the_ciphertext_is_detected() -> None:
    s = GossipSealer(Keyring([K1]))
    sealed = bytearray(s.seal(frame()))
    moved = bytes(sealed).replace(b"lan:dc1", b"lan:dc2")  # replayed into another pool
    flipped = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
    for bad in (moved, flipped):
        with pytest.raises(Malformed) as e:
            s.open(bad)
        assert e.value.reason == "key"


def test_plaintext_is_dropped_unless_verify_incoming_is_off_and_sent_only_with_verify_outgoing_off() -> None:
    strict = GossipSealer(Keyring([K1]))
    with pytest.raises(Malformed) as e:
        strict.open(frame())
    assert e.value.reason == "plaintext"
    rolling_in = GossipSealer(Keyring([K1]), verify_incoming=False)
    assert rolling_in.open(frame()) == frame()
    assert rolling_in.open(strict.seal(frame())) == frame()  # sealed frames still open
    rolling_out = GossipSealer(Keyring([K1]), verify_incoming=False, verify_outgoing=False)
    assert rolling_out.seal(frame()) == frame()


@given(st.binary(max_size=300))
def test_garbage_never_crashes_the_sealer(data: bytes) -> None:
    s = GossipSealer(Keyring([K1]))
    try:
        s.open(data)
    except Malformed:
        pass


def test_the_keyring_file_is_consuls_json_list_primary_first_and_private(tmp_path: Path) -> None:
    path = tmp_path / "serf" / "local.keyring"
    kr = Keyring([K2, K1])
    write_keyring_file(path, kr)
    assert json.loads(path.read_text()) == [base64.b64encode(K2).decode(), base64.b64encode(K1).decode()]
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_keyring_file(path) == [K2, K1]
    path.write_text('["short"]')
    with pytest.raises(KeyringError, match="keyring file"):
        read_keyring_file(path)
