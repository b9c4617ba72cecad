"""ACL tokens, policies and roles: request bodies checked and shaped into stored rows, and stored rows
shaped back into Consul's JSON. Pure: IDs and times come in as arguments."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from proconsul.agent.acl.builtin import (
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    GLOBAL_MANAGEMENT_RULES,
    TEMPLATED_POLICIES,
)
from proconsul.agent.acl.errors import InvalidACLObject, RulesError
from proconsul.agent.acl.rules import parse_rules

NAME_RE = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Looks up a policy or role row by ID or by name: (id, name) -> row | None.
Lookup = Callable[[str, str], dict[str, Any] | None]

TOKEN_FIELDS = ("AccessorID", "SecretID", "Description", "Policies", "Roles", "ServiceIdentities",
                "NodeIdentities", "TemplatedPolicies", "Local", "ExpirationTime", "ExpirationTTL", "Namespace",
                "Partition", "AuthMethod", "CreateTime", "Hash", "CreateIndex", "ModifyIndex", "Legacy", "Rules",
                "Type", "Name")
POLICY_FIELDS = ("ID", "Name", "Description", "Rules", "Datacenters", "Namespace", "Partition", "Hash",
                 "CreateIndex", "ModifyIndex")
ROLE_FIELDS = ("ID", "Name", "Description", "Policies", "ServiceIdentities", "NodeIdentities",
               "TemplatedPolicies", "Namespace", "Partition", "Hash", "CreateIndex", "ModifyIndex")


def fold(body: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    """Accept Consul's field names case-insensitively (its JSON decoder does); unknown fields are refused."""
    if not isinstance(body, dict):
        raise InvalidACLObject(f"{what} must be a JSON object")
    known = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for k, v in body.items():
        name = known.get(str(k).lower())
        if name is None:
            raise InvalidACLObject(f"{what}: unknown field {k!r}")
        out[name] = v
    return out


def _str(body: dict[str, Any], name: str, what: str) -> str:
    v = body.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidACLObject(f"{what}.{name} must be a string")
    return v


def _list(body: dict[str, Any], name: str, what: str) -> list[Any]:
    v = body.get(name)
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidACLObject(f"{what}.{name} must be a list")
    return v


def _links(body: dict[str, Any], name: str, what: str, lookup: Lookup, kind: str) -> list[dict[str, str]]:
    """Policy or role links given by ID or Name, resolved to IDs (an unknown one is an error, as in Consul)."""
    out, seen = [], set()
    for i, link in enumerate(_list(body, name, what)):
        if not isinstance(link, dict):
            raise InvalidACLObject(f"{what}.{name}[{i}] must be an object with an ID or a Name")
        link = {str(k).lower(): v for k, v in link.items()}
        lid, lname = str(link.get("id") or ""), str(link.get("name") or "")
        if not lid and not lname:
            raise InvalidACLObject(f"{what}.{name}[{i}] must have an ID or a Name")
        row = lookup(lid, lname)
        if row is None:
            raise InvalidACLObject(f"{what}.{name}[{i}]: no such ACL {kind} with "
                                   f"{'ID' if lid else 'name'} {lid or lname!r}")
        if row["ID"] not in seen:
            seen.add(row["ID"])
            out.append({"ID": row["ID"], "Name": row["Name"]})
    return out


