"""The CLI's HTTP client: where the agent is, one call, and errors that read as one line."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer

DEFAULT_ADDR = "127.0.0.1:8500"

# The options every command that talks to an agent shares.
HttpAddr = Annotated[str | None, typer.Option("--http-addr", help="Agent HTTP address (default: "
                                             "$PROCONSUL_HTTP_ADDR, $CONSUL_HTTP_ADDR, 127.0.0.1:8500).")]
Datacenter = Annotated[str | None, typer.Option("--datacenter", help="Datacenter to ask (default: the "
                                                                   "agent's own); its servers answer.")]
Format = Annotated[str, typer.Option("--format", help="Output: 'table' for people, 'json' for scripts.")]


class CLIError(Exception):
    """Anything the CLI reports as `Error: <message>` with exit status 1."""


def resolve_addr(flag: str | None) -> str:
    """--http-addr, else PROCONSUL_HTTP_ADDR, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500; as a base URL."""
    raw = flag or os.environ.get("PROCONSUL_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
    raw = raw.strip()
    if not raw.startswith(("http://", "https://")):
        raw = "http://" + raw
    parsed = urllib.parse.urlsplit(raw)
    if not parsed.hostname:
        raise CLIError(f"invalid agent address {raw!r}: use host:port, e.g. 127.0.0.1:8500")
    return raw.rstrip("/")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def index(self) -> int:
        return int(self.headers.get("X-Consul-Index", "0") or 0)


class Client:
    def __init__(self, addr: str | None = None, timeout: float = 30.0, datacenter: str | None = None) -> None:
        self.base = resolve_addr(addr)
        self.timeout = timeout
        self.datacenter = datacenter  # sent as ?dc= to every endpoint but the agent's own

    def _open(self, method: str, path: str, params: dict[str, Any] | None, data: bytes | None,
              timeout: float | None, ok404: bool = False) -> Any:
        """The open urllib response; errors become one-line CLIErrors (a 404 is returned when `ok404`)."""
        url = self.base + urllib.parse.quote(path, safe="/:@")
        if self.datacenter and not path.startswith("/v1/agent/"):
            params = {**(params or {}), "dc": self.datacenter}
        if params:
            query = [(k, "" if v is True else str(v)) for k, v in params.items() if v not in (None, False)]
            if query:
                url += "?" + urllib.parse.urlencode(query).replace("=&", "&").rstrip("=")
        req = urllib.request.Request(url, data=data, method=method)
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 404 and ok404:
                return e
            message = e.read().decode(errors="replace").strip().splitlines()
            raise CLIError(f"{method} {path}: {e.code} {message[0] if message else e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                text = "connection refused"
            elif isinstance(reason, socket.timeout | TimeoutError):
                text = "timed out"
            else:
                text = str(getattr(reason, "strerror", None) or reason)
            raise CLIError(f"cannot reach the agent at {self.base}: {text}") from None
        except (TimeoutError, ConnectionError) as e:
            raise CLIError(f"cannot reach the agent at {self.base}: {e}") from None

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
             raw: bytes | None = None, ok404: bool = False) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        resp = self._open(method, path, params, data, self.timeout, ok404)
        try:
            with resp:
                status = resp.status if hasattr(resp, "status") else resp.code
                return Response(status, resp.read(), dict(resp.headers))
        except (TimeoutError, ConnectionError) as e:
            raise CLIError(f"cannot reach the agent at {self.base}: {e}") from None

    def stream(self, path: str, *, params: dict[str, Any] | None = None) -> Iterator[str]:
        """Lines of a streaming answer (/v1/agent/monitor), as they arrive, until the agent closes it."""
        with self._open("GET", path, params, None, None) as resp:
            for line in resp:
                yield line.decode(errors="replace").rstrip("\n")

    def get(self, path: str, **kw: Any) -> Response:
        return self.call("GET", path, **kw)

    def put(self, path: str, **kw: Any) -> Response:
        return self.call("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.call("DELETE", path, **kw)
