"""The errors of k8s-sync: each is one readable line for the operator (the CLI prints it and exits 1)."""

from __future__ import annotations


class SyncError(Exception):
    """Base of every k8s-sync error."""


class ConfigError(SyncError):
    """A flag or setting that cannot be honoured (names the flag and what is wrong)."""


class OwnershipError(SyncError):
    """Another live syncer owns this syncer's Consul node: starting would fight over its services."""


class ConsulError(SyncError):
    """The agent's HTTP API refused a request or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeError(SyncError):
    """The Kubernetes API could not be reached or refused a request."""
