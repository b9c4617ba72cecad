"""The standard kinds of health check: Consul's check types, each mapped to its runner."""

from __future__ import annotations

from proconsul.agent.checks.alias import AliasRunner
from proconsul.agent.checks.h2 import GRPCRunner, H2PingRunner
from proconsul.agent.checks.http import HTTPRunner
from proconsul.agent.checks.net import TCPRunner, UDPRunner
from proconsul.agent.checks.runner import RunnerFactory
from proconsul.agent.checks.script import ScriptRunner
from proconsul.agent.checks.ttl import ttl_runner


def standard_kinds() -> dict[str, RunnerFactory]:
    """Check kind (a definition's `Kind`) → runner factory; kinds without one (maintenance) run nothing."""
    return {
        "ttl": ttl_runner,
        "http": HTTPRunner,
        "tcp": TCPRunner,
        "udp": UDPRunner,
        "script": ScriptRunner,
        "grpc": GRPCRunner,
        "h2ping": H2PingRunner,
        "alias": AliasRunner,
    }
