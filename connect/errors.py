"""Connect's errors: one small tree; the agent maps them to HTTP statuses in one place (agent/api/errors.py)."""

from __future__ import annotations


class ConnectError(Exception):
    """Base of every error Connect raises for input it refuses."""


class InvalidSpiffeID(ConnectError):
    """A SPIFFE URI that is malformed or not of the expected kind."""


class InvalidCSR(ConnectError):
    """A certificate signing request that does not parse, is not signed, or asks for the wrong identity."""


class InvalidCAConfig(ConnectError):
    """A CA configuration whose key or certificate is unusable, or that does not match."""


class InvalidIntention(ConnectError):
    """An intention or service-intentions entry with a missing or wrong field."""


class CANotReady(ConnectError):
    """The CA has no configuration or active root yet (the first leader has not created it)."""


class ConcurrentChange(ConnectError):
    """A check-and-set write lost to another writer more times than it retries; the caller may retry."""


class InvalidConfigEntry(ConnectError):
    """A config entry (service-resolver, -splitter, -router, -defaults, proxy-defaults, a gateway) with a
    missing, unknown or wrong field. The message names the entry and the field."""

    def __init__(self, message: str, *, kind: str = "", name: str = "", field: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.field = field


class ChainError(InvalidConfigEntry):
    """Entries that are each valid but do not compile together into a discovery chain: a subset that does
    not exist, a router or splitter on a tcp service, inconsistent protocols, a redirect or split loop."""
