"""The ACL system's errors: the HTTP layer turns them into Consul's statuses and words (api/errors.py)."""

from __future__ import annotations


class ACLError(Exception):
    """Base of every ACL error."""


class RulesError(ACLError):
    """A policy's rules (HCL or JSON) cannot be parsed or name an unknown resource or access level."""


class ACLNotFound(ACLError):
    """A token secret that matches no token (Consul answers 403 "ACL not found")."""

    def __init__(self) -> None:
        super().__init__("ACL not found")


class ACLDisabled(ACLError):
    """An ACL endpoint was called on an agent without ACLs (Consul answers 401 "ACL support disabled")."""

    def __init__(self) -> None:
        super().__init__("ACL support disabled")


class PermissionDenied(ACLError):
    """The token lacks a right; the message is Consul's, naming the accessor, the permission and the resource."""

    def __init__(self, accessor: str = "", resource: str = "", access: str = "", segment: str | None = None,
                 detail: str = "") -> None:
        if detail:
            msg = f"Permission denied: {detail}"
        elif resource:
            on = f' on "{segment}"' if segment is not None else ""
            msg = f"Permission denied: token with AccessorID '{accessor}' lacks permission '{resource}:{access}'{on}"
        else:
            msg = "Permission denied"
        super().__init__(msg)


class InvalidACLObject(ACLError):
    """A token, policy or role in a request is malformed; the message names the field."""
