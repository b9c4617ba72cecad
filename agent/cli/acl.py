"""`proconsul acl …`: bootstrap, tokens, policies and roles, with Consul's commands and flags."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, print_json, read_value, run, table

acl_app = typer.Typer(help="Manage ACLs: bootstrap, tokens, policies and roles.", no_args_is_help=True)
token_app = typer.Typer(help="Create, read, update and delete ACL tokens.", no_args_is_help=True)
policy_app = typer.Typer(help="Create, read, update and delete ACL policies.", no_args_is_help=True)
role_app = typer.Typer(help="Create, read, update and delete ACL roles.", no_args_is_help=True)

PolicyIDs = Annotated[list[str] | None, typer.Option("--policy-id", help="A policy to link, by ID (repeatable).")]
PolicyNames = Annotated[list[str] | None, typer.Option("--policy-name", help="A policy to link, by name (repeatable).")]
RoleIDs = Annotated[list[str] | None, typer.Option("--role-id", help="A role to link, by ID (repeatable).")]
RoleNames = Annotated[list[str] | None, typer.Option("--role-name", help="A role to link, by name (repeatable).")]
ServiceIdentities = Annotated[list[str] | None, typer.Option(
    "--service-identity", help="A service identity, `name` or `name:dc1,dc2` (repeatable).")]
NodeIdentities = Annotated[list[str] | None, typer.Option(
    "--node-identity", help="A node identity, `node:datacenter` (repeatable).")]
Description = Annotated[str | None, typer.Option("--description", help="A human-readable description.")]


def _links(ids: list[str] | None, names: list[str] | None) -> list[dict[str, str]]:
    return [{"ID": i} for i in ids or []] + [{"Name": n} for n in names or []]


def _service_identities(items: list[str] | None) -> list[dict[str, Any]]:
    out = []
    for item in items or []:
        name, _, dcs = item.partition(":")
        if not name:
            raise CLIError(f"--service-identity {item!r}: give a service name, optionally :dc1,dc2")
        out.append({"ServiceName": name, **({"Datacenters": dcs.split(",")} if dcs else {})})
    return out


def _node_identities(items: list[str] | None) -> list[dict[str, str]]:
    out = []
    for item in items or []:
        name, _, dc = item.partition(":")
        if not name or not dc:
            raise CLIError(f"--node-identity {item!r} must be node:datacenter")
        out.append({"NodeName": name, "Datacenter": dc})
    return out


def _names(links: list[dict[str, Any]] | None) -> str:
    return ", ".join(f"{x['Name']}" for x in links or [])


def _show_token(t: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        return print_json(t)
    rows = [("AccessorID", t.get("AccessorID")), ("SecretID", t.get("SecretID")),
            ("Description", t.get("Description", "")), ("Local", str(t.get("Local", False)).lower()),
            ("Create Time", t.get("CreateTime", ""))]
    if t.get("ExpirationTime"):
        rows.append(("Expiration Time", t["ExpirationTime"]))
    for label, value in rows:
        typer.echo(f"{label + ':':<17}{value}")
    for title, links in (("Policies", t.get("Policies")), ("Roles", t.get("Roles"))):
        if links:
            typer.echo(f"{title}:")
            for x in links:
                typer.echo(f"   {x['ID']} - {x['Name']}")
    if t.get("ServiceIdentities"):
        typer.echo("Service Identities:")
        for si in t["ServiceIdentities"]:
            typer.echo(f"   {si['ServiceName']} (Datacenters: {', '.join(si.get('Datacenters') or ['all'])})")
    if t.get("NodeIdentities"):
        typer.echo("Node Identities:")
        for ni in t["NodeIdentities"]:
            typer.echo(f"   {ni['NodeName']} (Datacenter: {ni['Datacenter']})")


def _show_policy(p: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        return print_json(p)
    for label in ("ID", "Name", "Description"):
        typer.echo(f"{label + ':':<13}{p.get(label, '')}")
    typer.echo(f"{'Datacenters:':<13}{', '.join(p.get('Datacenters') or [])}")
    typer.echo("Rules:")
    typer.echo(p.get("Rules", ""))


def _show_role(r: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        return print_json(r)
    for label in ("ID", "Name", "Description"):
        typer.echo(f"{label + ':':<13}{r.get(label, '')}")
    if r.get("Policies"):
        typer.echo("Policies:")
        for x in r["Policies"]:
            typer.echo(f"   {x['ID']} - {x['Name']}")
    for si in r.get("ServiceIdentities") or []:
        typer.echo(f"Service Identity: {si['ServiceName']}")
    for ni in r.get("NodeIdentities") or []:
        typer.echo(f"Node Identity: {ni['NodeName']} ({ni['Datacenter']})")


# ---------------------------------------------------------------------- bootstrap
@acl_app.command("bootstrap")
def bootstrap(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """Create the first management token (works once per cluster)."""
    check_format(fmt)
    run(lambda: _show_token(client(http_addr).put("/v1/acl/bootstrap").json(), fmt))


# ---------------------------------------------------------------------- tokens
@token_app.command("create")
def token_create(
    http_addr: HttpAddr = None, fmt: Format = "table", description: Description = None,
    policy_id: PolicyIDs = None, policy_name: PolicyNames = None, role_id: RoleIDs = None,
    role_name: RoleNames = None, service_identity: ServiceIdentities = None, node_identity: NodeIdentities = None,
    expires_ttl: Annotated[str | None, typer.Option("--expires-ttl", help="Expire after this long (e.g. 1h).")] = None,
    local: Annotated[bool, typer.Option("--local", help="A token of this datacenter only.")] = False,
    accessor: Annotated[str | None, typer.Option("--accessor", help="Use this AccessorID (a UUID).")] = None,
    secret: Annotated[str | None, typer.Option("--secret", help="Use this SecretID (a UUID).")] = None,
    templated_policy: Annotated[str | None, typer.Option("--templated-policy", help="e.g. builtin/service")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="The templated policy's name:value")] = None,
) -> None:
    """Create a token linked to policies, roles, identities and a templated policy."""
    check_format(fmt)

    def body() -> None:
        payload: dict[str, Any] = {"Description": description or "", "Policies": _links(policy_id, policy_name),
                                   "Roles": _links(role_id, role_name),
                                   "ServiceIdentities": _service_identities(service_identity),
                                   "NodeIdentities": _node_identities(node_identity), "Local": local}
        if expires_ttl:
            payload["ExpirationTTL"] = expires_ttl
        if templated_policy:
            variables = {k.capitalize(): v for k, v in (x.split(":", 1) for x in var or [] if ":" in x)}
            payload["TemplatedPolicies"] = [{"TemplateName": templated_policy, "TemplateVariables": variables}]
        if accessor:
            payload["AccessorID"] = accessor
        if secret:
            payload["SecretID"] = secret
        _show_token(client(http_addr).put("/v1/acl/token", body=payload).json(), fmt)

    run(body)


IdOpt = Annotated[str | None, typer.Option("--id", "--accessor-id", help="The token's AccessorID.")]


@token_app.command("read")
def token_read(http_addr: HttpAddr = None, fmt: Format = "table", id_: IdOpt = None,
               self_: Annotated[bool, typer.Option("--self", help="Read the token this command uses.")] = False
               ) -> None:
    """Read a token by AccessorID, or the caller's own with --self."""
    check_format(fmt)

    def body() -> None:
        if not id_ and not self_:
            raise CLIError("give the token's --id, or --self")
        path = "/v1/acl/token/self" if self_ else f"/v1/acl/token/{id_}"
        _show_token(client(http_addr).get(path).json(), fmt)

    run(body)


