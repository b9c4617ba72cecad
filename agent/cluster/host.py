"""The small interfaces that keep the cluster's dependencies pointing one way.

The agent owns the cluster; the cluster never imports the agent. What the cluster needs of its owner
is `ClusterHost`, and what the server's RPC endpoints need of the cluster is `ClusterOps`, so
`cluster.py` → `endpoints.py` → `host.py` and nothing points back.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from proconsul.agent.cluster.server import ServerRole
from proconsul.agent.config.model import AgentConfig


class ClusterHost(Protocol):
    """What the agent offers the cluster it owns."""

    config: AgentConfig
    rng: random.Random
    server: ServerRole | None  # None on a client agent
    dns_handler: Any  # the DNS front, for client agents' forwarded questions (None when DNS is off)

    async def consistent_read(self) -> None: ...

    def own_token(self) -> str:
        """The token the agent's own RPCs carry (acl.tokens.agent, else default)."""
        ...

    def user_event(self, event: dict[str, Any]) -> bool: ...

    def give_up(self, reason: str) -> None:
        """Stop the agent: something it must do cannot be done (retry_max spent); it exits with `reason`."""
        ...


class ClusterOps(Protocol):
    """What the server's RPC endpoints need of the cluster."""

    host: ClusterHost

    def server(self) -> ServerRole: ...

    def leader_address(self) -> str: ...

    def has_raft_state(self) -> bool: ...

    def raft_configuration(self) -> dict[str, Any]: ...

    def autopilot_report(self, what: str) -> dict[str, Any]: ...

    async def remove_peer(self, id: str = "", address: str = "", **_: Any) -> str: ...

    async def transfer_leader(self, id: str = "", **_: Any) -> str: ...

    async def forward_dc(self, datacenter: str, method: str, args: dict[str, Any], timeout: float | None = None,
                         idempotent: bool = False) -> Any: ...

    async def datacenters(self) -> list[str]: ...

    def federation_report(self) -> dict[str, Any]: ...

    def coordinate_datacenters(self) -> list[dict[str, Any]]: ...

    async def coordinate_update(self, args: dict[str, Any]) -> None: ...

    async def on_leader(self, method: str, args: dict[str, Any], local: Callable[[], Any], *,
                        idempotent: bool = False) -> Any: ...


# A client agent's call to any alive server: (method, args, timeout, idempotent) -> result.
ServerCall = Callable[[str, dict[str, Any], "float | None", bool], Awaitable[Any]]
