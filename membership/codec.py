"""The wire format of the gossip port: one frame shape for UDP datagrams and TCP stream messages.

    frame   = version:u8  flags:u8  [label_len:u8 label]  payload
    payload = msgpack array of messages; each message a msgpack array [type, field, ...]
    stream  = length:u32be frame   (TCP: push-pull and the fallback ping; one message per frame)

`version` is 1. `flags`: 0x01 a label follows — the pool's name (``lan:<datacenter>`` or ``wan``), so a
packet from another datacenter's pool is told apart and dropped; 0x02 the payload is sealed with AES-GCM
under the gossip keyring, the label then being its additional authenticated data (reserved for the
security issue: membership/keyring.py seals and opens them in the pool shell; without a keyring
they are dropped and counted). Other bits must be zero.

Messages (field order is the wire order):

    1 ping            seq target_name src_name src_addr src_port
    2 indirect_ping   seq target_name target_addr target_port want_nack src_name src_addr src_port
    3 ack             seq payload            payload: the responder's network coordinate (Vivaldi; reserved)
    4 nack            seq
    5 suspect         incarnation node from
    6 alive           incarnation node addr port tags
    7 dead            incarnation node from   (from == node: the member left)
    8 user_event      ltime id name payload node_filter service_filter tag_filter origin
    9 query, 10 query_response   reserved for the conformance issue (dropped, counted)
    16 pp_summary     join count bucket_bits bucket_hashes delegate_state
    17 pp_digest      bucket_bits buckets entries      entries: [name, incarnation, state]
    18 pp_records     records want                      records: [name, addr, port, tags, incarnation, state]
    19 pp_done
    20 pp_error       text
    21 request        name payload          (TCP only) an operation for the pool's owner: the shell hands it
    22 response       error payload          to `Pool(on_request=…)` and sends back its answer (the keyring's
                                             install/use/remove/list, see membership/keyring.py)

A datagram carries one or more messages (a probe with news piggybacked, or gossip) and never exceeds
the pool's `udp_buffer_size`. Decoding checks every field's type and range; anything else raises
`Malformed` with the reason it is counted under, and changes nothing.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .errors import ConfigError, Malformed

VERSION = 1
FLAG_LABEL = 0x01
FLAG_ENCRYPTED = 0x02  # AES-GCM under the gossip keyring (membership/keyring.py)
KNOWN_FLAGS = FLAG_LABEL | FLAG_ENCRYPTED

PING, INDIRECT_PING, ACK, NACK, SUSPECT, ALIVE, DEAD = 1, 2, 3, 4, 5, 6, 7
USER_EVENT, QUERY, QUERY_RESPONSE = 8, 9, 10  # queries reserved (conformance issue)
RESERVED_TYPES = frozenset({QUERY, QUERY_RESPONSE})
MAX_EVENT_BYTES = 1024  # an encoded user event: it must fit a datagram beside a probe
PP_SUMMARY, PP_DIGEST, PP_RECORDS, PP_DONE, PP_ERROR = 16, 17, 18, 19, 20
REQUEST, RESPONSE = 21, 22
MAX_REQUEST_BYTES = 64 << 10  # a request's or response's payload

# Member states on the wire (push-pull digests and records).
ALIVE_STATE, SUSPECT_STATE, DEAD_STATE, LEFT_STATE = 0, 1, 2, 3

MAX_NAME = 256  # bytes of a member name
MAX_TAGS_BYTES = 4096  # a member's tags, encoded (memberlist's meta limit is 512; Consul's tags need more)
MAX_STREAM_FRAME = 64 << 20  # a join reply of ~100,000 members
STREAM_HEADER = struct.Struct(">I")
UINT64 = 1 << 64
_unpackb = msgpack.unpackb


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def unpack_one(msg: bytes) -> Any:
    """One encoded message back (to validate what we are about to send)."""
    return _unpackb(msg)


def pack(msg: list[Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


# ---- message builders (each returns one encoded message) -------------------------------------------
def ping(seq: int, target: str, src_name: str, src_addr: str, src_port: int) -> bytes:
    return msgpack.packb([PING, seq, target, src_name, src_addr, src_port])


def indirect_ping(seq: int, target: str, target_addr: str, target_port: int, nack: bool, src_name: str,
                  src_addr: str, src_port: int) -> bytes:
    return msgpack.packb([INDIRECT_PING, seq, target, target_addr, target_port, nack, src_name, src_addr, src_port])


def ack(seq: int, payload: bytes = b"") -> bytes:
    return msgpack.packb([ACK, seq, payload], use_bin_type=True)


def nack(seq: int) -> bytes:
    return msgpack.packb([NACK, seq])


def suspect(incarnation: int, node: str, frm: str) -> bytes:
    return msgpack.packb([SUSPECT, incarnation, node, frm])


def alive(incarnation: int, node: str, addr: str, port: int, tags: dict[str, str]) -> bytes:
    return msgpack.packb([ALIVE, incarnation, node, addr, port, tags])


def dead(incarnation: int, node: str, frm: str) -> bytes:
    return msgpack.packb([DEAD, incarnation, node, frm])


def user_event(ltime: int, id: str, name: str, payload: bytes, node_filter: str, service_filter: str,
               tag_filter: str, origin: str) -> bytes:
    return msgpack.packb([USER_EVENT, ltime, id, name, payload, node_filter, service_filter, tag_filter, origin],
                         use_bin_type=True)


def pp_summary(join: bool, count: int, bits: int, hashes: list[int], delegate: bytes = b"") -> bytes:
    blob = b"".join(h.to_bytes(8, "big") for h in hashes)
    return pack([PP_SUMMARY, join, count, bits, blob, delegate])


def pp_digest(bits: int, buckets: list[int], entries: list[list[Any]]) -> bytes:
    return pack([PP_DIGEST, bits, buckets, entries])


def pp_records(records: list[list[Any]], want: list[str]) -> bytes:
    return pack([PP_RECORDS, records, want])


def pp_done() -> bytes:
    return pack([PP_DONE])


def pp_error(text: str) -> bytes:
    return pack([PP_ERROR, text[:512]])


def request(name: str, payload: bytes) -> bytes:
    return pack([REQUEST, name, payload])


def response(error: str, payload: bytes = b"") -> bytes:
    return pack([RESPONSE, error[:512], payload])


# ---- validation ----------------------------------------------------------------------------------
def _name(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_NAME


def _u64(v: Any) -> bool:
    return type(v) is int and 0 <= v < UINT64


def _port(v: Any) -> bool:
    return type(v) is int and 0 < v < 65536


def _addr(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= 255


def tags_ok(v: Any) -> bool:
    if type(v) is not dict or len(v) > 64:
        return False
    size = 0
    for k, x in v.items():
        if type(k) is not str or type(x) is not str:
            return False
        size += len(k) + len(x)
    return size <= MAX_TAGS_BYTES


def _state(v: Any) -> bool:
    return type(v) is int and 0 <= v <= LEFT_STATE


def record_ok(r: Any) -> bool:
    return (type(r) is list and len(r) == 6 and _name(r[0]) and _addr(r[1]) and _port(r[2]) and tags_ok(r[3])
            and _u64(r[4]) and _state(r[5]))


def digest_entry_ok(e: Any) -> bool:
    return type(e) is list and len(e) == 3 and _name(e[0]) and _u64(e[1]) and _state(e[2])


def valid(m: Any) -> bool:
    """Whether one decoded message has its type's fields with the right types and ranges."""
    if type(m) is not list or not m:
        return False
    t = m[0]
    n = len(m)
    if t == PING:
        return n == 6 and _u64(m[1]) and type(m[2]) is str and len(m[2]) <= MAX_NAME and _name(m[3]) \
            and _addr(m[4]) and _port(m[5])
    if t == ACK:
        return n == 3 and _u64(m[1]) and type(m[2]) is bytes and len(m[2]) <= 1024
    if t == ALIVE:
        return n == 6 and _u64(m[1]) and _name(m[2]) and _addr(m[3]) and _port(m[4]) and tags_ok(m[5])
    if t == SUSPECT or t == DEAD:
        return n == 4 and _u64(m[1]) and _name(m[2]) and _name(m[3])
    if t == INDIRECT_PING:
        return n == 9 and _u64(m[1]) and _name(m[2]) and _addr(m[3]) and _port(m[4]) and type(m[5]) is bool \
            and _name(m[6]) and _addr(m[7]) and _port(m[8])
    if t == NACK:
        return n == 2 and _u64(m[1])
    if t == USER_EVENT:
        return n == 9 and _u64(m[1]) and _name(m[2]) and _name(m[3]) and type(m[4]) is bytes \
            and len(m[4]) <= MAX_EVENT_BYTES and all(type(x) is str and len(x) <= MAX_NAME for x in m[5:8]) \
            and _name(m[8])
    if t == PP_SUMMARY:
        return n == 6 and type(m[1]) is bool and _u64(m[2]) and type(m[3]) is int and 0 <= m[3] <= 8 \
            and type(m[4]) is bytes and len(m[4]) == 8 << m[3] and type(m[5]) is bytes
    if t == PP_DIGEST:
        return n == 4 and type(m[1]) is int and 0 <= m[1] <= 8 and type(m[2]) is list \
            and all(type(b) is int and 0 <= b < 1 << m[1] for b in m[2]) and type(m[3]) is list \
            and all(digest_entry_ok(e) for e in m[3])
    if t == PP_RECORDS:
        return n == 3 and type(m[1]) is list and all(record_ok(r) for r in m[1]) and type(m[2]) is list \
            and all(_name(w) for w in m[2])
    if t == PP_DONE:
        return n == 1
    if t == PP_ERROR:
        return n == 2 and type(m[1]) is str
    if t == REQUEST:
        return n == 3 and _name(m[1]) and type(m[2]) is bytes and len(m[2]) <= MAX_REQUEST_BYTES
    if t == RESPONSE:
        return n == 3 and type(m[1]) is str and type(m[2]) is bytes and len(m[2]) <= MAX_REQUEST_BYTES
    return False


