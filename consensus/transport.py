"""The asyncio TCP transport between Raft servers: length-prefixed msgpack frames, optional mTLS.

A frame is a 4-byte big-endian length followed by one msgpack-encoded `Message`. The first frame
of every connection is a hello, ``["PCHELLO", 1, node_id, advertised_address]``, so that a server
that is not yet in any configuration (just added) can answer the leader. Each peer gets
one outbound connection fed by a bounded queue, re-dialled with exponential backoff and jitter
(from an injected RNG). A frame that is empty, larger than `max_frame`, truncated or not a valid
message closes the connection that carried it and is counted; the node keeps running. Raft
tolerates loss, so a full queue or a broken connection simply drops messages.

`block(peer)` drops all traffic to and from a peer: the partition hook for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from .errors import DecodeError
from .messages import Message

log = logging.getLogger("proconsul.consensus.transport")

LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME = 64 << 20


def encode_frame(msg: Message) -> bytes:
    payload = msg.encode()
    return LENGTH.pack(len(payload)) + payload


HELLO_TAG = "PCHELLO"


def encode_hello(node_id: str, address: str) -> bytes:
    payload = msgpack.packb([HELLO_TAG, 1, node_id, address], use_bin_type=True)
    return LENGTH.pack(len(payload)) + payload


def decode_hello(payload: bytes) -> tuple[str, str]:
    try:
        w = msgpack.unpackb(payload, raw=False)
    except Exception as exc:
        raise DecodeError(f"invalid hello frame: {exc}") from None
    if (type(w) is not list or len(w) != 4 or w[0] != HELLO_TAG or w[1] != 1 or type(w[2]) is not str
            or type(w[3]) is not str):
        raise DecodeError(f"invalid hello frame: {w!r:.80}")
    return w[2], w[3]


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"server address {addr!r} must look like host:port")
    return host.strip("[]"), int(port)


class _Peer:
    def __init__(self, peer_id: str, queue_size: int) -> None:
        self.id = peer_id
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[None] | None = None
        self.connected = False


class Transport:
    """Carries Raft messages between servers; `on_message` is called for every valid inbound one."""

    def __init__(self, node_id: str, bind: str, on_message: Callable[[Message], None],
                 resolve: Callable[[str], str | None], *, rng: random.Random | None = None,
                 server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, queue_size: int = 4096, backoff_base: float = 0.05,
                 backoff_max: float = 2.0, dial_timeout: float = 2.0, advertise: str | None = None,
                 listen: bool = True, preamble: bytes = b"", server_hostname: str | None = None) -> None:
        self.node_id = node_id
        self.listen = listen  # False: someone else owns the port and hands us connections (serve_connection)
        self.preamble = preamble  # bytes written before the hello on every outbound connection (a mux tag)
        self.server_hostname = server_hostname  # the name to check on peers' certificates (default: their host)
        self.bind = bind
        self.advertise = advertise
        self.on_message = on_message
        self.resolve = resolve
        self.rng = rng or random.Random(0)
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.max_frame = max_frame
        self.queue_size = queue_size
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.dial_timeout = dial_timeout
        self.blocked: set[str] = set()
        self.stats = {"frames_in": 0, "frames_out": 0, "bad_frames": 0, "dropped": 0, "dials": 0}
        self._peers: dict[str, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self.learned: dict[str, str] = {}  # peer id -> advertised address, from hello frames
        self.port = 0

    @property
    def address(self) -> str:
        """The address peers should dial: `advertise` if given, else the bound host and port."""
        if self.advertise:
            return self.advertise
        host, _ = split_addr(self.bind)
        return f"{host}:{self.port}"

    async def start(self) -> None:
        host, port = split_addr(self.bind)
        if not self.listen:
            self.port = port
            return
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.server_ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = [p.task for p in self._peers.values() if p.task is not None] + list(self._inbound)
        for w in list(self._writers):
            w.close()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # ---- partitions (tests) -------------------------------------------------------------------

    def block(self, peer_id: str) -> None:
        self.blocked.add(peer_id)
        peer = self._peers.get(peer_id)
        if peer is not None:
            while not peer.queue.empty():
                peer.queue.get_nowait()

    def unblock(self, peer_id: str) -> None:
        self.blocked.discard(peer_id)

    def unblock_all(self) -> None:
        self.blocked.clear()

    # ---- outbound -----------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue a message for its peer; never blocks (drops when the peer's queue is full)."""
        if self._closed or msg.to in self.blocked:
            self.stats["dropped"] += 1
            return
        frame = encode_frame(msg)
        if len(frame) - LENGTH.size > self.max_frame:
            log.warning("dropping a %d-byte %s message to %s: larger than max_frame", len(frame), msg.type.name,
                        msg.to)
            self.stats["dropped"] += 1
            return
        peer = self._peers.get(msg.to)
        if peer is None:
            peer = self._peers[msg.to] = _Peer(msg.to, self.queue_size)
        if peer.task is None or peer.task.done():
            peer.task = asyncio.get_running_loop().create_task(self._run_peer(peer), name=f"raft-peer-{msg.to}")
        try:
            peer.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.stats["dropped"] += 1

    async def _run_peer(self, peer: _Peer) -> None:
        failures = 0
        while not self._closed:
            frame = await peer.queue.get()  # dial lazily, when there is something to say
            addr = self.resolve(peer.id) or self.learned.get(peer.id)
            writer: asyncio.StreamWriter | None = None
            try:
                if not addr:
                    raise OSError(f"no address known for server {peer.id!r}")
                host, port = split_addr(addr)
                self.stats["dials"] += 1
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=self.client_ssl,
                                            server_hostname=(self.server_hostname or host) if self.client_ssl
                                            else None),
                    self.dial_timeout)
                self._writers.add(writer)
                writer.write(self.preamble + encode_hello(self.node_id, self.address))
                peer.connected = True
                failures = 0
                while True:
                    if peer.id in self.blocked:
                        frame = b""
                    batch = [frame] if frame else []
                    while not peer.queue.empty() and len(batch) < 256:
                        batch.append(peer.queue.get_nowait())
                    if peer.id not in self.blocked and batch:
                        writer.write(b"".join(batch))
                        self.stats["frames_out"] += len(batch)
                        await writer.drain()
                    frame = await peer.queue.get()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, ssl.SSLError, ValueError, ConnectionError) as exc:
                failures += 1
                log.debug("raft peer %s unreachable (%s); retrying", peer.id, exc)
            finally:
                peer.connected = False
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            # Messages queued for a dead peer are stale by the time it is back; Raft resends.
            while not peer.queue.empty():
                peer.queue.get_nowait()
                self.stats["dropped"] += 1
            delay = min(self.backoff_max, self.backoff_base * (2 ** min(failures, 16)))
            await asyncio.sleep(delay * (0.5 + self.rng.random() / 2))

    # ---- inbound ------------------------------------------------------------------------------

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        (n,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        if n == 0 or n > self.max_frame:
            raise DecodeError(f"frame of {n} bytes (max {self.max_frame})")
        return await reader.readexactly(n)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read Raft frames from one inbound connection until it closes (for a listener that muxes
        several protocols on one port and has already consumed its tag)."""
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inbound.add(task)
        self._writers.add(writer)
        try:
            peer_id, peer_addr = decode_hello(await self._read_frame(reader))
            if peer_id and peer_addr:
                self.learned[peer_id] = peer_addr
            while True:
                msg = Message.decode(await self._read_frame(reader))
                self.stats["frames_in"] += 1
                if msg.frm in self.blocked or msg.to != self.node_id:
                    continue
                try:
                    self.on_message(msg)
                except Exception:
                    log.exception("raft: handling a %s from %s failed", msg.type.name, msg.frm)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.stats["bad_frames"] += 1
        except DecodeError as exc:
            self.stats["bad_frames"] += 1
            log.warning("raft: closing a connection that sent a bad frame: %s", exc)
        except (OSError, ssl.SSLError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            if task is not None:
                self._inbound.discard(task)
