"""gRPC health checks (grpc.health.v1.Health/Check) and H2 PING checks, over the `h2` state machine.

gRPC: `GRPC` is `host:port` or `host:port/service`; passing when the server answers SERVING.
H2 PING: passing when the server acknowledges an HTTP/2 PING (TLS unless H2PingUseTLS is false).
Both speak HTTP/2 directly — h2 does the framing and HPACK; this module only carries bytes.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events

from proconsul.agent.checks.agent_tls import check_context
from proconsul.agent.checks.runner import IntervalRunner, ResultSink, RunnerHost
from proconsul.catalog.store import CRITICAL, PASSING

SERVING = 1
GRPC_STATUS = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 12: "UNIMPLEMENTED",
               13: "INTERNAL", 14: "UNAVAILABLE"}


class H2Error(Exception):
    """The peer did not speak HTTP/2 as expected."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def health_request(service: str) -> bytes:
    """A length-prefixed gRPC message holding HealthCheckRequest{service}."""
    raw = service.encode()
    proto = (b"\x0a" + _varint(len(raw)) + raw) if raw else b""
    return b"\x00" + len(proto).to_bytes(4, "big") + proto


def health_status(payload: bytes) -> int:
    """The ServingStatus in a length-prefixed HealthCheckResponse (0 = UNKNOWN when absent)."""
    if len(payload) < 5:
        raise H2Error("short gRPC message")
    msg = payload[5:5 + int.from_bytes(payload[1:5], "big")]
    i = 0
    while i < len(msg):
        tag = msg[i]
        i += 1
        value, shift = 0, 0
        while i < len(msg):
            b = msg[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if tag == 0x08:
            return value
    return 0


def _tls(defn: dict[str, Any], manager: RunnerHost) -> ssl.SSLContext:
    return check_context(manager.context, bool(defn.get("TLSSkipVerify")), alpn=["h2"])


class _H2:
    """A minimal HTTP/2 client connection over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def events(self) -> list[h2.events.Event]:
        data = await self.reader.read(65536)
        if not data:
            raise H2Error("connection closed by the server")
        events = self.conn.receive_data(data)
        await self.flush()
        return events

    def close(self) -> None:
        self.writer.close()


async def _connect(host: str, port: int, tls: ssl.SSLContext | None, server_name: str | None) -> _H2:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                   server_hostname=(server_name or host) if tls else None)
    h = _H2(reader, writer)
    await h.flush()
    return h


def _split(target: str) -> tuple[str, int, str]:
    hostport, _, service = target.partition("/")
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port), service


class GRPCRunner(IntervalRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.target = defn["GRPC"]
        self.host, self.port, self.service = _split(self.target)
        self.tls = _tls(defn, manager) if defn.get("GRPCUseTLS") else None

    async def probe(self) -> tuple[str, str]:
        try:
            return await asyncio.wait_for(self._check(), self.timeout)
        except TimeoutError:
            return CRITICAL, f"gRPC {self.target}: timed out after {self.timeout:g}s"
        except (OSError, ssl.SSLError, H2Error, h2.exceptions.ProtocolError) as e:
            return CRITICAL, f"gRPC {self.target}: {type(e).__name__}: {e}"

    async def _check(self) -> tuple[str, str]:
        h = await _connect(self.host, self.port, self.tls, self.defn.get("TLSServerName"))
        try:
            sid = h.conn.get_next_available_stream_id()
            h.conn.send_headers(sid, [(":method", "POST"), (":scheme", "https" if self.tls else "http"),
                                      (":authority", f"{self.host}:{self.port}"),
                                      (":path", "/grpc.health.v1.Health/Check"),
                                      ("content-type", "application/grpc"), ("te", "trailers")])
            h.conn.send_data(sid, health_request(self.service), end_stream=True)
            await h.flush()
            body = b""
            grpc_status: int | None = None
            message = ""
            while True:
                for ev in await h.events():
                    if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                        body += ev.data
                        h.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        hdrs = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                                for k, v in ev.headers}
                        if "grpc-status" in hdrs:
                            grpc_status = int(hdrs["grpc-status"])
                            message = hdrs.get("grpc-message", "")
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        raise H2Error(f"stream reset (error code {ev.error_code})")
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        return self._verdict(grpc_status, message, body)
        finally:
            h.close()

    def _verdict(self, grpc_status: int | None, message: str, body: bytes) -> tuple[str, str]:
        name = f"gRPC check {self.target}"
        if grpc_status not in (0, None):
            return CRITICAL, f"{name}: rpc error: code = {GRPC_STATUS.get(grpc_status, grpc_status)} desc = {message}"
        status = health_status(body)
        if status == SERVING:
            return PASSING, f"{name}: success"
        return CRITICAL, f"{name}: gRPC {self.service or 'server'} serving status: {status}"


class H2PingRunner(IntervalRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.target = defn["H2PING"]
        host, _, port = self.target.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        use_tls = defn.get("H2PingUseTLS")
        self.tls = _tls(defn, manager) if use_tls is None or use_tls else None

    async def probe(self) -> tuple[str, str]:
        try:
            return await asyncio.wait_for(self._ping(), self.timeout)
        except TimeoutError:
            return CRITICAL, f"HTTP2 ping {self.target}: timed out after {self.timeout:g}s"
        except (OSError, ssl.SSLError, H2Error, h2.exceptions.ProtocolError) as e:
            return CRITICAL, f"HTTP2 ping {self.target}: {type(e).__name__}: {e}"

    async def _ping(self) -> tuple[str, str]:
        h = await _connect(self.host, self.port, self.tls, self.defn.get("TLSServerName"))
        try:
            payload = self._rng.randbytes(8)
            h.conn.ping(payload)
            await h.flush()
            while True:
                for ev in await h.events():
                    if isinstance(ev, h2.events.PingAckReceived) and ev.ping_data == payload:
                        return PASSING, f"HTTP2 ping was successful on {self.target}"
        finally:
            h.close()


