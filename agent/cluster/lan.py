"""LAN gossip, the asyncio shell around `membership.MemberList`, on `--serf-lan-port` (8301).

Every `interval` (jittered) the node bumps its heartbeat and does a push-pull with one random
alive peer over TCP: it sends ``{"dc", "members"}`` as one length-prefixed msgpack frame and
merges the list that comes back. Until it knows a peer it tries the `--retry-join` addresses, one
round every `retry_interval`. A join across datacenters is refused. Malformed frames close the
connection and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from proconsul.agent.cluster.membership import Member, MemberList, MembershipError
from proconsul.agent.cluster.rpc import pack, read_frame

log = logging.getLogger("proconsul.lan")

DIAL_TIMEOUT = 2.0
EXCHANGE_TIMEOUT = 5.0
# What one exchange with a peer can raise: unreachable, died mid-frame (IncompleteReadError is an
# EOFError), too slow, or not speaking our protocol (msgpack's errors are ValueErrors).
PEER_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, TimeoutError, MembershipError, ValueError,
                                               TypeError)
MAX_GOSSIP_FRAME = 4 << 20  # a member list of ~20,000 members; the LAN port is unauthenticated


class JoinError(Exception):
    """No address given to join answered (or all refused us); the message says why."""


def parse_join_address(text: str, default_port: int = 8301) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise JoinError(f"join address {text!r} has no host")
    try:
        p = int(port) if port else default_port
    except ValueError:
        raise JoinError(f"join address {text!r}: port {port!r} is not a number") from None
    if not 0 < p < 65536:
        raise JoinError(f"join address {text!r}: port {p} is out of range")
    return host, p


class LANGossip:
    def __init__(self, members: MemberList, datacenter: str, bind: str, port: int, *,
                 retry_join: list[str] | None = None, interval: float = 1.0, retry_interval: float = 30.0,
                 rng: random.Random | None = None, on_change: Callable[[list[str]], None] | None = None,
                 loop_time: Callable[[], float] | None = None) -> None:
        self.members = members
        self.datacenter = datacenter
        self.bind = bind
        self.port = port
        self.retry_join = list(retry_join or [])
        self.interval = interval
        self.retry_interval = retry_interval
        self.rng = rng or random.Random()
        self.on_change = on_change or (lambda names: None)
        self._now = loop_time or (lambda: asyncio.get_running_loop().time())
        self._server: asyncio.Server | None = None
        self._next_join = 0.0
        self.blocked: set[str] = set()  # member names whose gossip we drop (partition tests)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.bind, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, leave: bool) -> None:
        if leave:
            self.members.leave()
            peers = self.members.peers()
            self.rng.shuffle(peers)
            for m in peers[:3]:  # tell a few peers; gossip carries it to the rest
                with contextlib.suppress(Exception):
                    await self._push_pull(m.addr, m.port)
        if self._server is not None:
            self._server.close()

    # ---- rounds --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # a bug in one round must not take membership (and the agent) down
                log.exception("gossip round failed")
            delay = self.interval * (0.75 + self.rng.random() / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def round(self) -> None:
        self._changed(self.members.tick(self._now()))
        peers = [m for m in self.members.peers() if m.name not in self.blocked]
        if peers:
            target = self.rng.choice(peers)
            try:
                await self._push_pull(target.addr, target.port)
            except PEER_ERRORS as e:  # a peer that died mid-exchange or answered garbage: try another next round
                log.debug("gossip with %s failed: %s", target.name, e or type(e).__name__)
        elif self.retry_join and self._now() >= self._next_join:
            try:
                await self.join(self.retry_join)
            except JoinError as e:
                self._next_join = self._now() + self.retry_interval
                log.warning("retry-join: %s; retrying in %.0fs", e, self.retry_interval)

    async def join(self, addresses: list[str]) -> int:
        """Push-pull with every address; returns how many answered. Raises JoinError if none did."""
        ok, errors = 0, []
        for text in addresses:
            try:
                host, port = parse_join_address(text)
                await self._push_pull(host, port)
                ok += 1
            except (*PEER_ERRORS, JoinError) as e:
                errors.append(f"{text}: {e or type(e).__name__}")
        if not ok:
            raise JoinError("could not join any of " + "; ".join(errors))
        log.info("joined the LAN pool through %d of %d addresses", ok, len(addresses))
        return ok

    async def _push_pull(self, host: str, port: int) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT)
        try:
            writer.write(pack(self._message()))
            reply = await asyncio.wait_for(read_frame(reader, MAX_GOSSIP_FRAME), EXCHANGE_TIMEOUT)
            self._take(reply)
        finally:
            writer.close()

    # ---- inbound -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            msg = await asyncio.wait_for(read_frame(reader, MAX_GOSSIP_FRAME), EXCHANGE_TIMEOUT)
            try:
                self._take(msg)
            except MembershipError as e:
                writer.write(pack({"error": str(e)}))
                return
            writer.write(pack(self._message()))
            await writer.drain()
        except (asyncio.IncompleteReadError, OSError, TimeoutError, ValueError) as e:
            log.debug("gossip: dropped a connection: %s", e)
        except Exception as e:  # msgpack errors: never let a bad peer hurt the listener
            log.warning("gossip: bad message dropped: %s", e)
        finally:
            writer.close()

    def _message(self) -> dict[str, Any]:
        return {"dc": self.datacenter, "members": self.members.wire()}

    def _take(self, msg: Any) -> None:
        if type(msg) is not dict:
            raise MembershipError("gossip message is not a map")
        if "error" in msg:
            raise MembershipError(f"refused: {msg['error']}")
        if msg.get("dc") != self.datacenter:
            raise MembershipError(f"member of datacenter {msg.get('dc')!r} cannot join the LAN pool of "
                                  f"{self.datacenter!r}")
        raw = msg.get("members")
        if type(raw) is not list:
            raise MembershipError("gossip message has no member list")
        members = [Member.from_wire(w) for w in raw]
        members = [m for m in members if m.name not in self.blocked]
        self._changed(self.members.merge(members, self._now()))

    def _changed(self, names: list[str]) -> None:
        if names:
            for name in names:
                log.info("member %s is %s", name, self.members.status(name))
            self.on_change(names)
