"""Gossip encryption: the keyring and the AES-GCM sealer the pool shell applies to every frame.

A keyring is an ordered list of AES keys (16, 24 or 32 bytes: AES-128/192/256); the first is the
**primary**: frames are sealed with it, and every installed key is tried when opening, so a cluster
can move to a new key without a moment in which two members cannot read each other (Consul's
rotation: install everywhere → use everywhere → remove the old one everywhere).

A sealed frame keeps the codec's header in clear, with flag 0x02 set, then a 12-byte random nonce
and the AES-GCM ciphertext of the rest of the frame (the msgpack payload) with its 16-byte tag:

    sealed = version:u8  flags|0x02:u8  [label_len:u8 label]  nonce:12  ciphertext+tag

The header (version, flags, label) is the additional authenticated data: a frame moved to another
pool, or with its flags changed, does not open. Opening puts the original header back, so the
codec and the core never see the difference.

`encrypt_verify_incoming = false` accepts plaintext frames as well (the rolling-upgrade path Consul
documents), `encrypt_verify_outgoing = false` sends plaintext; both default to true. Nothing else
ever falls back to plaintext: a frame that does not open is dropped and counted under
`dropped_key` (no installed key opens it) or `dropped_plaintext` (plaintext while incoming frames
must be sealed).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .codec import FLAG_ENCRYPTED, FLAG_LABEL, VERSION
from .errors import Malformed, MembershipError

KEY_SIZES = (16, 24, 32)
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE  # bytes a sealed frame adds to a plain one


class KeyringError(MembershipError):
    """A key that is malformed, or a keyring operation that cannot be done; the message says which and why."""


def decode_key(text: str, what: str = "key") -> bytes:
    """A base64 key as Consul writes it (`consul keygen`), checked: 16, 24 or 32 bytes once decoded."""
    if not isinstance(text, str) or not text.strip():
        raise KeyringError(f"{what}: empty; give a base64 key of 16, 24 or 32 bytes (`proconsul keygen` makes one)")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{what}: not valid base64; give a key made by `proconsul keygen`") from None
    if len(raw) not in KEY_SIZES:
        raise KeyringError(f"{what}: decodes to {len(raw)} bytes; a gossip key must be 16, 24 or 32 bytes")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Keyring:
    """The installed keys, the primary first. Operations follow memberlist's keyring rules."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys: list[bytes] = []
        for k in keys:
            if len(k) not in KEY_SIZES:
                raise KeyringError(f"key size must be 16, 24 or 32 bytes, not {len(k)}")
            if k not in self.keys:
                self.keys.append(k)
        if not self.keys:
            raise KeyringError("a keyring needs at least one key")
        self._ciphers = [AESGCM(k) for k in self.keys]

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    def _changed(self) -> None:
        self._ciphers = [AESGCM(k) for k in self.keys]

    def install(self, key: bytes) -> None:
        """Add a key (no change when it is already installed); the primary stays the primary."""
        if len(key) not in KEY_SIZES:
            raise KeyringError(f"key size must be 16, 24 or 32 bytes, not {len(key)}")
        if key not in self.keys:
            self.keys.append(key)
            self._changed()

    def use(self, key: bytes) -> None:
        """Make an installed key the primary."""
        if key not in self.keys:
            raise KeyringError("Requested key is not in the keyring")
        self.keys.remove(key)
        self.keys.insert(0, key)
        self._changed()

    def remove(self, key: bytes) -> None:
        """Drop a key; the primary cannot be removed (Consul's wording)."""
        if key == self.keys[0]:
            raise KeyringError("Removing the primary key is not allowed")
        if key in self.keys:
            self.keys.remove(key)
            self._changed()

    def encoded(self) -> list[str]:
        return [encode_key(k) for k in self.keys]

    # ------------------------------------------------------------------ sealing
    def seal(self, header: bytes, payload: bytes, nonce: bytes) -> bytes:
        """`header` (already carrying FLAG_ENCRYPTED) + nonce + AES-GCM(payload) under the primary key."""
        return header + nonce + self._ciphers[0].encrypt(nonce, payload, header)

    def open(self, header: bytes, nonce: bytes, sealed: bytes | memoryview) -> bytes:
        """The payload, trying the primary first and then every other key; raises `Malformed("key")`."""
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, sealed, header)
            except InvalidTag:
                continue
        raise Malformed("key", "no installed gossip key opens it (a different `encrypt` key?)")


def _header_len(data: bytes) -> int:
    """Length of a frame's clear header (version, flags, label), or raise `Malformed`."""
    if len(data) < 2:
        raise Malformed("truncated", f"{len(data)} bytes")
    if data[0] != VERSION:
        raise Malformed("version", f"protocol version {data[0]}")
    if data[1] & FLAG_LABEL:
        if len(data) < 3 or len(data) < 3 + data[2]:
            raise Malformed("truncated", "label cut short")
        return 3 + data[2]
    return 2


def is_sealed(data: bytes) -> bool:
    return len(data) > 1 and bool(data[1] & FLAG_ENCRYPTED)


class GossipSealer:
    """The pool's `Sealer`: seals outgoing frames with the keyring's primary key, opens incoming ones.

    The keyring is shared with the owner (the agent's keyring manager changes it in place when an
    operator installs, uses or removes a key), so a rotation takes effect on the next frame."""

    def __init__(self, keyring: Keyring, *, verify_incoming: bool = True, verify_outgoing: bool = True) -> None:
        self.keyring = keyring
        self.verify_incoming = verify_incoming
        self.verify_outgoing = verify_outgoing

    def seal(self, frame: bytes) -> bytes:
        if not self.verify_outgoing:
            return frame
        n = _header_len(frame)
        header = bytes((frame[0], frame[1] | FLAG_ENCRYPTED)) + frame[2:n]
        return self.keyring.seal(header, frame[n:], os.urandom(NONCE_SIZE))

    def open(self, data: bytes) -> bytes:
        n = _header_len(data)
        if not data[1] & FLAG_ENCRYPTED:
            if self.verify_incoming:
                raise Malformed("plaintext", "a plaintext frame, and this pool's gossip is encrypted")
            return data
        if len(data) < n + SEAL_OVERHEAD:
            raise Malformed("truncated", "sealed frame cut short")
        header = data[:n]
        view = memoryview(data)
        payload = self.keyring.open(header, data[n:n + NONCE_SIZE], view[n + NONCE_SIZE:])
        return bytes((data[0], data[1] & ~FLAG_ENCRYPTED)) + data[2:n] + payload


# ---------------------------------------------------------------------- the keyring file
def read_keyring_file(path: Path) -> list[bytes]:
    """A keyring file as Consul writes it (`serf/local.keyring`): a JSON list of base64 keys, primary first."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KeyringError(f"keyring file {path}: cannot be read: {e}") from None
    if not isinstance(data, list) or not data:
        raise KeyringError(f"keyring file {path}: expected a JSON list of base64 keys, primary first")
    return [decode_key(k, f"keyring file {path}") for k in data]


def write_keyring_file(path: Path, keyring: Keyring) -> None:
    """Write the keyring atomically (a temporary file renamed over it), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keyring.encoded(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
