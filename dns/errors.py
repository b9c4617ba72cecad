"""The DNS component's errors: one small tree, so the agent can translate them in one place."""

from __future__ import annotations


class DNSServiceError(Exception):
    """Base of every error the DNS component raises on purpose."""


class ListenError(DNSServiceError):
    """The UDP or TCP listener could not be bound (the message names the address and the fix)."""


class ViewUnavailable(DNSServiceError):
    """The catalog view cannot answer right now (a remote-backed view with no data yet): SERVFAIL."""


class BadRecursor(DNSServiceError, ValueError):
    """A `recursors` entry is not `host`, `host:port`, `[v6]` or `[v6]:port`."""


class RemoteDNSError(DNSServiceError):
    """Another datacenter could not answer a question for it; `rcode` is what the asker gets
    (NXDOMAIN for a datacenter nobody knows, SERVFAIL when none of its servers answered)."""

    def __init__(self, message: str, rcode: int) -> None:
        super().__init__(message)
        self.rcode = rcode
