"""Server RPC: one TCP port (`--server-port`, 8300) carrying two protocols, told apart by the first byte.

    0x00  RPC   — agents and servers calling a server: forwarded writes and reads, sessions, joins,
                  operator commands. Length-prefixed msgpack frames, many calls in flight on one
                  connection: request ``[seq, method, args]``, response ``[seq, error, result]``
                  with ``error`` None or ``[kind, message]``.
    0x01  Raft  — the consensus transport (handed to `RaftNode.transport.serve_connection`).

Each call runs in its own task (a blocking query may wait minutes without holding up the others).
A frame that is empty, oversized, truncated or not a well-formed request closes its connection;
the server carries on. Errors cross the wire by kind so the caller raises the same exception type
the server did (a refused catalog command is still a 400 at the far end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from proconsul.agent.cluster.caller import TOKEN_ARG, set_caller_token
from proconsul.catalog import errors as catalog_errors

log = logging.getLogger("proconsul.rpc")

MUX_RPC = b"\x00"
MUX_RAFT = b"\x01"
LENGTH = struct.Struct(">I")
MAX_FRAME = 64 << 20  # as the Raft transport's: a snapshot restore travels as one command
DIAL_TIMEOUT = 2.0


class RPCError(Exception):
    """A call failed at the far end with an error of a kind this side has no exception type for."""


class RPCUnavailable(RPCError):
    """The server could not be reached, or the connection broke before the answer came back."""


class RPCNotSent(RPCUnavailable):
    """The server could not be reached: the call was never sent, so retrying it elsewhere is safe."""


class NoLeader(RPCError):
    """No cluster leader could be found to serve the call (Consul's "No cluster leader")."""


class UnknownMethod(RPCError):
    """The server has no such RPC method."""


class ClientCertRequired(RPCError):
    """A call on a connection without a client certificate to a server that verifies incoming connections."""


# What a server with auto_encrypt.allow_tls serves on a TLS connection that presented no certificate.
WITHOUT_CERT = frozenset({"auto_encrypt.sign"})


# Error kinds on the wire <-> exception types. Anything else arrives as RPCError(kind: message).
_KINDS: dict[str, type[Exception]] = {
    "InvalidRequest": catalog_errors.InvalidRequest,
    "NotFound": catalog_errors.NotFound,
    "Conflict": catalog_errors.Conflict,
    "UnknownCommand": catalog_errors.UnknownCommand,
    "CatalogError": catalog_errors.CatalogError,
    "NoLeader": NoLeader,
    "NotLeaderError": NoLeader,  # the server role's "No cluster leader": nothing was proposed
    "UnknownMethod": UnknownMethod,
    "ClientCertRequired": ClientCertRequired,
}
_EXTRA_KINDS: dict[str, Callable[[str], Exception]] = {}


def register_error(exc_type: type[Exception], make: Callable[[str], Exception] | None = None) -> None:
    """Let another component's exception type cross RPC as itself: built from its message by `make`, else
    by the type itself (which must then take one message argument)."""
    _EXTRA_KINDS[exc_type.__name__] = make or exc_type


def error_to_wire(exc: BaseException) -> list[str]:
    return [type(exc).__name__, str(exc)]


def error_from_wire(kind: str, message: str) -> Exception:
    exc_type = _KINDS.get(kind) or _EXTRA_KINDS.get(kind)
    if exc_type is not None:
        return exc_type(message)
    return RPCError(f"{kind}: {message}")


def pack(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return LENGTH.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> Any:
    (n,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if n == 0 or n > max_frame:
        raise ValueError(f"frame of {n} bytes (max {max_frame})")
    return msgpack.unpackb(await reader.readexactly(n), raw=False, strict_map_key=False)


Method = Callable[[dict[str, Any]], Awaitable[Any]]
# Checks a call before it runs (raising refuses it) and may return what to do to its result (ACLs).
Guard = Callable[[str, dict[str, Any]], Awaitable[Callable[[Any], Any] | None]]


class CoalescingWriter:
    """Frames written during one event-loop turn leave in one `write` (one send syscall) — under
    load many calls and answers share a connection, and a syscall per frame is most of their cost."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._buf: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._buf:
            asyncio.get_running_loop().call_soon(self._flush)
        self._buf.append(frame)

    def _flush(self) -> None:
        data, self._buf = b"".join(self._buf), []
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()


class RPCServer:
    """Dispatches RPC calls to registered methods: `methods[name](args) -> result`."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.guard: Guard | None = None
        self.stats = {"calls": 0, "errors": 0, "bad_frames": 0}
        self._tasks: set[asyncio.Task[Any]] = set()

    def register(self, name: str, method: Method) -> None:
        self.methods[name] = method

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               only: frozenset[str] | None = None) -> None:
        calls: set[asyncio.Task[Any]] = set()
        out = CoalescingWriter(writer)
        try:
            while True:
                frame = await read_frame(reader)
                if (type(frame) is not list or len(frame) != 3 or type(frame[0]) is not int
                        or type(frame[1]) is not str or type(frame[2]) is not dict):
                    raise ValueError("not an RPC request frame")
                task = asyncio.get_running_loop().create_task(self._call(out, *frame, only=only))
                calls.add(task)
                task.add_done_callback(calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except (ValueError, msgpack.UnpackException, TypeError) as e:
            self.stats["bad_frames"] += 1
            log.warning("rpc: closing a connection that sent a bad frame: %s", e)
        finally:
            for task in calls:
                task.cancel()
            writer.close()

    async def _call(self, out: CoalescingWriter, seq: int, name: str, args: dict[str, Any],
                    only: frozenset[str] | None = None) -> None:
        self.stats["calls"] += 1
        method = self.methods.get(name)
        error: list[str] | None = None
        result: Any = None
        try:
            if only is not None and name not in only:
                raise ClientCertRequired(f"{name} needs a client certificate: this server verifies incoming "
                                         "connections (verify_incoming); give the agent tls cert_file/key_file, "
                                         "or auto_encrypt { tls = true }")
            if method is None:
                raise UnknownMethod(f"unknown RPC method {name!r}")
            # Calls this one makes (a follower's forward to the leader) carry the caller's token, never ours.
            set_caller_token(str(args.get(TOKEN_ARG) or ""))
            post = await self.guard(name, args) if self.guard is not None else None
            result = await method(args)
            if post is not None:
                result = post(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats["errors"] += 1
            error = error_to_wire(exc)
            if not isinstance(exc, catalog_errors.CatalogError | RPCError):
                log.debug("rpc %s failed: %s", name, exc, exc_info=True)
        try:
            frame = pack([seq, error, result])
        except (TypeError, ValueError) as exc:
            frame = pack([seq, ["RPCError", f"result of {name} cannot be encoded: {exc}"], None])
        out.write(frame)
        await out.drain()


class RPCConnection:
    """One multiplexed client connection to a server's RPC port."""

    def __init__(self, address: str, tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        self.address = address
        self.tls = tls
        self.server_hostname = server_hostname
        self._writer: asyncio.StreamWriter | None = None
        self._out: CoalescingWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._seq = 0
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> None:
        async with self._connecting:
            if self.alive:
                return
            host, _, port = self.address.rpartition(":")
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=self.tls,
                    server_hostname=(self.server_hostname or host.strip("[]")) if self.tls else None), DIAL_TIMEOUT)
            except ssl.SSLError as e:
                raise RPCNotSent(tls_refusal(self.address, e)) from None
            except (OSError, TimeoutError, ValueError) as e:
                raise RPCNotSent(f"cannot reach server {self.address}: {e or 'timeout'}") from None
            writer.write(MUX_RPC)
            self._writer, self._out = writer, CoalescingWriter(writer)
            self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader, writer))

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: Exception = RPCUnavailable(f"connection to server {self.address} closed")
        try:
            while True:
                frame = await read_frame(reader)
                seq, err, result = frame
                fut = self._pending.pop(seq, None)
                if fut is None or fut.done():
                    continue
                if err is not None:
                    fut.set_exception(error_from_wire(err[0], err[1]))
                else:
                    fut.set_result(result)
        except ssl.SSLError as e:
            error = RPCUnavailable(tls_refusal(self.address, e))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            error = RPCUnavailable(f"server {self.address} sent a bad frame: {e}")
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()

    async def call(self, method: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        if not self.alive:
            await self._connect()
        assert self._out is not None
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            self._out.write(pack([seq, method, args]))
        except (ConnectionError, OSError) as e:
            self._pending.pop(seq, None)
            raise RPCNotSent(f"server {self.address}: {e}") from None
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RPCUnavailable(f"server {self.address} did not answer {method} within {timeout:.0f}s") from None
        finally:
            self._pending.pop(seq, None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


def tls_refusal(address: str, e: Exception) -> str:
    """A TLS failure in words that say what to do (TLS 1.3 reports a missing client certificate only on the
    first read, as an alert)."""
    text = str(e)
    if "CERTIFICATE_REQUIRED" in text.upper():
        return (f"server {address} requires a client certificate (tls verify_incoming): give this agent tls "
                "cert_file/key_file, or set auto_encrypt { tls = true } (with auto_encrypt { allow_tls = true } "
                "on the servers)")
    if "CERTIFICATE_VERIFY_FAILED" in text.upper() or "UNKNOWN_CA" in text.upper() or "BAD_CERTIFICATE" in text.upper():
        return f"server {address} and this agent do not trust each other's certificate (check tls ca_file): {e}"
    return f"TLS with server {address} failed: {e}"


class RPCPool:
    """One connection per server address, opened on first use and re-opened after it breaks."""

    def __init__(self, tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        self._conns: dict[str, RPCConnection] = {}
        self.tls = tls
        self.server_hostname = server_hostname

    async def call(self, address: str, method: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = RPCConnection(address, self.tls, self.server_hostname)
        return await conn.call(method, args, timeout)

    def drop(self, address: str) -> None:
        """Cut the connection to `address` now: calls in flight on it fail (a simulated network cut)."""
        conn = self._conns.pop(address, None)
        if conn is not None and conn._writer is not None:
            conn._writer.close()

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()


class ServerPort:
    """The listener on the server port: reads the mux byte and hands the connection on."""

    def __init__(self, bind: str, port: int, rpc: RPCServer,
                 raft: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None,
                 tls: ssl.SSLContext | None = None, cert_required: bool = False) -> None:
        self.tls = tls  # when set, every connection is TLS (the mux byte comes inside it)
        # The TLS context lets a peer without a certificate in (auto_encrypt.allow_tls): such a peer gets
        # only the calls that hand out certificates, never Raft.
        self.cert_required = cert_required
        self.bind = bind
        self.port = port
        self.rpc = rpc
        self.raft = raft
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self.bind, self.port, ssl=self.tls,
                                                  ssl_handshake_timeout=10.0 if self.tls else None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            tag = await asyncio.wait_for(reader.readexactly(1), 10.0)
            anonymous = self.cert_required and not writer.get_extra_info("peercert")
            if tag == MUX_RPC:
                await self.rpc.serve_connection(reader, writer, WITHOUT_CERT if anonymous else None)
            elif anonymous:
                log.warning("server port: refusing Raft from %s: it presented no client certificate",
                            writer.get_extra_info("peername"))
            elif tag == MUX_RAFT and self.raft is not None:
                await self.raft(reader, writer)
            else:
                log.debug("server port: closing a connection with unknown protocol byte %r", tag)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
