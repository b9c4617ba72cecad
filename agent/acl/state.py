"""ACL objects in the replicated catalog: reads and writes through the agent's backend (Raft on servers,
RPC from clients), the one-time bootstrap, and the leader's duty of creating the built-in objects."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from proconsul.agent.acl.builtin import (
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    GLOBAL_MANAGEMENT_NAME,
    anonymous_token,
    global_management_policy,
)
from proconsul.agent.acl.errors import PermissionDenied
from proconsul.catalog import commands as c

log = logging.getLogger("proconsul.acl")

TOKENS, POLICIES, ROLES = "acl_tokens", "acl_policies", "acl_roles"
METHODS, RULES = "acl_auth_methods", "acl_binding_rules"
BOOTSTRAP_KEY = "acl-bootstrap"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


class ACLState:
    """The agent's window on ACL objects; every read is of the current replicated state."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    async def rows(self, table: str, mode: str = "leader") -> tuple[int, list[dict[str, Any]]]:
        idx, rows = await self._backend.query("table.list", {"table": table}, 0, 0.0, mode)
        return idx, rows

    async def by_id(self, table: str) -> dict[str, dict[str, Any]]:
        key = {TOKENS: "AccessorID", METHODS: "Name"}.get(table, "ID")
        return {r[key]: r for r in (await self.rows(table))[1]}

    async def get(self, table: str, key: str) -> tuple[int, dict[str, Any] | None]:
        return await self._backend.query("table.get", {"table": table, "key": key}, 0, 0.0, "leader")

    async def put(self, table: str, key: str, row: dict[str, Any], cas: int | None = None) -> bool:
        return bool(await self._backend.apply(c.TableSet(table=table, key=key, row=row, cas=cas)))

    async def delete(self, table: str, key: str) -> bool:
        return bool(await self._backend.apply(c.TableDelete(table=table, key=key)))

    async def bootstrap(self, secret: str = "", description: str = "Bootstrap Token (Global Management)"
                        ) -> dict[str, Any]:
        """Create the first management token, once: later calls are refused with the reset index."""
        now = time.time()
        marker = {"Token": "", "Time": rfc3339(now)}
        if not await self.put("meta", BOOTSTRAP_KEY, marker, cas=0):
            _, row = await self.get("meta", BOOTSTRAP_KEY)
            reset = row["ModifyIndex"] if row else 0
            raise PermissionDenied(detail=f"ACL bootstrap no longer allowed (reset index: {reset})")
        await self.ensure_builtins()
        token = management_token(secret or new_id(), description, now)
        await self.put(TOKENS, token["AccessorID"], token, cas=0)
        _, stored = await self.get(TOKENS, token["AccessorID"])
        return stored or token

    async def ensure_builtins(self) -> None:
        """The global-management policy and the anonymous token exist (the leader writes what is missing)."""
        _, policy = await self.get(POLICIES, GLOBAL_MANAGEMENT_ID)
        if policy is None:
            row = global_management_policy()
            await self.put(POLICIES, row["ID"], row, cas=0)
        _, anon = await self.get(TOKENS, ANONYMOUS_ACCESSOR)
        if anon is None:
            row = dict(anonymous_token(), CreateTime=rfc3339(time.time()))
            await self.put(TOKENS, row["AccessorID"], row, cas=0)


def management_token(secret: str, description: str, now: float) -> dict[str, Any]:
    return {"AccessorID": new_id(), "SecretID": secret, "Description": description,
            "Policies": [{"ID": GLOBAL_MANAGEMENT_ID, "Name": GLOBAL_MANAGEMENT_NAME}], "Roles": [],
            "ServiceIdentities": [], "NodeIdentities": [], "TemplatedPolicies": [], "Local": False,
            "CreateTime": rfc3339(now)}


async def leader_setup(state: ACLState, initial_management: str, is_leader: Any, wait_leadership: Any,
                       stop: asyncio.Event) -> None:
    """On the leader: write the built-in objects, and the configured initial management token (which, as in
    Consul, counts as the bootstrap)."""
    while not stop.is_set():
        if not await wait_leadership(stop):
            return
        try:
            await state.ensure_builtins()
            if initial_management:
                _, tokens = await state.rows(TOKENS)
                if not any(t["SecretID"] == initial_management for t in tokens):
                    try:
                        await state.bootstrap(initial_management, "Initial Management Token")
                    except PermissionDenied:  # bootstrapped already: add the token anyway
                        row = management_token(initial_management, "Initial Management Token", time.time())
                        await state.put(TOKENS, row["AccessorID"], row, cas=0)
                    log.info("created the initial management token from the configuration")
            return
        except Exception as e:  # leadership moved: the next leader writes what is missing
            log.warning("ACL setup interrupted (%s); retrying", e)
            await asyncio.sleep(0.5)