@token_app.command("list")
def token_list(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """List every token."""
    check_format(fmt)

    def body() -> None:
        tokens = client(http_addr).get("/v1/acl/tokens").json()
        if fmt == "json":
            return print_json(tokens)
        table(None, ["AccessorID", "Description", "Policies", "Roles", "Local"],
              [[t["AccessorID"], t.get("Description", ""), _names(t.get("Policies")), _names(t.get("Roles")),
                str(t.get("Local", False)).lower()] for t in tokens])

    run(body)


@token_app.command("update")
def token_update(
    http_addr: HttpAddr = None, fmt: Format = "table", id_: IdOpt = None, description: Description = None,
    policy_id: PolicyIDs = None, policy_name: PolicyNames = None, role_id: RoleIDs = None,
    role_name: RoleNames = None, service_identity: ServiceIdentities = None, node_identity: NodeIdentities = None,
    merge: Annotated[bool, typer.Option("--merge-policies", "--append", help="Add the links given to the "
                                        "token's current ones instead of replacing them.")] = False,
) -> None:
    """Change a token's description and links (replacing them, or adding with --merge-policies)."""
    check_format(fmt)

    def body() -> None:
        if not id_:
            raise CLIError("give the token's --id")
        api = client(http_addr)
        cur = api.get(f"/v1/acl/token/{id_}").json()
        payload = {k: cur.get(k) for k in ("Policies", "Roles", "ServiceIdentities", "NodeIdentities",
                                           "TemplatedPolicies", "Local")}
        payload["Description"] = cur.get("Description", "") if description is None else description
        for key, new in (("Policies", _links(policy_id, policy_name)), ("Roles", _links(role_id, role_name)),
                         ("ServiceIdentities", _service_identities(service_identity)),
                         ("NodeIdentities", _node_identities(node_identity))):
            if new:
                payload[key] = (payload.get(key) or []) + new if merge else new
        _show_token(api.put(f"/v1/acl/token/{id_}", body=payload).json(), fmt)

    run(body)


@token_app.command("clone")
def token_clone(http_addr: HttpAddr = None, fmt: Format = "table", id_: IdOpt = None,
                description: Description = None) -> None:
    """A new token with the same links as an existing one."""
    check_format(fmt)

    def body() -> None:
        if not id_:
            raise CLIError("give the token's --id")
        payload = {"Description": description} if description is not None else {}
        _show_token(client(http_addr).put(f"/v1/acl/token/{id_}/clone", body=payload).json(), fmt)

    run(body)


@token_app.command("delete")
def token_delete(http_addr: HttpAddr = None, id_: IdOpt = None) -> None:
    """Delete a token."""

    def body() -> None:
        if not id_:
            raise CLIError("give the token's --id")
        client(http_addr).delete(f"/v1/acl/token/{id_}")
        typer.echo(f"Token {id_!r} deleted successfully")

    run(body)


# ---------------------------------------------------------------------- policies
Rules = Annotated[str | None, typer.Option("--rules", help="The rules (HCL or JSON), @file, or - for stdin.")]
PolicyId = Annotated[str | None, typer.Option("--id", help="The policy's ID.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="The name.")]
Datacenters = Annotated[list[str] | None, typer.Option("--valid-datacenter", "--datacenter",
                                                        help="Only in these datacenters (repeatable).")]


def _policy_path(id_: str | None, name: str | None) -> str:
    if id_:
        return f"/v1/acl/policy/{id_}"
    if name:
        return f"/v1/acl/policy/name/{name}"
    raise CLIError("give the policy's --id or --name")


@policy_app.command("create")
def policy_create(http_addr: HttpAddr = None, fmt: Format = "table", name: NameOpt = None,
                  description: Description = None, rules: Rules = None, valid_datacenter: Datacenters = None
                  ) -> None:
    """Create a policy from rules: `--rules @web.hcl`."""
    check_format(fmt)

    def body() -> None:
        if not name:
            raise CLIError("give the policy a --name")
        text = read_value(rules).decode() if rules else ""
        payload = {"Name": name, "Description": description or "", "Rules": text,
                   "Datacenters": valid_datacenter or None}
        _show_policy(client(http_addr).put("/v1/acl/policy", body=payload).json(), fmt)

    run(body)


@policy_app.command("read")
def policy_read(http_addr: HttpAddr = None, fmt: Format = "table", id_: PolicyId = None, name: NameOpt = None
                ) -> None:
    """Read a policy by --id or --name."""
    check_format(fmt)
    run(lambda: _show_policy(client(http_addr).get(_policy_path(id_, name)).json(), fmt))


@policy_app.command("list")
def policy_list(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """List every policy."""
    check_format(fmt)

    def body() -> None:
        policies = client(http_addr).get("/v1/acl/policies").json()
        if fmt == "json":
            return print_json(policies)
        table(None, ["ID", "Name", "Description", "Datacenters"],
              [[p["ID"], p["Name"], p.get("Description", ""), ", ".join(p.get("Datacenters") or [])]
               for p in policies])

    run(body)


@policy_app.command("update")
def policy_update(http_addr: HttpAddr = None, fmt: Format = "table", id_: PolicyId = None, name: NameOpt = None,
                  new_name: Annotated[str | None, typer.Option("--new-name", help="Rename the policy.")] = None,
                  description: Description = None, rules: Rules = None, valid_datacenter: Datacenters = None
                  ) -> None:
    """Change a policy's rules, description, name or datacenters."""
    check_format(fmt)

    def body() -> None:
        api = client(http_addr)
        cur = api.get(_policy_path(id_, name)).json()
        payload = {"Name": new_name or cur["Name"],
                   "Description": cur.get("Description", "") if description is None else description,
                   "Rules": read_value(rules).decode() if rules is not None else cur.get("Rules", ""),
                   "Datacenters": valid_datacenter or cur.get("Datacenters")}
        _show_policy(api.put(f"/v1/acl/policy/{cur['ID']}", body=payload).json(), fmt)

    run(body)


@policy_app.command("delete")
def policy_delete(http_addr: HttpAddr = None, id_: PolicyId = None, name: NameOpt = None) -> None:
    """Delete a policy by --id or --name."""

    def body() -> None:
        api = client(http_addr)
        cur = api.get(_policy_path(id_, name)).json()
        api.delete(f"/v1/acl/policy/{cur['ID']}")
        typer.echo(f"Policy {cur['Name']!r} deleted successfully")

    run(body)


# ---------------------------------------------------------------------- roles
RoleId = Annotated[str | None, typer.Option("--id", help="The role's ID.")]


def _role_path(id_: str | None, name: str | None) -> str:
    if id_:
        return f"/v1/acl/role/{id_}"
    if name:
        return f"/v1/acl/role/name/{name}"
    raise CLIError("give the role's --id or --name")


@role_app.command("create")
def role_create(http_addr: HttpAddr = None, fmt: Format = "table", name: NameOpt = None,
                description: Description = None, policy_id: PolicyIDs = None, policy_name: PolicyNames = None,
                service_identity: ServiceIdentities = None, node_identity: NodeIdentities = None) -> None:
    """Create a role: a named set of policies and identities tokens can share."""
    check_format(fmt)

    def body() -> None:
        if not name:
            raise CLIError("give the role a --name")
        payload = {"Name": name, "Description": description or "", "Policies": _links(policy_id, policy_name),
                   "ServiceIdentities": _service_identities(service_identity),
                   "NodeIdentities": _node_identities(node_identity)}
        _show_role(client(http_addr).put("/v1/acl/role", body=payload).json(), fmt)

    run(body)


@role_app.command("read")
def role_read(http_addr: HttpAddr = None, fmt: Format = "table", id_: RoleId = None, name: NameOpt = None) -> None:
    """Read a role by --id or --name."""
    check_format(fmt)
    run(lambda: _show_role(client(http_addr).get(_role_path(id_, name)).json(), fmt))


@role_app.command("list")
def role_list(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """List every role."""
    check_format(fmt)

    def body() -> None:
        roles = client(http_addr).get("/v1/acl/roles").json()
        if fmt == "json":
            return print_json(roles)
        table(None, ["ID", "Name", "Description", "Policies"],
              [[r["ID"], r["Name"], r.get("Description", ""), _names(r.get("Policies"))] for r in roles])

    run(body)


@role_app.command("update")
def role_update(http_addr: HttpAddr = None, fmt: Format = "table", id_: RoleId = None, name: NameOpt = None,
                description: Description = None, policy_id: PolicyIDs = None, policy_name: PolicyNames = None,
                service_identity: ServiceIdentities = None, node_identity: NodeIdentities = None) -> None:
    """Change a role (links given replace the role's current ones)."""
    check_format(fmt)

    def body() -> None:
        api = client(http_addr)
        cur = api.get(_role_path(id_, name)).json()
        payload = {k: cur.get(k) for k in ("Name", "Policies", "ServiceIdentities", "NodeIdentities")}
        payload["Description"] = cur.get("Description", "") if description is None else description
        for key, new in (("Policies", _links(policy_id, policy_name)),
                         ("ServiceIdentities", _service_identities(service_identity)),
                         ("NodeIdentities", _node_identities(node_identity))):
            if new:
                payload[key] = new
        _show_role(api.put(f"/v1/acl/role/{cur['ID']}", body=payload).json(), fmt)

    run(body)


@role_app.command("delete")
def role_delete(http_addr: HttpAddr = None, id_: RoleId = None, name: NameOpt = None) -> None:
    """Delete a role by --id or --name."""

    def body() -> None:
        api = client(http_addr)
        cur = api.get(_role_path(id_, name)).json()
        api.delete(f"/v1/acl/role/{cur['ID']}")
        typer.echo(f"Role {cur['Name']!r} deleted successfully")

    run(body)


# ---------------------------------------------------------------------- auth methods and binding rules
method_app = typer.Typer(help="Create, read, update and delete auth methods (type jwt).", no_args_is_help=True)
rule_app = typer.Typer(help="Create, read, update and delete binding rules.", no_args_is_help=True)
MethodName = Annotated[str | None, typer.Option("--name", help="The auth method's name.")]


def _config(config: str | None) -> dict[str, Any]:
    if not config:
        return {}
    try:
        data = json.loads(read_value(config))
    except json.JSONDecodeError as e:
        raise CLIError(f"-config must be JSON: {e}") from None
    if not isinstance(data, dict):
        raise CLIError("-config must be a JSON object")
    return data


@method_app.command("create")
def method_create(
    http_addr: HttpAddr = None, fmt: Format = "json", name: MethodName = None,
    type_: Annotated[str, typer.Option("--type", help="The method's type: jwt.")] = "jwt",
    description: Description = None,
    display_name: Annotated[str, typer.Option("--display-name", help="A name for UIs.")] = "",
    config: Annotated[str | None, typer.Option("--config", help="Its Config as JSON, @file, or -.")] = None,
    max_token_ttl: Annotated[str, typer.Option("--max-token-ttl", help="Login tokens expire after this.")] = "",
    token_locality: Annotated[str, typer.Option("--token-locality", help="local or global.")] = "",
) -> None:
    """Create an auth method, e.g. `-type jwt -name ci -config @jwt.json`."""
    check_format(fmt)

    def body() -> None:
        if not name:
            raise CLIError("give the auth method a --name")
        payload = {"Name": name, "Type": type_, "Description": description or "", "DisplayName": display_name,
                   "Config": _config(config), "MaxTokenTTL": max_token_ttl, "TokenLocality": token_locality}
        print_json(client(http_addr).put("/v1/acl/auth-method", body=payload).json())

    run(body)


@method_app.command("read")
def method_read(http_addr: HttpAddr = None, name: MethodName = None) -> None:
    """Read an auth method."""
    run(lambda: print_json(client(http_addr).get(f"/v1/acl/auth-method/{name or ''}").json()))


@method_app.command("list")
def method_list(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """List the auth methods."""
    check_format(fmt)

    def body() -> None:
        rows = client(http_addr).get("/v1/acl/auth-methods").json()
        if fmt == "json":
            return print_json(rows)
        table(None, ["Name", "Type", "Description"], [[r["Name"], r["Type"], r.get("Description", "")] for r in rows])

    run(body)


@method_app.command("delete")
def method_delete(http_addr: HttpAddr = None, name: MethodName = None) -> None:
    """Delete an auth method, its binding rules and the tokens its logins made."""

    def body() -> None:
        if not name:
            raise CLIError("give the auth method's --name")
        client(http_addr).delete(f"/v1/acl/auth-method/{name}")
        typer.echo(f"Auth method {name!r} deleted successfully")

    run(body)


@rule_app.command("create")
def rule_create(
    http_addr: HttpAddr = None,
    method: Annotated[str | None, typer.Option("--method", help="The auth method's name.")] = None,
    bind_type: Annotated[str, typer.Option("--bind-type", help="service, node, role, policy or templated-policy.")] = "",
    bind_name: Annotated[str, typer.Option("--bind-name", help="What to bind, e.g. ${value.service}.")] = "",
    selector: Annotated[str, typer.Option("--selector", help="Which logins it applies to (a filter).")] = "",
    description: Description = None,
) -> None:
    """Create a binding rule: what a login through the method gets."""

    def body() -> None:
        payload = {"AuthMethod": method or "", "BindType": bind_type, "BindName": bind_name, "Selector": selector,
                   "Description": description or ""}
        print_json(client(http_addr).put("/v1/acl/binding-rule", body=payload).json())

    run(body)


@rule_app.command("list")
def rule_list(http_addr: HttpAddr = None, fmt: Format = "table",
              method: Annotated[str | None, typer.Option("--method", help="Only this method's rules.")] = None) -> None:
    """List binding rules."""
    check_format(fmt)

    def body() -> None:
        rows = client(http_addr).get("/v1/acl/binding-rules", params={"authmethod": method}).json()
        if fmt == "json":
            return print_json(rows)
        table(None, ["ID", "AuthMethod", "BindType", "BindName", "Selector"],
              [[r["ID"], r["AuthMethod"], r["BindType"], r["BindName"], r.get("Selector", "")] for r in rows])

    run(body)


@rule_app.command("delete")
def rule_delete(http_addr: HttpAddr = None, id_: Annotated[str | None, typer.Option("--id")] = None) -> None:
    """Delete a binding rule."""

    def body() -> None:
        if not id_:
            raise CLIError("give the binding rule's --id")
        client(http_addr).delete(f"/v1/acl/binding-rule/{id_}")
        typer.echo(f"Binding rule {id_!r} deleted successfully")

    run(body)


def login(
    http_addr: HttpAddr = None,
    method: Annotated[str | None, typer.Option("--method", help="The auth method to log in with.")] = None,
    bearer_token_file: Annotated[str | None, typer.Option("--bearer-token-file", help="The JWT to present.")] = None,
    token_sink_file: Annotated[str | None, typer.Option("--token-sink-file", help="Where to write the token.")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="key=value kept with the token.")] = None,
) -> None:
    """Trade a bearer token (JWT) for an ACL token through an auth method."""

    def body() -> None:
        if not method or not bearer_token_file or not token_sink_file:
            raise CLIError("give -method, -bearer-token-file and -token-sink-file")
        bearer = read_value("@" + bearer_token_file).decode().strip()
        pairs = dict(m.split("=", 1) for m in meta or [] if "=" in m)
        token = client(http_addr).call("POST", "/v1/acl/login", body={"AuthMethod": method, "BearerToken": bearer,
                                                                     "Meta": pairs}).json()
        try:
            with open(token_sink_file, "w") as f:
                f.write(token["SecretID"])
        except OSError as e:
            raise CLIError(f"cannot write the token to {token_sink_file}: {e.strerror}") from None

    run(body)


def logout(http_addr: HttpAddr = None) -> None:
    """Delete the login token this command uses (-token, CONSUL_HTTP_TOKEN)."""

    def body() -> None:
        client(http_addr).call("POST", "/v1/acl/logout")

    run(body)


@acl_app.command("set-agent-token")
def set_agent_token(
    kind: Annotated[str, typer.Argument(help="default, agent, agent_recovery, replication, dns, "
                                             "config_file_service_registration")],
    secret: Annotated[str, typer.Argument(help="The token's SecretID (\"\" to clear it).")],
    http_addr: HttpAddr = None,
) -> None:
    """Set one of the agent's own tokens (kept across restarts with acl.enable_token_persistence)."""

    def body() -> None:
        client(http_addr).put(f"/v1/agent/token/{kind}", body={"Token": secret})
        typer.echo(f"ACL token {kind!r} set successfully")

    run(body)


templated_app = typer.Typer(help="List, read and preview templated policies.", no_args_is_help=True)


@templated_app.command("list")
def templated_list(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """The templated policies (builtin/service, builtin/node, builtin/dns)."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/acl/templated-policies").json()
        if fmt == "json":
            return print_json(data)
        table(None, ["Name", "Description"], [[k, v.get("Description", "")] for k, v in data.items()])

    run(body)


@templated_app.command("preview")
def templated_preview(http_addr: HttpAddr = None,
                      name: Annotated[str, typer.Option("--name", help="e.g. builtin/service")] = "",
                      var: Annotated[list[str] | None, typer.Option("--var", help="name:value (repeatable)")] = None
                      ) -> None:
    """The rules a templated policy stands for with these variables."""

    def body() -> None:
        variables = dict(v.split(":", 1) for v in var or [] if ":" in v)
        out = client(http_addr).call("POST", f"/v1/acl/templated-policy/preview/{name}",
                                     body={k.capitalize(): v for k, v in variables.items()}).json()
        typer.echo(out.get("Rules", ""))

    run(body)


def register(app: typer.Typer) -> None:
    acl_app.add_typer(templated_app, name="templated-policy")
    acl_app.add_typer(token_app, name="token")
    acl_app.add_typer(policy_app, name="policy")
    acl_app.add_typer(role_app, name="role")
    acl_app.add_typer(method_app, name="auth-method")
    acl_app.add_typer(rule_app, name="binding-rule")
    app.add_typer(acl_app, name="acl")
    app.command("login")(login)
    app.command("logout")(logout)
