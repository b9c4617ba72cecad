"""TCP and UDP checks, as Consul runs them.

TCP: passing when a connection (optionally TLS) opens within the timeout.
UDP: a datagram is sent; any reply is passing, an ICMP "port unreachable" (connection refused) is
critical, and silence until the timeout is passing too — UDP has no handshake, so no error is the
best evidence the port is open (Consul's rule).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any

from proconsul.agent.checks.agent_tls import check_context
from proconsul.agent.checks.runner import IntervalRunner, ResultSink, RunnerHost
from proconsul.agent.config.duration import format_duration
from proconsul.catalog.store import CRITICAL, PASSING


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


class TCPRunner(IntervalRunner):
    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.target = defn["TCP"]
        self.host, self.port = _split(self.target)
        self.tls: ssl.SSLContext | None = None
        if defn.get("TCPUseTLS"):
            self.tls = check_context(manager.context, bool(defn.get("TLSSkipVerify")))

    async def probe(self) -> tuple[str, str]:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.tls,
                                        server_hostname=(self.defn.get("TLSServerName") or self.host)
                                        if self.tls else None),
                self.timeout)
        except TimeoutError:
            return CRITICAL, f"dial tcp {self.target}: i/o timeout after {format_duration(self.timeout)}"
        except (OSError, ssl.SSLError) as e:
            return CRITICAL, f"dial tcp {self.target}: {e.strerror or e}"
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
        return PASSING, f"{'TCP+TLS' if self.tls else 'TCP'} connect {self.target}: Success"


class _UDPProbe(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[str]) -> None:
        self.done = done

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done():
            self.done.set_result("reply")

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class UDPRunner(IntervalRunner):
    PAYLOAD = b"proconsul health check"

    def __init__(self, check_id: str, defn: dict[str, Any], sink: ResultSink, rng: random.Random,
                 manager: RunnerHost) -> None:
        super().__init__(check_id, defn, sink, rng)
        self.target = defn["UDP"]
        self.host, self.port = _split(self.target)

    async def probe(self) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _UDPProbe(done),
                                                               remote_addr=(self.host, self.port))
        except OSError as e:
            return CRITICAL, f"dial udp {self.target}: {e.strerror or e}"
        try:
            transport.sendto(self.PAYLOAD)
            await asyncio.wait_for(done, self.timeout)
            return PASSING, f"UDP connect {self.target}: Success (got a reply)"
        except TimeoutError:
            return PASSING, f"UDP connect {self.target}: Success (no reply and no error within the timeout)"
        except OSError as e:
            return CRITICAL, f"read udp {self.target}: {e.strerror or e}"
        finally:
            transport.close()


