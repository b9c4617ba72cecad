"""The catalog's errors: one small tree, translated to HTTP statuses in one place by the agent."""

from __future__ import annotations


class CatalogError(Exception):
    """Base of every error the state store raises for a command it refuses."""


class InvalidRequest(CatalogError):
    """The command is malformed: a missing or wrong field (HTTP 400)."""


class NotFound(CatalogError):
    """The command names a node, service, check or session that does not exist (HTTP 404 or 400)."""


class Conflict(CatalogError):
    """The command cannot be applied to the current state (e.g. a lock held by another session)."""


class UnknownCommand(CatalogError):
    """The encoded command carries a type tag this version does not know."""
