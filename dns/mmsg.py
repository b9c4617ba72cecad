"""Batched datagram I/O for the UDP listener: Linux's recvmmsg/sendmmsg through ctypes.

A cached DNS answer costs the server two system calls per query (recvfrom, sendto) plus, per
wake-up, the one that finds the socket empty. On a busy or small machine those calls are most of
the CPU a query costs, so the listener receives every queued datagram in one recvmmsg and sends
the cache hits' answers in one sendmmsg. Senders' addresses stay raw `sockaddr` bytes: an answer
goes back to the slot its question came from, and nothing parses an address on the hot path.

All buffers are allocated once; `recv()` fills slots 0..n-1; `reply(i, data)` queues `data` to the
sender of slot i; `flush()` sends the queue. Only the slow path (a cache miss) asks for the address
as a Python tuple (`addr(i)`). `BatchSocket.create` returns None where the calls do not exist.
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
_NAME_AT = _Msghdr.msg_name.offset
_NAMELEN_AT = _Msghdr.msg_namelen.offset
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
        self._rbuf = ctypes.create_string_buffer(slots * SLOT)
        self._sbuf = ctypes.create_string_buffer(slots * SLOT)
        self._names = ctypes.create_string_buffer(slots * NAME)
        self._rmsg_raw = ctypes.create_string_buffer(slots * _MSG)
        self._smsg_raw = ctypes.create_string_buffer(slots * _MSG)
        self._riov_raw = ctypes.create_string_buffer(slots * _IOV)
        self._siov_raw = ctypes.create_string_buffer(slots * _IOV)
        rmsg = (_Mmsghdr * slots).from_buffer(self._rmsg_raw)
        smsg = (_Mmsghdr * slots).from_buffer(self._smsg_raw)
        riov = (_Iovec * slots).from_buffer(self._riov_raw)
        siov = (_Iovec * slots).from_buffer(self._siov_raw)
        rbase, sbase = ctypes.addressof(self._rbuf), ctypes.addressof(self._sbuf)
        self._name_base = ctypes.addressof(self._names)
        for i in range(slots):
            riov[i].iov_base, riov[i].iov_len = rbase + i * SLOT, SLOT
            siov[i].iov_base = sbase + i * SLOT
            rmsg[i].msg_hdr.msg_name = self._name_base + i * NAME
            rmsg[i].msg_hdr.msg_namelen = NAME
            rmsg[i].msg_hdr.msg_iov, rmsg[i].msg_hdr.msg_iovlen = ctypes.addressof(riov[i]), 1
            smsg[i].msg_hdr.msg_iov, smsg[i].msg_hdr.msg_iovlen = ctypes.addressof(siov[i]), 1
        self._rmsg_addr = ctypes.addressof(self._rmsg_raw)
        self._smsg_addr = ctypes.addressof(self._smsg_raw)
        self.rbuf = memoryview(self._rbuf).cast("B")
        self._sbytes = memoryview(self._sbuf).cast("B")
        self._names_b = memoryview(self._names).cast("B")
        self._r32 = memoryview(self._rmsg_raw).cast("B").cast("I")
        self._s32 = memoryview(self._smsg_raw).cast("B").cast("I")
        self._s64 = memoryview(self._smsg_raw).cast("B").cast("Q")
        self._siov64 = memoryview(self._siov_raw).cast("B").cast("Q")
        self._queued: list[int] = []  # receive slot of each queued reply, in send-slot order
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
        r32 = self._r32
        step = _MSG // 4
        at = _NAMELEN_AT // 4
        for i in range(self._received):  # the kernel overwrote the name lengths it filled in
            r32[i * step + at] = NAME
        n = self._recvmmsg(self.fd, self._rmsg_addr, self.slots, socket.MSG_DONTWAIT, None)
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

    def reply(self, i: int, data: bytes) -> bool:
        """Queue `data` to the sender of slot i; False if it does not fit a slot (send it yourself)."""
        n = len(data)
        j = len(self._queued)
        if n > SLOT or j >= self.slots:
            return False
        off = j * SLOT
        self._sbytes[off:off + n] = data
        self._siov64[(j * _IOV + _IOVLEN_AT) // 8] = n
        base = j * _MSG
        self._s64[(base + _NAME_AT) // 8] = self._name_base + i * NAME
        self._s32[(base + _NAMELEN_AT) // 4] = self._r32[(i * _MSG + _NAMELEN_AT) // 4]
        self._queued.append(i)
        return True

    def flush(self) -> list[tuple[int, bytes]]:
        """Send every queued reply; returns (slot, data) of those the socket would not take now."""
        queued, self._queued = self._queued, []
        k = len(queued)
        sent = 0
        while sent < k:
            n = self._sendmmsg(self.fd, self._smsg_addr + sent * _MSG, k - sent, socket.MSG_DONTWAIT)
            if n <= 0:
                err = ctypes.get_errno()
                if n < 0 and err == errno.EINTR:
                    continue
                if n < 0 and err not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    sent += 1  # a per-destination error (e.g. ECONNREFUSED): drop that one answer
                    continue
                break
            sent += n
        rest = []
        for j in range(sent, k):
            off = j * SLOT
            n = self._siov64[(j * _IOV + _IOVLEN_AT) // 8]
            rest.append((queued[j], bytes(self._sbytes[off:off + n])))
        return rest