def _identities(body: dict[str, Any], what: str) -> dict[str, Any]:
    services = []
    for i, si in enumerate(_list(body, "ServiceIdentities", what)):
        si = {str(k).lower(): v for k, v in si.items()} if isinstance(si, dict) else None
        name = si.get("servicename") if si else None
        if not isinstance(name, str) or not name:
            raise InvalidACLObject(f"{what}.ServiceIdentities[{i}] must have a ServiceName")
        if not SERVICE_NAME_RE.match(name) or len(name) > 256:
            raise InvalidACLObject(f"{what}.ServiceIdentities[{i}].ServiceName {name!r} is invalid: lowercase "
                                   "letters, digits, '-' and '_', starting and ending with a letter or digit")
        dcs = si.get("datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
            raise InvalidACLObject(f"{what}.ServiceIdentities[{i}].Datacenters must be a list of names")
        services.append({"ServiceName": name, **({"Datacenters": dcs} if dcs else {})})
    nodes = []
    for i, ni in enumerate(_list(body, "NodeIdentities", what)):
        ni = {str(k).lower(): v for k, v in ni.items()} if isinstance(ni, dict) else None
        name, dc = (ni.get("nodename"), ni.get("datacenter")) if ni else (None, None)
        if not isinstance(name, str) or not name or not isinstance(dc, str) or not dc:
            raise InvalidACLObject(f"{what}.NodeIdentities[{i}] must have a NodeName and a Datacenter")
        nodes.append({"NodeName": name, "Datacenter": dc})
    templated = []
    for i, tp in enumerate(_list(body, "TemplatedPolicies", what)):
        tp = {str(k).lower(): v for k, v in tp.items()} if isinstance(tp, dict) else None
        name = tp.get("templatename") if tp else None
        if name not in TEMPLATED_POLICIES:
            raise InvalidACLObject(f"{what}.TemplatedPolicies[{i}].TemplateName {name!r} is not a templated "
                                   f"policy ({', '.join(TEMPLATED_POLICIES)})")
        variables = tp.get("templatevariables") or {}
        if not isinstance(variables, dict):
            raise InvalidACLObject(f"{what}.TemplatedPolicies[{i}].TemplateVariables must be an object")
        variables = {str(k).lower(): v for k, v in variables.items()}
        if "name" in TEMPLATED_POLICIES[name][0] and not variables.get("name"):
            raise InvalidACLObject(f"{what}.TemplatedPolicies[{i}]: {name} needs TemplateVariables.Name")
        entry: dict[str, Any] = {"TemplateName": name}
        if variables:
            entry["TemplateVariables"] = {"Name": variables.get("name")}
        dcs = tp.get("datacenters") or []
        if dcs:
            entry["Datacenters"] = list(dcs)
        templated.append(entry)
    return {"ServiceIdentities": services, "NodeIdentities": nodes, "TemplatedPolicies": templated}


def _hash(row: dict[str, Any], fields: tuple[str, ...]) -> str:
    import base64

    data = json.dumps({f: row.get(f) for f in fields}, sort_keys=True).encode()
    return base64.b64encode(hashlib.blake2b(data, digest_size=32).digest()).decode()


# ---------------------------------------------------------------------- policies
def policy_row(body: Any, *, new_id: str, existing: dict[str, Any] | None, name_taken: Callable[[str], bool]
               ) -> dict[str, Any]:
    """A policy create/update body → the row to store."""
    p = fold(body, POLICY_FIELDS, "Policy")
    name = _str(p, "Name", "Policy")
    if not name:
        raise InvalidACLObject("Invalid Policy: no Name is set")
    if not NAME_RE.match(name):
        raise InvalidACLObject("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are "
                               "allowed")
    rules = _str(p, "Rules", "Policy")
    if rules.lstrip().startswith('"'):  # py-consul sends rules JSON-encoded once more: a JSON string
        try:
            inner = json.loads(rules)
        except ValueError:
            inner = None
        if isinstance(inner, str):
            rules = inner
    if existing is not None and existing["ID"] == GLOBAL_MANAGEMENT_ID:
        if rules.strip() != GLOBAL_MANAGEMENT_RULES.strip():
            raise InvalidACLObject("Changing the Rules for the builtin global-management policy is not permitted")
        if (p.get("Datacenters") or None) is not None:
            raise InvalidACLObject("Changing the Datacenters of the builtin global-management policy is not "
                                   "permitted")
    try:
        parse_rules(rules)
    except RulesError as e:
        raise InvalidACLObject(f"Invalid Policy: {e}") from None
    if name_taken(name):
        raise InvalidACLObject(f"Invalid Policy: A Policy with Name {name!r} already exists")
    dcs = _list(p, "Datacenters", "Policy")
    row = {"ID": existing["ID"] if existing else new_id, "Name": name,
           "Description": _str(p, "Description", "Policy"), "Rules": rules, "Datacenters": dcs or None}
    row["Hash"] = _hash(row, ("Name", "Description", "Rules", "Datacenters"))
    return row


def policy_json(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "Namespace": "default", "Partition": "default"}


def policy_list_stub(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in policy_json(row).items() if k != "Rules"}


# ---------------------------------------------------------------------- roles
def role_row(body: Any, *, new_id: str, existing: dict[str, Any] | None, policies: Lookup,
             name_taken: Callable[[str], bool]) -> dict[str, Any]:
    r = fold(body, ROLE_FIELDS, "Role")
    name = _str(r, "Name", "Role")
    if not name:
        raise InvalidACLObject("Invalid Role: no Name is set")
    if not NAME_RE.match(name):
        raise InvalidACLObject("Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    if name_taken(name):
        raise InvalidACLObject(f"Invalid Role: A Role with Name {name!r} already exists")
    row = {"ID": existing["ID"] if existing else new_id, "Name": name, "Description": _str(r, "Description", "Role"),
           "Policies": _links(r, "Policies", "Role", policies, "policy"), **_identities(r, "Role")}
    row["Hash"] = _hash(row, ("Name", "Description", "Policies", "ServiceIdentities", "NodeIdentities"))
    return row


# ---------------------------------------------------------------------- tokens
def token_row(body: Any, *, new_accessor: str, new_secret: str, now_rfc3339: str, now: float,
              existing: dict[str, Any] | None, policies: Lookup, roles: Lookup,
              secret_taken: Callable[[str], bool], accessor_taken: Callable[[str], bool],
              parse_duration: Callable[[str], float], rfc3339: Callable[[float], str]) -> dict[str, Any]:
    t = fold(body, TOKEN_FIELDS, "Token")
    accessor = _str(t, "AccessorID", "Token")
    secret = _str(t, "SecretID", "Token")
    if existing is None:
        for field, value, taken in (("AccessorID", accessor, accessor_taken), ("SecretID", secret, secret_taken)):
            if value and not UUID_RE.match(value):
                raise InvalidACLObject(f"Invalid Token: {field} is not a valid UUID")
            if value and taken(value):
                raise InvalidACLObject(f"Invalid Token: {field} is already in use")
        accessor, secret = accessor or new_accessor, secret or new_secret
    else:
        if accessor and accessor != existing["AccessorID"]:
            raise InvalidACLObject("Token update: the AccessorID in the body does not match the URL")
        if secret and secret != existing["SecretID"]:
            raise InvalidACLObject("Changing a token's SecretID is not permitted")
        if "Local" in t and bool(t["Local"]) != bool(existing.get("Local")):
            raise InvalidACLObject("Cannot toggle local mode of " + existing["AccessorID"])
        accessor, secret = existing["AccessorID"], existing["SecretID"]
    expiration = _str(t, "ExpirationTime", "Token")
    ttl = t.get("ExpirationTTL")
    if existing is not None:
        if expiration and expiration != (existing.get("ExpirationTime") or ""):
            raise InvalidACLObject("Cannot change expiration time of " + accessor)
        expiration = existing.get("ExpirationTime") or ""
    elif ttl:
        if expiration:
            raise InvalidACLObject("Token Expiration TTL and Expiration Time cannot both be set")
        try:
            seconds = parse_duration(str(ttl)) if isinstance(ttl, str) else float(ttl) / 1e9
        except ValueError:
            raise InvalidACLObject(f"Invalid Token: ExpirationTTL {ttl!r} is not a duration") from None
        if seconds < 60 or seconds > 24 * 3600 * 365 * 100:
            raise InvalidACLObject(f"Token Expiration TTL '{ttl}' should be between 1m0s and 876000h0m0s")
        expiration = rfc3339(now + seconds)
    row: dict[str, Any] = {
        "AccessorID": accessor, "SecretID": secret, "Description": _str(t, "Description", "Token"),
        "Policies": _links(t, "Policies", "Token", policies, "policy"),
        "Roles": _links(t, "Roles", "Token", roles, "role"), **_identities(t, "Token"),
        "Local": bool(existing.get("Local")) if existing else bool(t.get("Local")),
        "CreateTime": existing.get("CreateTime") if existing else now_rfc3339,
    }
    if expiration:
        row["ExpirationTime"] = expiration
    if existing and existing.get("AuthMethod"):
        row["AuthMethod"] = existing["AuthMethod"]
    if existing and existing["AccessorID"] == ANONYMOUS_ACCESSOR:
        row["Description"] = row["Description"] or existing.get("Description", "")
    row["Hash"] = _hash(row, ("Description", "Policies", "Roles", "ServiceIdentities", "NodeIdentities",
                              "TemplatedPolicies", "Local"))
    return row


def token_json(row: dict[str, Any], policies: dict[str, dict[str, Any]], roles: dict[str, dict[str, Any]], *,
               show_secret: bool = True) -> dict[str, Any]:
    """A stored token as Consul shows it: links with current names (dangling ones dropped)."""
    out = _linked(row, policies)
    out["Roles"] = _names(row.get("Roles"), roles)
    if not show_secret:
        out["SecretID"] = "<hidden>"
    return {k: v for k, v in out.items() if v is not None or k in ("Policies",)}


def role_json(row: dict[str, Any], policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in _linked(row, policies).items() if v is not None}


def _names(links: list[dict[str, Any]] | None, rows: dict[str, dict[str, Any]]) -> list[dict[str, str]] | None:
    return [{"ID": x["ID"], "Name": rows[x["ID"]]["Name"]} for x in links or [] if x["ID"] in rows] or None


def _linked(row: dict[str, Any], policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What tokens and roles share on the way out: policy links named, empty identity lists as null."""
    out = dict(row, Namespace="default", Partition="default")
    out["Policies"] = _names(row.get("Policies"), policies)
    for k in ("ServiceIdentities", "NodeIdentities", "TemplatedPolicies"):
        out[k] = row.get(k) or None
    return out
