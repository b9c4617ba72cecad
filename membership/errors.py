"""The membership component's errors, in one place (the agent turns them into HTTP and CLI errors)."""

from __future__ import annotations


class MembershipError(Exception):
    """Base of every error this component raises."""


class ConfigError(MembershipError):
    """A gossip timing that cannot be honoured; the message names the key and what is wrong."""


class Malformed(MembershipError):
    """A packet or stream frame that is not ours or not well formed; `reason` is the counter it is kept under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Refused(MembershipError):
    """A peer answered a push-pull with an error (another datacenter's pool, for example)."""


class JoinError(MembershipError):
    """No address given to join answered (or every one refused us); the message says why."""


class InvariantViolation(AssertionError):
    """A rule of the protocol was broken (an incarnation went backwards, a member declared itself dead): a bug."""
