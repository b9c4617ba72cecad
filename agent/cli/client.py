"""The CLI's HTTP client: where the agent is, one call, and errors that read as one line."""

from __future__ import annotations

import json
import os
import socket
import ssl
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
# Consul's flags that every command takes (`-token`, `-ca-file`, …): main() turns them into the environment
# variables above before a command runs, so each command need not declare them.
GLOBAL_FLAGS = {"--token": "PROCONSUL_HTTP_TOKEN", "--token-file": "PROCONSUL_HTTP_TOKEN_FILE",
                "--ca-file": "PROCONSUL_CACERT", "--client-cert": "PROCONSUL_CLIENT_CERT",
                "--client-key": "PROCONSUL_CLIENT_KEY", "--tls-server-name": "PROCONSUL_TLS_SERVER_NAME"}
Format = Annotated[str, typer.Option("--format", help="Output: 'table' for people, 'json' for scripts.")]


class CLIError(Exception):
    """Anything the CLI reports as `Error: <message>` with exit status 1."""


def _env(name: str) -> str:
    """PROCONSUL_<name>, else CONSUL_<name> (Consul's variables work unchanged)."""
    return os.environ.get(f"PROCONSUL_{name}") or os.environ.get(f"CONSUL_{name}") or ""


def resolve_addr(flag: str | None) -> str:
    """--http-addr, else PROCONSUL_HTTP_ADDR, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500; as a base URL
    (https:// when CONSUL_HTTP_SSL=true and no scheme is given)."""
    raw = flag or _env("HTTP_ADDR") or DEFAULT_ADDR
    raw = raw.strip()
    if not raw.startswith(("http://", "https://")):
        raw = ("https://" if _env("HTTP_SSL").lower() in ("1", "true") else "http://") + raw
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


def resolve_token() -> str:
    """The ACL token: -token / PROCONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN, else the file named by
    -token-file / PROCONSUL_HTTP_TOKEN_FILE / CONSUL_HTTP_TOKEN_FILE; "" for none."""
    token = _env("HTTP_TOKEN")
    if token:
        return token.strip()
    path = _env("HTTP_TOKEN_FILE")
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise CLIError(f"cannot read the token file {path}: {e.strerror}") from None


def tls_context() -> ssl.SSLContext | None:
    """HTTPS settings from -ca-file/-client-cert/-client-key/-tls-server-name (CONSUL_CACERT,
    CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME; CONSUL_HTTP_SSL_VERIFY=false)."""
    ca, cert, key = _env("CACERT"), _env("CLIENT_CERT"), _env("CLIENT_KEY")
    verify = _env("HTTP_SSL_VERIFY").lower() not in ("0", "false")
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
        if cert:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise CLIError(f"cannot load TLS files (CA {ca or '-'}, cert {cert or '-'}): {e}") from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    def __init__(self, addr: str | None = None, timeout: float = 30.0, token: str | None = None,
                 datacenter: str | None = None) -> None:
        self.base = resolve_addr(addr)
        self.timeout = timeout
        self.datacenter = datacenter  # sent as ?dc= to every endpoint but the agent's own
        self.token = resolve_token() if token is None else token
        self._tls = tls_context() if self.base.startswith("https://") else None
        self._server_name = _env("TLS_SERVER_NAME")

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
        headers = {"X-Consul-Token": self.token} if self.token else {}
        if self._server_name:
            headers["Host"] = self._server_name
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=timeout, context=self._tls)
        except urllib.error.HTTPError as e:
            if e.code == 404 and ok404:
                return e
            message = e.read().decode(errors="replace").strip().splitlines()
            raise CLIError(f"{method} {path}: {e.code} {message[0] if message else e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ssl.SSLError):
                raise CLIError(f"TLS with the agent at {self.base} failed: {reason}") from None
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


def split_global_flags(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take Consul's global flags out of a command line (up to `--`); returns the rest and the environment
    they stand for. Commands with their own --token (connect proxy) keep theirs."""
    out: list[str] = []
    env: dict[str, str] = {}
    own_token = args[:2] == ["connect", "proxy"] or args[:1] in (["agent"], ["k8s-sync"])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:], env
        name, eq, value = arg.partition("=")
        if name in GLOBAL_FLAGS and not (own_token and name == "--token") and args[:1] != ["agent"]:
            if not eq:
                if i + 1 >= len(args):
                    raise CLIError(f"{name} needs a value")
                value, i = args[i + 1], i + 1
            env[GLOBAL_FLAGS[name]] = value  # PROCONSUL_…, read first by this CLI
            env["CONSUL_" + GLOBAL_FLAGS[name].removeprefix("PROCONSUL_")] = value  # and by child processes
        else:
            out.append(arg)
        i += 1
    return out, env
