"""The clustering error every part of it raises (kept apart so endpoints and the cluster share it)."""

from __future__ import annotations

from proconsul.agent.cluster.rpc import register_error


class ClusterError(Exception):
    """Clustering cannot start or carry out an operation; the message says why."""


register_error(ClusterError)  # crosses RPC as itself, so a client agent shows the server's reason


class NoPathToDatacenter(ClusterError):
    """A request names a datacenter this agent cannot reach (Consul's "No path to datacenter")."""

    def __init__(self, datacenter: str = "") -> None:
        super().__init__("No path to datacenter")
        self.datacenter = datacenter


register_error(NoPathToDatacenter)


class DatacenterUnreachable(ClusterError):
    """Every known server of the named datacenter is failed or did not answer (Consul's words)."""

    def __init__(self, datacenter: str = "") -> None:
        super().__init__("Remote DC has no server currently reachable")
        self.datacenter = datacenter


register_error(DatacenterUnreachable)
