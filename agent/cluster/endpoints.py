"""The server's RPC methods (what followers, client agents and operators call on the server port).

Each takes the call's argument map and returns something msgpack can carry; errors cross the wire
by kind (see `rpc.py`). Writes and leader-only work go through the server role or the cluster,
which forward to the leader as needed.
"""

from __future__ import annotations

from typing import Any

from proconsul.agent.cluster.caller import results_filtered
from proconsul.agent.cluster.errors import ClusterError
from proconsul.agent.cluster.host import ClusterOps
from proconsul.agent.cluster.rpc import RPCServer
from proconsul.catalog import commands as c


class ServerEndpoints:
    def __init__(self, cluster: ClusterOps) -> None:
        self.cluster = cluster

    def register(self, rpc: RPCServer) -> None:
        reg = rpc.register
        reg("catalog.apply", self._rpc_apply)
        reg("catalog.query", self._rpc_query)
        reg("session.create", self._rpc_session_create)
        reg("session.destroy", self._rpc_session_destroy)
        reg("session.renew", self._rpc_session_renew)
        reg("status.leader", self._rpc_status_leader)
        reg("status.peers", self._rpc_status_peers)
        reg("raft.state", self._rpc_raft_state)
        reg("operator.raft_configuration", self._rpc_raft_configuration)
        reg("operator.raft_remove_peer", self._rpc_raft_remove_peer)
        reg("operator.raft_transfer_leader", self._rpc_raft_transfer)
        reg("operator.autopilot_health", self._rpc_autopilot_health)
        reg("operator.autopilot_state", self._rpc_autopilot_state)
        reg("snapshot.save", self._rpc_snapshot_save)
        reg("dns.query", self._rpc_dns_query)
        reg("federation.forward", self._rpc_federation_forward)
        reg("federation.datacenters", self._rpc_federation_datacenters)
        reg("federation.status", self._rpc_federation_status)
        reg("federation.coordinates", self._rpc_federation_coordinates)
        reg("event.fire", self._rpc_event_fire)
        reg("coordinate.update", self._rpc_coordinate_update)

    def server(self) -> Any:
        return self.cluster.server()

    async def _rpc_apply(self, args: dict[str, Any]) -> Any:
        return await self.server().apply(c.decode(args["cmd"]))

    async def _rpc_query(self, args: dict[str, Any]) -> Any:
        server = self.server()
        idx, result = await server.query(args["name"], args["args"], args.get("index", 0),
                                         args.get("wait", 300.0), args.get("mode", "leader"))
        rep = server.replicator
        return [idx, result, bool(rep.leader), rep.last_contact(), results_filtered()]

    async def _rpc_session_create(self, args: dict[str, Any]) -> Any:
        return await self.server().session_create(args["session"])

    async def _rpc_session_destroy(self, args: dict[str, Any]) -> Any:
        return await self.server().session_destroy(args["id"])

    async def _rpc_session_renew(self, args: dict[str, Any]) -> Any:
        return await self.server().session_renew(args["id"])

    async def _rpc_status_leader(self, args: dict[str, Any]) -> Any:
        return self.cluster.leader_address()

    async def _rpc_status_peers(self, args: dict[str, Any]) -> Any:
        return self.server().replicator.peers()

    async def _rpc_raft_state(self, args: dict[str, Any]) -> Any:
        return {"has_state": self.cluster.has_raft_state(), "leader": self.cluster.leader_address()}

    async def _rpc_raft_configuration(self, args: dict[str, Any]) -> Any:
        return await self.cluster.on_leader("operator.raft_configuration", args, self.cluster.raft_configuration,
                                            idempotent=True)

    async def _rpc_autopilot_health(self, args: dict[str, Any]) -> Any:
        return await self.cluster.on_leader("operator.autopilot_health", args,
                                            lambda: self.cluster.autopilot_report("health"), idempotent=True)

    async def _rpc_autopilot_state(self, args: dict[str, Any]) -> Any:
        return await self.cluster.on_leader("operator.autopilot_state", args,
                                            lambda: self.cluster.autopilot_report("state"), idempotent=True)

    async def _rpc_raft_remove_peer(self, args: dict[str, Any]) -> Any:
        return await self.cluster.on_leader("operator.raft_remove_peer", args, lambda: self.cluster.remove_peer(**args))

    async def _rpc_raft_transfer(self, args: dict[str, Any]) -> Any:
        return await self.cluster.on_leader("operator.raft_transfer_leader", args, lambda: self.cluster.transfer_leader(**args))

    async def _rpc_federation_forward(self, args: dict[str, Any]) -> Any:
        """A client agent's call for another datacenter: this server sends it on over the WAN."""
        dc, method, inner = args.get("dc"), args.get("method"), args.get("args")
        timeout = args.get("timeout")
        if type(dc) is not str or type(method) is not str or type(inner) is not dict or not (
                timeout is None or isinstance(timeout, int | float)):
            raise ClusterError("federation.forward needs dc, method and args")
        return await self.cluster.forward_dc(dc, method, inner, timeout, bool(args.get("idempotent")))

    async def _rpc_federation_datacenters(self, args: dict[str, Any]) -> Any:
        return await self.cluster.datacenters()

    async def _rpc_federation_status(self, args: dict[str, Any]) -> Any:
        return self.cluster.federation_report()

    async def _rpc_coordinate_update(self, args: dict[str, Any]) -> Any:
        await self.cluster.coordinate_update(args)
        return True

    async def _rpc_federation_coordinates(self, args: dict[str, Any]) -> Any:
        return self.cluster.coordinate_datacenters()
    async def _rpc_event_fire(self, args: dict[str, Any]) -> Any:
        """A client agent's user event (Consul's Internal.EventFire): delivered to this server."""
        event = args.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("ID"), str) or not isinstance(event.get("Name"), str):
            raise ClusterError("event.fire needs an event with an ID and a Name")
        return self.cluster.host.user_event(event)

    async def _rpc_dns_query(self, args: dict[str, Any]) -> Any:
        """A client agent's DNS question, answered from this server's replica (stale, as Consul's DNS)."""
        handler = self.cluster.host.dns_handler
        packet = args.get("packet")
        if handler is None or not hasattr(handler, "answerer") or not isinstance(packet, bytes):
            raise ClusterError("this server does not answer DNS (dns port -1)" if handler is None
                               else "dns.query needs a packet")
        wan_for = str(args.get("wan_for") or "")  # the asker translates WAN addresses (translate_wan_addrs)
        response, recurse = handler.handle(packet, bool(args.get("udp", True)), wan_for)
        if recurse:  # a question for another datacenter: this server asks it
            return await handler.recurse(packet, not args.get("udp", True), wan_for)
        return response

    async def _rpc_snapshot_save(self, args: dict[str, Any]) -> Any:
        async def here() -> list[Any]:
            from proconsul.agent.cluster import snapshot

            if not args.get("stale"):
                await self.cluster.host.consistent_read()
            store = self.server().store
            return [store.last_index, snapshot.write_archive(store.snapshot(), store.last_index,
                                                             self.cluster.host.config.datacenter)]

        return await self.cluster.on_leader("snapshot.save", args, here, idempotent=True)