def hashes_from_blob(blob: bytes) -> list[int]:
    return [int.from_bytes(blob[i:i + 8], "big") for i in range(0, len(blob), 8)]


class Codec:
    """Frames for one pool: our header (version, flags, label) in front of msgpack-encoded messages."""

    def __init__(self, label: str = "") -> None:
        raw = label.encode()
        if len(raw) > 255:
            raise ConfigError(f"pool label {label!r} is longer than 255 bytes")
        self.label = raw
        self.prefix = bytes((VERSION, FLAG_LABEL if raw else 0)) + (bytes((len(raw),)) + raw if raw else b"")
        self._skip = len(self.prefix)

    def packet(self, msgs: list[bytes]) -> bytes:
        """One datagram of already encoded messages."""
        return self.prefix + array_header(len(msgs)) + b"".join(msgs)

    def body(self, msg: bytes) -> bytes:
        """One stream message (the shell sends it after a 4-byte big-endian length)."""
        return self.prefix + b"\x91" + msg

    def decode(self, data: bytes) -> list[Any]:
        """The messages of one datagram or stream frame (without its length prefix), not yet validated one
        by one. Raises `Malformed` for anything that is not a frame of our pool."""
        if not data.startswith(self.prefix):
            raise self.why_not_ours(data)
        try:
            msgs = _unpackb(memoryview(data)[self._skip:])  # msgpack's defaults: str as str, lists, str map keys
        except Exception as e:  # msgpack raises several unrelated types for garbage; all mean "malformed"
            raise Malformed("malformed", f"{type(e).__name__}") from None
        if type(msgs) is not list or not msgs:
            raise Malformed("malformed", "payload is not a list of messages")
        return msgs

    def is_request(self, body: bytes) -> bool:
        """Whether a stream frame is one `request` message (the owner answers it, not the core)."""
        skip = self._skip
        return body.startswith(self.prefix) and body[skip:skip + 3] == bytes((0x91, 0x93, REQUEST))

    def message(self, body: bytes, kind: int) -> list[Any]:
        """The one message of type `kind` in a stream frame, validated; else `Malformed`."""
        msgs = self.decode(body)
        if len(msgs) != 1 or not valid(msgs[0]) or msgs[0][0] != kind:
            raise Malformed("malformed", f"expected one message of type {kind}")
        return msgs[0]

    def why_not_ours(self, data: bytes) -> Malformed:
        """Why a frame does not start with our header, as the reason it is counted under."""
        if len(data) < 2:
            return Malformed("truncated", f"{len(data)} bytes")
        if data[0] != VERSION:
            return Malformed("version", f"protocol version {data[0]}")
        flags = data[1]
        if flags & ~KNOWN_FLAGS:
            return Malformed("flags", f"unknown flags 0x{flags:02x}")
        label = peer_label(data)
        if label is None:
            return Malformed("truncated", "label cut short")
        if flags & FLAG_ENCRYPTED:
            return Malformed("encrypted", "sealed with a gossip key, and this agent has no keyring")
        if label != self.label:
            return Malformed("foreign", f"pool {label.decode(errors='replace')!r}")
        return Malformed("malformed", "bad header")


def peer_label(data: bytes) -> bytes | None:
    """The label of a frame (b"" when it has none), or None when the header is cut short."""
    if len(data) < 2:
        return None
    if not data[1] & FLAG_LABEL:
        return b""
    if len(data) < 3 or len(data) < 3 + data[2]:
        return None
    return bytes(data[3:3 + data[2]])
