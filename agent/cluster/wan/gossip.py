"""The WAN pool's asyncio shell, on `serf_wan_port` (8302): servers of every datacenter, one list.

Every `interval` (jittered) a server exchanges its list with every other member that has not left,
concurrently: one length-prefixed msgpack frame ``{"wan": dc, "from": name, "members": [...]}``
each way over TCP. A reply is news (merged) and proof of life (its round trip is the RTT); silence
for `fail_after` makes the member failed. Until it knows another server it tries the
`retry_join_wan` addresses every `retry_interval`. Servers of our own datacenter known from the
LAN (`local_servers`) are joined automatically, as Consul's servers flood-join the WAN. Malformed
frames close the connection and change nothing.

Gossip encryption: with a `sealer` (the server's WAN keyring, `serf/remote.keyring`, agent/cluster/keyring.py)
each frame's msgpack body is put behind the membership codec's header for pool ``wan`` and sealed with
AES-GCM exactly as the LAN pool's frames are (membership/keyring.py); a frame that does not open (another
key, or plaintext while `encrypt_verify_incoming` is on) is dropped, counted in `dropped` and logged, and
the exchange fails with the reason. Keyring operations reach the WAN keyrings of this datacenter's servers
through the LAN fan-out (each server applies an operation to its LAN and WAN keyrings in lock-step).
This shell is temporary: once the WAN pool runs on `membership.pool.Pool`, it takes
`Pool(sealer=keys.wan_sealer, on_request=keys.handle)` as the LAN's does, and `Cluster.keyring_operation`
passes `wan=(pool, targets)` to `GossipKeys.operate` so every WAN member is asked (agent/cluster/keyring.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import msgpack

from proconsul.agent.cluster.rpc import LENGTH
from proconsul.agent.cluster.vivaldi import Client as VivaldiClient
from proconsul.agent.cluster.vivaldi import Coordinate, CoordinateError
from proconsul.agent.cluster.wan.pool import WANError, WANPool, WANServer
from proconsul.membership.codec import Codec
from proconsul.membership.errors import JoinError, Malformed
from proconsul.membership.pool import Sealer, parse_address

log = logging.getLogger("proconsul.wan")

DIAL_TIMEOUT = 1.0
EXCHANGE_TIMEOUT = 2.0
MAX_FRAME = 1 << 20  # thousands of servers; the WAN port is unauthenticated
SEALED_PREFIX = Codec("wan").prefix  # the header a sealed WAN frame's body carries (the AES-GCM AAD)
PEER_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, TimeoutError, WANError, ValueError, TypeError,
                                               msgpack.UnpackException)


def _plain_error(data: bytes) -> str | None:
    """The text of a plaintext `{"error": …}` frame, else None."""
    try:
        msg = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return msg["error"] if type(msg) is dict and type(msg.get("error")) is str else None


class WANJoinError(Exception):
    """No address given to join answered (or all refused us); the message says why."""


def parse_wan_address(text: str, default_port: int = 8302) -> tuple[str, int]:
    try:
        return parse_address(text, default_port)
    except JoinError as e:
        raise WANJoinError(f"WAN {e}") from None


class WANGossip:
    def __init__(self, pool: WANPool, bind: str, port: int, *, retry_join: list[str] | None = None,
                 interval: float = 1.0, retry_interval: float = 30.0, rng: random.Random | None = None,
                 on_change: Callable[[list[str]], None] | None = None,
                 local_servers: Callable[[], list[tuple[str, int]]] | None = None,
                 sealer: Sealer | None = None) -> None:
        self.pool = pool
        self.bind = bind
        self.port = port
        self.retry_join = list(retry_join or [])
        self.interval = interval
        self.retry_interval = retry_interval
        self.rng = rng or random.Random()
        self.on_change = on_change or (lambda names: None)
        self.local_servers = local_servers or (lambda: [])
        self.sealer = sealer
        self.dropped: dict[str, int] = {}  # frames that did not open, by reason (key, plaintext, …)
        self._server: asyncio.Server | None = None
        self._next_join = 0.0
        self.blocked: set[str] = set()  # member names (node.dc) whose traffic we drop (a simulated WAN cut)
        self.last_round = 0.0
        self.vivaldi = VivaldiClient()  # Serf's algorithm, the same as the LAN's coordinates
        self._vivaldi_rng = random.Random(self.rng.getrandbits(64))
        pool.set_coordinate(pool.me_name, self.vivaldi.coord)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _pack(self, obj: Any) -> bytes:
        payload = msgpack.packb(obj, use_bin_type=True)
        if self.sealer is not None:
            payload = self.sealer.seal(SEALED_PREFIX + payload)
        return LENGTH.pack(len(payload)) + payload

    async def _read(self, reader: asyncio.StreamReader) -> Any:
        (n,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        if n == 0 or n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes (max {MAX_FRAME})")
        data = await reader.readexactly(n)
        if self.sealer is not None:
            try:
                data = self.sealer.open(data)
            except Malformed as e:
                self.dropped[e.reason] = self.dropped.get(e.reason, 0) + 1
                refusal = _plain_error(data)
                if refusal:  # the peer could not open ours and said so in clear
                    raise WANError(f"refused: {refusal}") from None
                raise WANError(f"gossip encryption: {str(e).split(': ', 1)[-1]}") from None
            if not data.startswith(SEALED_PREFIX):
                raise WANError("a sealed frame of another pool")
            data = data[len(SEALED_PREFIX):]
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.bind, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, leave: bool) -> None:
        if leave:
            self.pool.leave()
            targets = [s for s in self.pool.targets() if s.name not in self.blocked]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(self._exchange(s.addr, s.port) for s in targets),
                                                      return_exceptions=True), EXCHANGE_TIMEOUT)
            log.info("left the WAN pool")
        if self._server is not None:
            self._server.close()

    # ---- rounds --------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # a bug in one round must not take the agent down
                log.exception("WAN round failed")
            delay = self.interval * (0.75 + self.rng.random() / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def round(self) -> None:
        self.last_round = self._now()
        targets = [s for s in self.pool.targets() if s.name not in self.blocked]
        known = {(s.addr, s.port) for s in self.pool.targets()} | {(self.pool.me.addr, self.pool.me.port)}
        flood = [a for a in self.local_servers() if a not in known]
        results = await asyncio.gather(*(self._probe(s) for s in targets),
                                       *(self._exchange(h, p) for h, p in flood), return_exceptions=True)
        for h_p, r in zip(flood, results[len(targets):], strict=True):
            if not isinstance(r, BaseException):
                log.info("WAN: joined local server %s:%d to the WAN pool", *h_p)
        self._changed(self.pool.tick(self._now()))
        if not self.pool.targets() and self.retry_join and self._now() >= self._next_join:
            try:
                await self.join(self.retry_join)
            except WANJoinError as e:
                self._next_join = self._now() + self.retry_interval
                log.warning("retry-join-wan: %s; retrying in %.0fs", e, self.retry_interval)

    async def _probe(self, target: WANServer) -> None:
        started = self._now()
        try:
            await self._exchange(target.addr, target.port, expect=target.name)
        except PEER_ERRORS as e:
            log.debug("WAN exchange with %s failed: %s", target.name, e or type(e).__name__)
            return
        rtt = self._now() - started
        peer_coord = next((c for s, c in self.pool.coordinates() if s.name == target.name), None)
        if peer_coord is not None:
            with contextlib.suppress(CoordinateError):  # an RTT out of range teaches nothing
                self.pool.set_coordinate(self.pool.me_name,
                                         self.vivaldi.update(target.name, peer_coord, rtt, self._vivaldi_rng))
        if self.pool.contact(target.name, self._now(), rtt):
            log.info("WAN member %s is alive again", target.name)
            self.on_change([target.name])

    async def join(self, addresses: list[str]) -> int:
        """Exchange with every address; returns how many answered. Raises WANJoinError if none did."""
        ok, errors = 0, []
        for text in addresses:
            try:
                host, port = parse_wan_address(text)
                await self._exchange(host, port)
                ok += 1
            except (*PEER_ERRORS, WANJoinError) as e:
                errors.append(f"{text}: {e or type(e).__name__}")
        if not ok:
            raise WANJoinError("could not join any of " + "; ".join(errors))
        log.info("joined the WAN pool through %d of %d addresses", ok, len(addresses))
        return ok

    async def _exchange(self, host: str, port: int, expect: str = "") -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT)
        try:
            writer.write(self._pack(self._message()))
            reply = await asyncio.wait_for(self._read(reader), EXCHANGE_TIMEOUT)
            sender = self._take(reply)
            if expect and sender != expect:
                raise WANError(f"{host}:{port} is {sender}, not {expect}")
            if not expect:  # a join or a flood: what answered is alive now
                self.pool.contact(sender, self._now(), 0.0)
        finally:
            writer.close()

    # ---- inbound -------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                msg = await asyncio.wait_for(self._read(reader), EXCHANGE_TIMEOUT)
            except WANError as e:  # did not open: counted (in _read); say why in clear (it holds no secret)
                log.warning("WAN: dropped a frame: %s", e)
                plain = msgpack.packb({"error": str(e)}, use_bin_type=True)
                writer.write(LENGTH.pack(len(plain)) + plain)
                await writer.drain()
                return
            try:
                self._take(msg)
            except WANError as e:
                writer.write(self._pack({"error": str(e)}))
                return
            writer.write(self._pack(self._message()))
            await writer.drain()
        except (asyncio.IncompleteReadError, OSError, TimeoutError, ValueError, msgpack.UnpackException) as e:
            log.debug("WAN: dropped a connection: %s", e)
        except Exception as e:  # never let a bad peer hurt the listener
            log.warning("WAN: bad message dropped: %s", e)
        finally:
            writer.close()

    def _message(self) -> dict[str, Any]:
        me = self.pool.me
        return {"wan": me.datacenter, "from": me.name, "members": self.pool.wire(),
                "coord": self.vivaldi.coord.to_json()}

    def _take(self, msg: Any) -> str:
        """Merge a peer's message; returns the sender's name."""
        if type(msg) is not dict:
            raise WANError("WAN message is not a map")
        if "error" in msg:
            raise WANError(f"refused: {msg['error']}")
        sender, raw = msg.get("from"), msg.get("members")
        if type(sender) is not str or type(raw) is not list or type(msg.get("wan")) is not str:
            raise WANError("WAN message lacks its sender or member list")
        if sender in self.blocked:
            raise WANError(f"traffic from {sender} is dropped (partition)")
        servers = [WANServer.from_wire(w) for w in raw]
        self._changed(self.pool.merge([s for s in servers if s.name not in self.blocked], self._now()))
        if sender != self.pool.me_name:
            with contextlib.suppress(CoordinateError):  # a malformed coordinate is ignored, the rest is used
                self.pool.set_coordinate(sender, Coordinate.from_json(msg.get("coord")))
        return sender

    def _changed(self, names: list[str]) -> None:
        if names:
            for name in names:
                log.info("WAN member %s is %s", name, self.pool.status(name))
            self.on_change(names)
