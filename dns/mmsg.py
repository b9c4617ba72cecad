"""Batched datagram I/O for the UDP listener: Linux's recvmmsg/sendmmsg through ctypes.

A cached DNS answer costs the server two system calls per query (recvfrom, sendto) plus, per
wake-up, the one that finds the socket empty. On a busy or small machine those calls are most of
the CPU a query costs, so the listener receives every queued datagram in one recvmmsg and sends
the cache hits' answers in one sendmmsg. Answers are written **in place**: over the question, in
the slot it arrived in, so the message headers recvmmsg filled in (the sender's raw `sockaddr`, the
slot's buffer) are the ones sendmmsg sends with: per answer, Python writes its bytes and its length,
nothing else — no address is parsed or copied on the hot path.

All buffers are allocated once; `recv()` fills slots 0..n-1; the caller writes an answer into slot
i's bytes (`rbuf`) and its size into `out_len[i]`; `send(start, stop)` sends slots start..stop-1
back to their senders. Only the slow path (a cache miss) asks for an address as a Python tuple
(`addr(i)`). `BatchSocket.create` returns None where the calls do not exist.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys

SLOT = 4096  # bytes per datagram slot: the listener's receive size and the largest UDP answer it sends
NAME = 128  # sizeof(struct sockaddr_storage)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_MSG = ctypes.sizeof(_Mmsghdr)
_IOV = ctypes.sizeof(_Iovec)
_LEN_AT = _Mmsghdr.msg_len.offset
_IOVLEN_AT = _Iovec.iov_len.offset
_PORT = struct.Struct(">H")


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return libc


class BatchSocket:
    """recvmmsg/sendmmsg over one non-blocking UDP socket, with `slots` datagrams per call."""

    def __init__(self, libc: ctypes.CDLL, sock: socket.socket, slots: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.slots = slots
        self._recvmmsg = libc.recvmmsg
        self._sendmmsg = libc.sendmmsg
        # Raw memory, and byte/uint32/uint64 views of it for cheap per-slot field access.
        self._buf = ctypes.create_string_buffer(slots * SLOT)
        self._names = ctypes.create_string_buffer(slots * NAME)
        self._msg_raw = ctypes.create_string_buffer(slots * _MSG)
        self._iov_raw = ctypes.create_string_buffer(slots * _IOV)
        msg = (_Mmsghdr * slots).from_buffer(self._msg_raw)
        iov = (_Iovec * slots).from_buffer(self._iov_raw)
        base = ctypes.addressof(self._buf)
        name_base = ctypes.addressof(self._names)
        for i in range(slots):
            iov[i].iov_base, iov[i].iov_len = base + i * SLOT, SLOT
            msg[i].msg_hdr.msg_name = name_base + i * NAME
            msg[i].msg_hdr.msg_namelen = NAME
            msg[i].msg_hdr.msg_iov, msg[i].msg_hdr.msg_iovlen = ctypes.addressof(iov[i]), 1
        # What recv() restores before reading again: the kernel and the answers overwrote name lengths,
        # datagram lengths and buffer lengths of the slots they used (one memmove each, not a loop).
        self._msg_fresh = bytes(self._msg_raw)
        self._iov_fresh = bytes(self._iov_raw)
        self._msg_addr = ctypes.addressof(self._msg_raw)
        self._iov_addr = ctypes.addressof(self._iov_raw)
        self.rbuf = memoryview(self._buf).cast("B")
        self._names_b = memoryview(self._names).cast("B")
        self._r32 = memoryview(self._msg_raw).cast("B").cast("I")
        # out_len[i]: how many bytes of slot i send() sends (iov_len of slot i, a strided view).
        self.out_len = memoryview(self._iov_raw).cast("B").cast("Q")[_IOVLEN_AT // 8::_IOV // 8]
        self._received = 0

    @classmethod
    def create(cls, sock: socket.socket, slots: int = 64) -> BatchSocket | None:
        """A BatchSocket for `sock`, or None where recvmmsg/sendmmsg are unavailable (not Linux)."""
        libc = _libc()
        if libc is None or not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(libc, sock, slots)

    def recv(self) -> int:
        """Receive up to `slots` queued datagrams; 0 when none is waiting. Raises OSError otherwise."""
        used = self._received
        if used:
            ctypes.memmove(self._msg_addr, self._msg_fresh, used * _MSG)
            ctypes.memmove(self._iov_addr, self._iov_fresh, used * _IOV)
        n = self._recvmmsg(self.fd, self._msg_addr, self.slots, socket.MSG_DONTWAIT, None)
        if n < 0:
            self._received = 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        self._received = n
        return n

    def lengths(self, n: int) -> list[int]:
        """The sizes of the datagrams in slots 0..n-1 (slot i's bytes are rbuf[i * SLOT:][:size])."""
        return self._r32[_LEN_AT // 4::_MSG // 4][:n].tolist()

    def addr(self, i: int) -> tuple[str, int] | tuple[str, int, int, int]:
        """The sender of slot i as the socket module spells addresses (for the slow path)."""
        off = i * NAME
        raw = bytes(self._names_b[off:off + NAME])
        family = int.from_bytes(raw[:2], sys.byteorder)
        (port,) = _PORT.unpack_from(raw, 2)
        if family == socket.AF_INET6:
            (flow,) = struct.unpack_from(">I", raw, 4)
            (scope,) = struct.unpack_from("=I", raw, 24)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port

    def answer(self, i: int) -> bytes:
        """The bytes slot i holds for sending (its first out_len[i] bytes)."""
        off = i * SLOT
        return bytes(self.rbuf[off:off + self.out_len[i]])

    def send(self, start: int, stop: int) -> int:
        """Send slots start..stop-1 (the first out_len[i] bytes of each) back to their senders, in one
        sendmmsg when the socket takes them all; the number sent, counting from `start` (an answer the
        network refuses for its destination, e.g. ECONNREFUSED, counts as sent: it is dropped)."""
        sent = start
        while sent < stop:
            n = self._sendmmsg(self.fd, self._msg_addr + sent * _MSG, stop - sent, socket.MSG_DONTWAIT)
            if n <= 0:
                err = ctypes.get_errno()
                if n < 0 and err == errno.EINTR:
                    continue
                if n < 0 and err not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    sent += 1
                    continue
                break
            sent += n
        return sent - start
