"""A token's effective rules: its policies, its roles' policies, and the identities and templated
policies attached to either, merged with Consul's precedence. Pure: the caller supplies the rows and the time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from proconsul.agent.acl.builtin import node_identity_rules, service_identity_rules, templated_rules
from proconsul.agent.acl.rules import Rules, merge

ParseRules = Callable[[dict[str, Any]], Rules]  # a policy row -> its parsed rules (the caller caches)


def expired(token: dict[str, Any], now: float) -> bool:
    """Whether a token's ExpirationTime (RFC 3339) has passed at `now` (seconds since the epoch)."""
    exp = token.get("ExpirationTime")
    if not exp:
        return False
    try:
        when = datetime.fromisoformat(str(exp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return when <= now


def _in_dc(dcs: Any, datacenter: str) -> bool:
    return not dcs or datacenter in dcs


def _identities_rules(obj: dict[str, Any], datacenter: str) -> list[Rules]:
    out = []
    for si in obj.get("ServiceIdentities") or []:
        if _in_dc(si.get("Datacenters"), datacenter):
            out.append(service_identity_rules(si.get("ServiceName") or ""))
    for ni in obj.get("NodeIdentities") or []:
        if (ni.get("Datacenter") or datacenter) == datacenter:
            out.append(node_identity_rules(ni.get("NodeName") or ""))
    for tp in obj.get("TemplatedPolicies") or []:
        if _in_dc(tp.get("Datacenters"), datacenter):
            out.append(templated_rules(tp.get("TemplateName") or "", tp.get("TemplateVariables")))
    return out


def token_rules(token: dict[str, Any], policies: dict[str, dict[str, Any]], roles: dict[str, dict[str, Any]],
                datacenter: str, parse: ParseRules) -> Rules:
    """Merge everything a token grants. `policies` and `roles` map IDs to rows; links to missing ones are
    ignored (a deleted policy grants nothing), as are policies scoped to other datacenters."""
    parts: list[Rules] = []

    def add_policies(links: Any) -> None:
        for link in links or []:
            row = policies.get(link.get("ID") or "")
            if row is not None and _in_dc(row.get("Datacenters"), datacenter):
                parts.append(parse(row))

    add_policies(token.get("Policies"))
    parts.extend(_identities_rules(token, datacenter))
    for link in token.get("Roles") or []:
        role = roles.get(link.get("ID") or "")
        if role is not None:
            add_policies(role.get("Policies"))
            parts.extend(_identities_rules(role, datacenter))
    return merge(parts)
