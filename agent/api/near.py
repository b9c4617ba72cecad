"""`?near=` on reads: rows sorted by the estimated round-trip time from a node, as Consul's reads do.

The coordinates come from the replicated `coordinates` table (/v1/coordinate/*); the distance is Vivaldi's
(agent/cluster/vivaldi.py). Rows whose node has no coordinate keep their order after the others.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul.agent.api.keys import AGENT
from proconsul.agent.cluster.vivaldi import Coordinate, CoordinateError, sort_by_distance


async def coordinates(agent: Any) -> dict[str, Coordinate]:
    """lower(node) -> coordinate, for every node that has one."""
    _, rows = await agent.backend.query("coordinate.nodes", {})
    out = {}
    for row in rows:
        try:
            out[row["Node"].lower()] = Coordinate.from_json(row["Coord"])
        except CoordinateError:
            continue  # a row written by a newer version with another shape: unsortable, not fatal
    return out


def _node_of(row: Any) -> str:
    node = row.get("Node") if isinstance(row, dict) else None
    if isinstance(node, dict):
        node = node.get("Node")
    return node if isinstance(node, str) else ""


async def near_sorted(request: web.Request, rows: list[Any], near: str | None = None) -> list[Any]:
    """`rows` sorted by RTT from `?near=` (`_agent`: this agent's node), as Consul's reads do."""
    near = near if near is not None else request.query.get("near", "")
    if not near or not isinstance(rows, list):
        return rows
    agent = request.app[AGENT]
    if near == "_agent":
        near = agent.config.node_name
    return sort_by_distance(rows, _node_of, await coordinates(agent), near)
