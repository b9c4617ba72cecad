"""Consul's built-in ACL objects: the global-management policy, the anonymous token, templated policies,
and the rules that service and node identities stand for."""

from __future__ import annotations

from typing import Any

from proconsul.agent.acl.rules import READ, WRITE, Rule, Rules

GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_MANAGEMENT_NAME = "global-management"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"

GLOBAL_MANAGEMENT_RULES = """acl = "write"
agent_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "write"
}
keyring = "write"
node_prefix "" {
  policy = "write"
}
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" {
  policy = "write"
}"""


def global_management_policy() -> dict[str, Any]:
    return {"ID": GLOBAL_MANAGEMENT_ID, "Name": GLOBAL_MANAGEMENT_NAME,
            "Description": "Builtin Policy that grants unlimited access", "Rules": GLOBAL_MANAGEMENT_RULES,
            "Datacenters": None}


def anonymous_token() -> dict[str, Any]:
    return {"AccessorID": ANONYMOUS_ACCESSOR, "SecretID": ANONYMOUS_SECRET, "Description": "Anonymous Token",
            "Policies": [], "Roles": [], "ServiceIdentities": [], "NodeIdentities": [], "TemplatedPolicies": [],
            "Local": False}


def _read_everything_of(*kinds: str) -> dict[str, dict[str, Rule]]:
    return {k: {"": Rule(READ, READ if k == "service" else "")} for k in kinds}


def service_identity_rules(name: str) -> Rules:
    """A service identity: write on the service and its sidecar, read on every service and node."""
    return Rules(exact={"service": {name: Rule(WRITE, READ), f"{name}-sidecar-proxy": Rule(WRITE, READ)}},
                 prefix=_read_everything_of("service", "node"))


def node_identity_rules(name: str) -> Rules:
    """A node identity: write on the node (and its agent), read on every service."""
    return Rules(exact={"node": {name: Rule(WRITE)}}, prefix=_read_everything_of("service"))


def dns_rules() -> Rules:
    """builtin/dns: what a DNS token needs — read on nodes, services and prepared queries."""
    return Rules(prefix=_read_everything_of("node", "service", "query"))


# Templated policies: name -> (the variables they take, a description).
TEMPLATED_POLICIES: dict[str, tuple[tuple[str, ...], str]] = {
    "builtin/service": (("name",), "Gives the token or role permissions to register a service and discover "
                                   "services in the Consul catalog. It also gives the specified service's "
                                   "sidecar proxy the permission to discover and route traffic to other services."),
    "builtin/node": (("name",), "Gives the token or role permissions for a register an agent/node into the "
                                "catalog. A node is typically a consul agent but can also be a physical server, "
                                "cloud instance or a container."),
    "builtin/dns": ((), "Gives the token or role permissions for the Consul DNS to query services in the "
                        "network."),
}


def templated_rules(name: str, variables: dict[str, Any] | None) -> Rules:
    vars_ = variables or {}
    if name == "builtin/service":
        return service_identity_rules(str(vars_.get("Name") or vars_.get("name") or ""))
    if name == "builtin/node":
        return node_identity_rules(str(vars_.get("Name") or vars_.get("name") or ""))
    if name == "builtin/dns":
        return dns_rules()
    return Rules()


def templated_policy_rules_text(name: str, variables: dict[str, Any] | None) -> str:
    """The rules a templated policy stands for, as HCL (what `preview` shows)."""
    vars_ = variables or {}
    n = str(vars_.get("Name") or vars_.get("name") or "")
    if name == "builtin/service":
        return (f'service "{n}" {{\n  policy = "write"\n}}\nservice "{n}-sidecar-proxy" {{\n  policy = "write"\n}}\n'
                'service_prefix "" {\n  policy = "read"\n}\nnode_prefix "" {\n  policy = "read"\n}')
    if name == "builtin/node":
        return f'node "{n}" {{\n  policy = "write"\n}}\nservice_prefix "" {{\n  policy = "read"\n}}'
    if name == "builtin/dns":
        return ('node_prefix "" {\n  policy = "read"\n}\nservice_prefix "" {\n  policy = "read"\n}\n'
                'query_prefix "" {\n  policy = "read"\n}')
    return ""
