"""Access logs as `proxy-defaults` AccessLogs asks for them: one line per request (HTTP mode) or per
connection (L4), JSON with Envoy's field names by default, or the user's JSONFormat / TextFormat written
with Envoy's command operators (`%START_TIME%`, `%REQ(:METHOD)%`, `%RESPONSE_CODE%`, …).

Lines go to stdout, stderr or a file (`Type`, `Path`), gathered and written at most every
FLUSH_EVERY seconds or BUFFER_MAX bytes (PENDING_MAX HTTP requests), so a busy proxy does one write per
batch; a proxy that crashes loses at most the last FLUSH_EVERY seconds of lines. An HTTP request's line
in the default format is not even formatted in the request's path: what the path has at hand is kept
(`later`: times, the request's head, outcome, and what its connection's fixed part is made from) and the
batch's lines made in one loop when it is written, the fields its connection decides looked up there and
formatted once per connection, route and instance. A path that cannot be written is logged once and logging stops; traffic
is never affected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger("proconsul.proxy")
FLUSH_EVERY = 0.25
BUFFER_MAX = 64 * 1024
PENDING_MAX = 256  # HTTP requests whose lines are made at the next flush (`AccessLog.later`)
DEFAULT_FIELDS = ("start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
                  "response_code_details", "bytes_received", "bytes_sent", "duration", "user_agent", "request_id",
                  "authority", "x_forwarded_for", "upstream_host", "upstream_cluster", "upstream_service",
                  "upstream_instance", "split", "downstream_remote_address", "downstream_peer_uri_san",
                  "downstream_transport_failure_reason", "intention", "grpc_status")
_KEYS = {k: f'"{k}":' for k in DEFAULT_FIELDS}
_AFTER_START = DEFAULT_FIELDS[1:]  # start_time is first and always set (a float, written as ISO 8601)
_HEADER_FIELDS = {b"user-agent": "user_agent", b"x-request-id": "request_id", b"host": "authority",
                  b"x-forwarded-for": "x_forwarded_for"}
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
_FROM_HEADERS = {"user_agent": b"user-agent", "request_id": b"x-request-id", "authority": b"host",
                 "x_forwarded_for": b"x-forwarded-for"}
DETAILS = {"UH": "no_healthy_upstream", "UO": "overflow", "UT": "upstream_response_timeout",
           "UF": "upstream_reset_before_response_started{connection_failure}", "NR": "route_not_found",
           "RL": "local_rate_limited"}
_OPERATOR = re.compile(r"%([A-Z_]+(?:\([^)]*\))?(?::\d+)?)%")
_SIMPLE = {
    "START_TIME": "start_time", "PROTOCOL": "protocol", "RESPONSE_CODE": "response_code",
    "RESPONSE_FLAGS": "response_flags", "RESPONSE_CODE_DETAILS": "response_code_details",
    "BYTES_RECEIVED": "bytes_received", "BYTES_SENT": "bytes_sent", "DURATION": "duration",
    "UPSTREAM_HOST": "upstream_host", "UPSTREAM_CLUSTER": "upstream_cluster", "ROUTE_NAME": "route_name",
    "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address", "DOWNSTREAM_PEER_URI_SAN": "downstream_peer_uri_san",
    "GRPC_STATUS_NUMBER": "grpc_status", "DOWNSTREAM_TRANSPORT_FAILURE_REASON": "downstream_transport_failure_reason",
}
HANDSHAKE_FAILED = "downstream_tls_handshake_failed"  # response_code_details of a failed downstream handshake
_REQ = {":method": "method", ":path": "path", "x-envoy-original-path?:path": "path", ":authority": "authority",
        "user-agent": "user_agent", "x-request-id": "request_id", "x-forwarded-for": "x_forwarded_for"}


def handshake_failure_reason(exc: BaseException) -> str:
    """A failed downstream TLS handshake's reason, as a short bounded label (a metric label too): OpenSSL's
    reason code (`CERTIFICATE_VERIFY_FAILED`, `PEER_DID_NOT_RETURN_A_CERTIFICATE`, `WRONG_VERSION_NUMBER`, …),
    `handshake_timeout`, or `connection_closed`."""
    if isinstance(exc, TimeoutError):
        return "handshake_timeout"
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    return "connection_closed" if isinstance(exc, ConnectionError) else type(exc).__name__


def handshake_failure_record(started: float, peer: str, reason: str, cluster: str, service: str,
                             flag: str = "-") -> dict[str, Any]:
    """The listener-level line of a connection whose TLS handshake failed (`started`: time.monotonic() at
    accept). Envoy has no response flag for a failed handshake (it writes DOWNSTREAM_TRANSPORT_FAILURE_REASON);
    `NR` when the server name matched nothing (Envoy's no filter chain match)."""
    now = time.monotonic()
    return {"start_time": time.time() - (now - started), "protocol": "TCP", "response_flags": flag,
            "response_code_details": HANDSHAKE_FAILED, "downstream_transport_failure_reason": reason,
            "duration": int((now - started) * 1000), "upstream_cluster": cluster, "upstream_service": service,
            "downstream_remote_address": peer}


def wants_listener_lines(log: AccessLog | None) -> bool:
    """Whether listener-level lines (refused before reaching a service) are written (not DisableListenerLogs)."""
    return log is not None and not log.settings.get("DisableListenerLogs")


class _Clock:
    """ISO 8601 UTC with milliseconds, Envoy's START_TIME; the seconds part is formatted once per second
    (datetime formatting costs ~10 µs a call, more than the rest of a log line)."""

    __slots__ = ("second", "prefix", "ms", "last")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""
        self.ms = -1
        self.last = ""

    def iso(self, t: float) -> str:
        sec = int(t)
        ms = int((t - sec) * 1000)
        if ms == self.ms and sec == self.second:  # a busy proxy logs many requests a millisecond
            return self.last
        if sec != self.second:
            self.second = sec
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        self.ms = ms
        self.last = f"{self.prefix}.{ms:03d}Z"
        return self.last


_iso = _Clock().iso
# The fields a connection decides (the route and split it took, where it went, who called): formatted once
_FIXED_TAIL = DEFAULT_FIELDS[DEFAULT_FIELDS.index("upstream_host"):]
_HEAD_FIELDS: dict[tuple[bytes, bytes, bytes], str] = {}  # (method, path, version): their fields' text
_OUTCOME: dict[tuple[str, int], str] = {}  # (flag, status): response_code, _flags, _code_details
_FROM_HEADER_TEXT: dict[tuple[tuple[str, bytes], ...], str] = {}


def _fields(rec: dict[str, Any], names: Any) -> str:
    """The default line's text of the fields `names` (in that order) that `rec` has: `,"name":value` each,
    left out as in `AccessLog.format` when None or an empty string."""
    out = []
    for k in names:
        v = rec.get(k)
        if v is None or v == "":
            continue
        out.append(_KEYS[k] + (_quote(v) if v.__class__ is str else str(v)))
    return "," + ",".join(out) if out else ""


def fixed_fields(rec: dict[str, Any]) -> tuple[str, str]:
    """A connection's fields (`route_name`, and `upstream_host` … `grpc_status`) as `later` writes
    them: made once per connection, route and instance, not per request."""
    return _fields(rec, ("route_name",)), _fields(rec, _FIXED_TAIL)


def _value(op: str, rec: dict[str, Any]) -> Any:
    """One Envoy command operator's value for a record (None when unknown or unset)."""
    if op in _SIMPLE:
        v = rec.get(_SIMPLE[op])
        return _iso(v) if op == "START_TIME" and isinstance(v, float) else v
    m = re.fullmatch(r"REQ\(([^)]*)\)(?::\d+)?", op)
    if m:
        name = m.group(1).lower()
        if name in _REQ and _REQ[name] in rec:
            return rec[_REQ[name]]
        want = name.split("?")[0].encode("latin-1")
        if want == b":authority":
            want = b"host"
        return next((v.decode("latin-1") for k, v in rec.get("headers") or () if k == want), None)
    return None


class AccessLog:
    """One destination and one format; `request`/`connection` take records, `close` flushes."""

    def __init__(self, settings: dict[str, Any], open_file: Callable[[str], TextIO] | None = None) -> None:
        self.settings = settings
        self.kind = (settings.get("Type") or "stdout").lower()
        self.path = settings.get("Path") or ""
        self.text_format = settings.get("TextFormat") or ""
        self.json_format: dict[str, Any] | None = json.loads(settings["JSONFormat"]) if settings.get(
            "JSONFormat") else None
        self.default_format = not self.text_format and self.json_format is None  # what `later` writes
        self._open = open_file or (lambda p: open(p, "a", encoding="utf-8"))  # noqa: SIM115 - kept open, closed in close()
        self._out: TextIO | None = None
        self._buf: list[str] = []
        self._pending: list[tuple[Any, ...]] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.broken = False
        self._lines = 0

    @staticmethod
    def from_entry(access_logs: dict[str, Any] | None) -> AccessLog | None:
        """The log `proxy-defaults` AccessLogs asks for, or None when not Enabled."""
        if not access_logs or not access_logs.get("Enabled"):
            return None
        return AccessLog(access_logs)

    def open(self) -> bool:
        """Open the destination now, so a path that cannot be written is said when the setting arrives."""
        return self._stream() is not None

    def _stream(self) -> TextIO | None:
        if self._out is None and not self.broken:
            if self.kind == "stderr":
                self._out = sys.stderr
            elif self.kind == "file":
                try:
                    self._out = self._open(self.path)
                except OSError as e:
                    self.broken = True
                    log.error("access log: cannot open %s (%s): access logging is off until the setting "
                              "changes; traffic is not affected", self.path, e.strerror or e)
                    return None
            else:
                self._out = sys.stdout
        return self._out

    # ------------------------------------------------------------------ formatting
    def format(self, rec: dict[str, Any]) -> str:
        if self.text_format:
            text = _OPERATOR.sub(lambda m: _text(_value(m.group(1), rec)), self.text_format)
            return text if text.endswith("\n") else text + "\n"
        if self.json_format is not None:
            out = {}
            for key, template in self.json_format.items():
                whole = _OPERATOR.fullmatch(template) if isinstance(template, str) else None
                if whole:
                    out[key] = _value(whole.group(1), rec)  # one operator: the value keeps its type
                elif isinstance(template, str):
                    out[key] = _OPERATOR.sub(lambda m: _text(_value(m.group(1), rec)), template)
                else:
                    out[key] = template
            return json.dumps(out, separators=(",", ":")) + "\n"
        # The default line, written by hand: json.dumps of a dict costs 5× more (measured), and a log line is
        # made per request. Strings go through the json module's C string encoder.
        get = rec.get
        found: dict[str, str] = {}
        header_field = _HEADER_FIELDS.get
        for n, h in get("headers") or ():
            k = header_field(n)
            if k is not None and k not in found:
                found[k] = h.decode("latin-1")
        parts = ['{"start_time":"' + _iso(rec["start_time"]) + '"']
        add, keys, quote, str_ = parts.append, _KEYS, _quote, str
        for k in _AFTER_START:
            v = get(k)
            if v is None:
                v = found.get(k)
                if v is None:
                    continue
            if v.__class__ is str_:
                if v:
                    add(keys[k] + quote(v))
            else:
                add(keys[k] + str_(v))
        return ",".join(parts) + "}\n"

    @property
    def lines(self) -> int:
        """Lines written or kept to be written (the admin's AccessLogLines)."""
        return self._lines + len(self._pending)

    def later(self, entry: tuple[Any, ...]) -> None:
        """An HTTP request's line in the default format (`default_format`), kept as what its request's path has
        at hand and written as `request` writes its record (the same text) when the batch is flushed: `entry` is
        `(wall-clock time at its end, its duration in s, its request head (method, target, version, headers:
        not changed after the request ends), status, response flag, bytes received, bytes sent, its connection's
        fixed part (`source.fixed_of(decision, instance, scope).log`: the fields the connection, its route and
        instance decide, formatted once, `fixed_fields`), decision, instance, scope)`. Nothing of it is looked
        up or formatted in the request's path: measured, a µs of Python there costs the whole proxy 2–3 µs,
        in this batch's loop about its loop figure."""
        if self.broken:
            return
        pending = self._pending
        pending.append(entry)
        if len(pending) >= PENDING_MAX:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _format_pending(self) -> None:
        """The kept entries' lines, in one loop (to the buffer, in order)."""
        pending, self._pending = self._pending, []
        header_field, iso = _HEADER_FIELDS.get, _iso
        heads, outcomes, texts = _HEAD_FIELDS, _OUTCOME, _FROM_HEADER_TEXT
        add = self._buf.append
        size = 0
        last_sec = last_ms = -1
        stamp = ""
        self._lines += len(pending)
        # A connection's fixed part, once per batch: the batch holds the objects, so their ids are theirs
        fixed_parts: dict[tuple[int, int, int, int], tuple[str, str]] = {}
        for end, took, head, status, flag, bytes_in, bytes_out, source, decision, inst, scope in pending:
            start = end - took
            method, path, version, headers = head.method, head.target, head.version, head.headers
            key = (id(source), id(decision), id(inst), id(scope))
            fixed = fixed_parts.get(key)
            if fixed is None:
                fixed = fixed_parts[key] = source.fixed_of(decision, inst, scope).log
            sec = int(start)
            ms = int((start - sec) * 1000)
            if ms != last_ms or sec != last_sec:  # a batch holds many requests a millisecond
                stamp, last_sec, last_ms = iso(start), sec, ms
            found: dict[str, bytes] = {}
            for n, h in headers:
                k = header_field(n)
                if k is not None and k not in found:
                    found[k] = h
            from_headers = ""
            if found:  # a client sends the same few headers again and again: their text is made once
                key = tuple(found.items())
                from_headers = texts.get(key)
                if from_headers is None:
                    if len(texts) >= 1024:
                        texts.clear()
                    from_headers = texts[key] = _fields({k: v.decode("latin-1") for k, v in key}, _FROM_HEADERS)
            head = heads.get((method, path, version))  # a service's requests repeat a few methods and paths
            if head is None:
                if len(heads) >= 1024:
                    heads.clear()
                head = heads[(method, path, version)] = _fields(
                    {"method": method.decode("latin-1"), "path": path.decode("latin-1"),
                     "protocol": "HTTP/" + version.decode()}, ("method", "path", "protocol"))
            outcome = outcomes.get((flag, status))
            if outcome is None:
                details = DETAILS.get(flag, "via_upstream" if status else "")
                outcome = outcomes[(flag, status)] = f',"response_code":{status:d}' + _fields(
                    {"response_flags": flag, "response_code_details": details},
                    ("response_flags", "response_code_details"))
            line = (f'{{"start_time":"{stamp}"{fixed[0]}{head}{outcome},"bytes_received":{bytes_in:d},'
                    f'"bytes_sent":{bytes_out:d},"duration":{int(took * 1000):d}{from_headers}{fixed[1]}}}\n')
            size += len(line)
            add(line)
        self._size += size

    # ------------------------------------------------------------------ writing
    def request(self, rec: dict[str, Any]) -> None:
        if self._pending:  # lines stay in the order of their requests
            self._format_pending()
        self._add(self.format(rec))

    connection = request

    def _add(self, line: str) -> None:
        if self.broken:
            return
        self._buf.append(line)
        self._size += len(line)
        self._lines += 1
        if self._size >= BUFFER_MAX:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _arm(self) -> None:
        try:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
        except RuntimeError:  # no loop (a test, a shutdown): write now
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._format_pending()
        if not self._buf:
            return
        data, self._buf, self._size = "".join(self._buf), [], 0
        out = self._stream()
        if out is None:
            return
        try:
            out.write(data)
            out.flush()
        except OSError as e:
            self.broken = True
            log.error("access log: cannot write to %s (%s): access logging is off until the setting changes; "
                      "traffic is not affected", self.path or self.kind, e.strerror or e)

    def close(self) -> None:
        self.flush()
        if self.kind == "file" and self._out is not None:
            try:
                self._out.close()
            except OSError:
                pass
        self._out = None


def _text(v: Any) -> str:
    return "-" if v in (None, "") else str(v)


def follow(current: AccessLog | None, settings: dict[str, Any] | None) -> AccessLog | None:
    """The log for proxy-defaults' AccessLogs `settings` as they now are: `current` when they did not change,
    else a new one (the old destination flushed and closed, the new one opened so a bad path is said now)."""
    before = current.settings if current is not None else None
    if (settings or None) == before or (not (settings or {}).get("Enabled") and current is None):
        return current
    if current is not None:
        current.close()
    new = AccessLog.from_entry(settings)
    if new is not None:
        new.open()
    log.info("access logs: %s", "off" if new is None else f"{new.kind}{' ' + new.path if new.path else ''}")
    return new
