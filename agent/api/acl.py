"""/v1/acl/*: bootstrap, tokens, policies, roles, templated policies, auth methods, binding rules, login and
logout; and /v1/agent/token/:type.

Consul's paths, bodies and answers. Reads need `acl:read`, writes `acl:write`; a token may always read
itself (`/v1/acl/token/self`). With ACLs off every endpoint answers 401 "ACL support disabled".
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from proconsul.agent.acl import auth, jwt, objects
from proconsul.agent.acl.builtin import (
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    TEMPLATED_POLICIES,
    templated_policy_rules_text,
)
from proconsul.agent.acl.errors import ACLDisabled, ACLNotFound, InvalidACLObject, PermissionDenied
from proconsul.agent.acl.state import METHODS, POLICIES, ROLES, RULES, TOKENS, new_id, rfc3339
from proconsul.agent.acl.tokens import TYPE_ALIASES, TYPES
from proconsul.agent.api.authz import authorizer, effective_token, request_token
from proconsul.agent.api.body import json_body
from proconsul.agent.api.errors import BadRequest
from proconsul.agent.api.keys import AGENT, KEYSETS
from proconsul.agent.api.responses import json_response
from proconsul.agent.config.duration import DurationError, parse_duration

routes = web.RouteTableDef()


async def _require(request: web.Request, access: str) -> Any:
    agent = request.app[AGENT]
    if agent.acl is None:
        raise ACLDisabled()
    authz = await authorizer(request)
    authz.require_singleton("acl", access)
    return agent


def _lookup(rows: dict[str, dict[str, Any]]) -> objects.Lookup:
    by_name = {r["Name"]: r for r in rows.values()}

    def find(rid: str, name: str) -> dict[str, Any] | None:
        return rows.get(rid) if rid else by_name.get(name)
    return find


def _changed(agent: Any) -> None:
    if agent.acl is not None:
        agent.acl.invalidate()


async def _delete(request: web.Request, agent: Any, table: str, key: str) -> web.Response:
    """Delete one ACL object; the resolver's cache forgets what it derived from it."""
    ok = await agent.acl_state.delete(table, key)
    _changed(agent)
    return json_response(request, ok)


# ---------------------------------------------------------------------- replication
@routes.get("/v1/acl/replication")
async def replication(request: web.Request) -> web.Response:
    """Consul's ACL replication status, as the leader sees it (open to every caller, as in Consul)."""
    return json_response(request, request.app[AGENT].cluster.acl_replication_status())


# ---------------------------------------------------------------------- bootstrap
@routes.put("/v1/acl/bootstrap")
async def bootstrap(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if agent.acl is None:
        raise ACLDisabled()
    body = await json_body(request, required=False) or {}
    secret = ""
    if isinstance(body, dict):
        secret = str(body.get("BootstrapSecret") or "")
        if secret and not objects.UUID_RE.match(secret):
            raise BadRequest("BootstrapSecret must be a UUID")
    token = await agent.acl_state.bootstrap(secret)
    _changed(agent)
    policies = await agent.acl_state.by_id(POLICIES)
    return json_response(request, objects.token_json(token, policies, {}))


# ---------------------------------------------------------------------- tokens
async def _token_context(agent: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    st = agent.acl_state
    return await st.by_id(TOKENS), await st.by_id(POLICIES), await st.by_id(ROLES)


async def _write_token(request: web.Request, existing: dict[str, Any] | None, body: Any) -> web.Response:
    agent = request.app[AGENT]
    tokens, policies, roles = await _token_context(agent)
    secrets = {t["SecretID"] for t in tokens.values()}
    now = time.time()

    def duration(text: str) -> float:
        try:
            return parse_duration(text)
        except DurationError as e:
            raise ValueError(str(e)) from None

    row = objects.token_row(body, new_accessor=new_id(), new_secret=new_id(), now_rfc3339=rfc3339(now), now=now,
                            existing=existing, policies=_lookup(policies), roles=_lookup(roles),
                            secret_taken=secrets.__contains__, accessor_taken=tokens.__contains__,
                            parse_duration=duration, rfc3339=rfc3339)
    await agent.acl_state.put(TOKENS, row["AccessorID"], row, cas=None if existing else 0)
    _changed(agent)
    _, stored = await agent.acl_state.get(TOKENS, row["AccessorID"])
    return json_response(request, objects.token_json(stored or row, policies, roles))


@routes.put("/v1/acl/token")
async def token_create(request: web.Request) -> web.Response:
    await _require(request, "write")
    return await _write_token(request, None, await json_body(request))


@routes.get("/v1/acl/token/self")
async def token_self(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if agent.acl is None:
        raise ACLDisabled()
    _, token = await agent.acl.resolve_with_token(effective_token(request))
    _, policies, roles = await _token_context(agent)
    return json_response(request, objects.token_json(token, policies, roles))


async def _row(agent: Any, table: str, key: str) -> dict[str, Any]:
    """One ACL object (token, auth method, binding rule …) by its key; ACLNotFound when there is none."""
    _, row = await agent.acl_state.get(table, key)
    if row is None:
        raise ACLNotFound()
    return row


@routes.get("/v1/acl/token/{id}")
async def token_read(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    row = await _row(agent, TOKENS, request.match_info["id"])
    _, policies, roles = await _token_context(agent)
    authz = await authorizer(request)
    return json_response(request, objects.token_json(row, policies, roles,
                                                      show_secret=authz.singleton_allowed("acl", "write")))


@routes.put("/v1/acl/token/{id}")
async def token_update(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    return await _write_token(request, await _row(agent, TOKENS, request.match_info["id"]), await json_body(request))


@routes.put("/v1/acl/token/{id}/clone")
async def token_clone(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    src = await _row(agent, TOKENS, request.match_info["id"])
    if src["AccessorID"] == ANONYMOUS_ACCESSOR:
        raise InvalidACLObject("Cannot clone the anonymous token")
    body = await json_body(request, required=False) or {}
    description = body.get("Description") if isinstance(body, dict) else None
    clone = {k: src.get(k) for k in ("Policies", "Roles", "ServiceIdentities", "NodeIdentities",
                                     "TemplatedPolicies", "Local")}
    clone["Description"] = description if description is not None else src.get("Description", "")
    return await _write_token(request, None, clone)


@routes.delete("/v1/acl/token/{id}")
async def token_delete(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    accessor = request.match_info["id"]
    if accessor == ANONYMOUS_ACCESSOR:
        raise PermissionDenied(detail="Delete operation not permitted on the anonymous token")
    _, me = await agent.acl.resolve_with_token(effective_token(request))
    if me.get("AccessorID") == accessor:
        raise InvalidACLObject("Deletion of the request's authorization token is not permitted")
    return await _delete(request, agent, TOKENS, accessor)


@routes.get("/v1/acl/tokens")
async def token_list(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    idx, rows = await agent.acl_state.rows(TOKENS)
    _, policies, roles = await _token_context(agent)
    show = (await authorizer(request)).singleton_allowed("acl", "write")
    q = request.query
    if q.get("policy"):
        rows = [r for r in rows if any(p["ID"] == q["policy"] for p in r.get("Policies") or [])]
    if q.get("role"):
        rows = [r for r in rows if any(x["ID"] == q["role"] for x in r.get("Roles") or [])]
    if q.get("authmethod"):
        rows = [r for r in rows if r.get("AuthMethod") == q["authmethod"]]
    rows = sorted(rows, key=lambda r: r.get("CreateIndex", 0))
    out = [dict(objects.token_json(r, policies, roles, show_secret=show), Legacy=False) for r in rows]
    return json_response(request, out, index=idx)


# ---------------------------------------------------------------------- policies
async def _write_policy(request: web.Request, existing: dict[str, Any] | None) -> web.Response:
    agent = request.app[AGENT]
    body = await json_body(request)
    policies = await agent.acl_state.by_id(POLICIES)
    own_id = existing["ID"] if existing else ""
    row = objects.policy_row(body, new_id=new_id(), existing=existing, name_taken=lambda n: any(
        p["Name"] == n and p["ID"] != own_id for p in policies.values()))
    await agent.acl_state.put(POLICIES, row["ID"], row, cas=None if existing else 0)
    _changed(agent)
    _, stored = await agent.acl_state.get(POLICIES, row["ID"])
    return json_response(request, objects.policy_json(stored or row))


@routes.put("/v1/acl/policy")
async def policy_create(request: web.Request) -> web.Response:
    await _require(request, "write")
    return await _write_policy(request, None)


async def _find(agent: Any, table: str, rid: str = "", name: str = "") -> dict[str, Any]:
    """A policy or role by ID, or by name; ACLNotFound (403 "ACL not found", as Consul) when there is none."""
    if rid:
        _, row = await agent.acl_state.get(table, rid)
    else:
        row = next((r for r in (await agent.acl_state.rows(table))[1] if r["Name"] == name), None)
    if row is None:
        raise ACLNotFound()
    return row


async def _policy(agent: Any, pid: str = "", name: str = "") -> dict[str, Any]:
    return await _find(agent, POLICIES, pid, name)


@routes.get("/v1/acl/policy/name/{name}")
async def policy_read_by_name(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    return json_response(request, objects.policy_json(await _policy(agent, name=request.match_info["name"])))


@routes.get("/v1/acl/policy/{id}")
async def policy_read(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    return json_response(request, objects.policy_json(await _policy(agent, request.match_info["id"])))


@routes.put("/v1/acl/policy/{id}")
async def policy_update(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    return await _write_policy(request, await _policy(agent, request.match_info["id"]))


@routes.delete("/v1/acl/policy/{id}")
async def policy_delete(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    pid = request.match_info["id"]
    if pid == GLOBAL_MANAGEMENT_ID:
        raise InvalidACLObject("Delete operation not permitted on the builtin global-management policy")
    return await _delete(request, agent, POLICIES, pid)


@routes.get("/v1/acl/policies")
async def policy_list(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    idx, rows = await agent.acl_state.rows(POLICIES)
    rows = sorted(rows, key=lambda r: r.get("CreateIndex", 0))
    return json_response(request, [objects.policy_list_stub(r) for r in rows], index=idx)


# ---------------------------------------------------------------------- roles
async def _write_role(request: web.Request, existing: dict[str, Any] | None) -> web.Response:
    agent = request.app[AGENT]
    body = await json_body(request)
    policies, roles = await agent.acl_state.by_id(POLICIES), await agent.acl_state.by_id(ROLES)
    own_id = existing["ID"] if existing else ""
    row = objects.role_row(body, new_id=new_id(), existing=existing, policies=_lookup(policies),
                           name_taken=lambda n: any(r["Name"] == n and r["ID"] != own_id for r in roles.values()))
    await agent.acl_state.put(ROLES, row["ID"], row, cas=None if existing else 0)
    _changed(agent)
    _, stored = await agent.acl_state.get(ROLES, row["ID"])
    return json_response(request, objects.role_json(stored or row, policies))


async def _role(agent: Any, rid: str = "", name: str = "") -> dict[str, Any]:
    return await _find(agent, ROLES, rid, name)


@routes.put("/v1/acl/role")
async def role_create(request: web.Request) -> web.Response:
    await _require(request, "write")
    return await _write_role(request, None)


@routes.get("/v1/acl/role/name/{name}")
async def role_read_by_name(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    row = await _role(agent, name=request.match_info["name"])
    return json_response(request, objects.role_json(row, await agent.acl_state.by_id(POLICIES)))


@routes.get("/v1/acl/role/{id}")
async def role_read(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    row = await _role(agent, request.match_info["id"])
    return json_response(request, objects.role_json(row, await agent.acl_state.by_id(POLICIES)))


@routes.put("/v1/acl/role/{id}")
async def role_update(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    return await _write_role(request, await _role(agent, request.match_info["id"]))


@routes.delete("/v1/acl/role/{id}")
async def role_delete(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    return await _delete(request, agent, ROLES, request.match_info["id"])


@routes.get("/v1/acl/roles")
async def role_list(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    idx, rows = await agent.acl_state.rows(ROLES)
    policies = await agent.acl_state.by_id(POLICIES)
    if request.query.get("policy"):
        rows = [r for r in rows if any(p["ID"] == request.query["policy"] for p in r.get("Policies") or [])]
    rows = sorted(rows, key=lambda r: r.get("CreateIndex", 0))
    return json_response(request, [objects.role_json(r, policies) for r in rows], index=idx)


# ---------------------------------------------------------------------- templated policies
def _templated(name: str) -> dict[str, Any]:
    variables, description = TEMPLATED_POLICIES[name]
    schema = ""
    if variables:
        schema = ('{\n  "type": "object",\n  "properties": {\n    "name": { "type": "string", "$ref": '
                  '"#/definitions/min-length-one" }\n  },\n  "required": ["name"]\n}')
    return {"TemplateName": name, "Schema": schema, "Template": templated_policy_rules_text(name, {"name": "${name.Name}"}
                                                                                             if variables else None),
            "Description": description}


@routes.get("/v1/acl/templated-policies")
async def templated_list(request: web.Request) -> web.Response:
    await _require(request, "read")
    return json_response(request, {name: _templated(name) for name in TEMPLATED_POLICIES})


@routes.get("/v1/acl/templated-policy/name/{name:.+}")
async def templated_read(request: web.Request) -> web.Response:
    await _require(request, "read")
    name = request.match_info["name"]
    if name not in TEMPLATED_POLICIES:
        raise ACLNotFound()
    return json_response(request, _templated(name))


@routes.post("/v1/acl/templated-policy/preview/{name:.+}")
async def templated_preview(request: web.Request) -> web.Response:
    await _require(request, "read")
    name = request.match_info["name"]
    if name not in TEMPLATED_POLICIES:
        raise ACLNotFound()
    body = await json_body(request, required=False) or {}
    variables = {str(k).lower(): v for k, v in (body.get("Name") and {"name": body["Name"]} or body).items()} \
        if isinstance(body, dict) else {}
    if TEMPLATED_POLICIES[name][0] and not variables.get("name"):
        raise BadRequest(f"{name} needs a Name variable")
    rules = templated_policy_rules_text(name, variables)
    return json_response(request, {"ID": "", "Name": f"{name.replace('/', '-')}-preview",
                                   "Description": "synthetic policy generated from templated policy: " + name,
                                   "Rules": rules})


# ---------------------------------------------------------------------- the agent's own tokens
@routes.put("/v1/agent/token/{type}")
async def agent_token(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if agent.acl is None:
        raise ACLDisabled()
    kind = TYPE_ALIASES.get(request.match_info["type"], request.match_info["type"])
    if kind not in TYPES:
        raise web.HTTPNotFound(text=f"Token {request.match_info['type']!r} is unknown\n")
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("Token", body.get("token")), str):
        raise BadRequest('Request decode failed: the body must be {"Token": "<secret>"}')
    agent.set_agent_token(kind, body.get("Token", body.get("token")))
    return web.Response(status=200)


# ---------------------------------------------------------------------- auth methods and binding rules
def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as e:
        raise ValueError(str(e)) from None


@routes.put("/v1/acl/auth-method")
async def method_create(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    row = auth.auth_method_row(await json_body(request), None, _duration)
    if not await agent.acl_state.put(METHODS, row["Name"], row, cas=0):
        raise InvalidACLObject(f"Invalid Auth Method: an auth method named {row['Name']!r} already exists")
    _, stored = await agent.acl_state.get(METHODS, row["Name"])
    return json_response(request, stored or row)


@routes.get("/v1/acl/auth-method/{name}")
async def method_read(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    return json_response(request, await _row(agent, METHODS, request.match_info["name"]))


@routes.put("/v1/acl/auth-method/{name}")
async def method_update(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    existing = await _row(agent, METHODS, request.match_info["name"])
    body = await json_body(request)
    if isinstance(body, dict):
        body = {**body, "Name": existing["Name"]}
    row = auth.auth_method_row(body, existing, _duration)
    await agent.acl_state.put(METHODS, row["Name"], row)
    _, stored = await agent.acl_state.get(METHODS, row["Name"])
    return json_response(request, stored or row)


@routes.delete("/v1/acl/auth-method/{name}")
async def method_delete(request: web.Request) -> web.Response:
    """Deleting a method deletes its binding rules and the tokens its logins created (as Consul does)."""
    agent = await _require(request, "write")
    name = request.match_info["name"]
    st = agent.acl_state
    for rule in (await st.rows(RULES))[1]:
        if rule["AuthMethod"] == name:
            await st.delete(RULES, rule["ID"])
    for token in (await st.rows(TOKENS))[1]:
        if token.get("AuthMethod") == name:
            await st.delete(TOKENS, token["AccessorID"])
    ok = await st.delete(METHODS, name)
    _changed(agent)
    return json_response(request, ok)


@routes.get("/v1/acl/auth-methods")
async def method_list(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    idx, rows = await agent.acl_state.rows(METHODS)
    rows = sorted(rows, key=lambda r: r["Name"])
    return json_response(request, [{k: v for k, v in r.items() if k != "Config"} for r in rows], index=idx)


async def _write_rule(request: web.Request, existing: dict[str, Any] | None) -> web.Response:
    agent = request.app[AGENT]
    methods = await agent.acl_state.by_id(METHODS)
    row = auth.binding_rule_row(await json_body(request), new_id=new_id(), existing=existing,
                                method_exists=methods.__contains__)
    await agent.acl_state.put(RULES, row["ID"], row, cas=None if existing else 0)
    _, stored = await agent.acl_state.get(RULES, row["ID"])
    return json_response(request, stored or row)


@routes.put("/v1/acl/binding-rule")
async def rule_create(request: web.Request) -> web.Response:
    await _require(request, "write")
    return await _write_rule(request, None)


@routes.get("/v1/acl/binding-rule/{id}")
async def rule_read(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    return json_response(request, await _row(agent, RULES, request.match_info["id"]))


@routes.put("/v1/acl/binding-rule/{id}")
async def rule_update(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    return await _write_rule(request, await _row(agent, RULES, request.match_info["id"]))


@routes.delete("/v1/acl/binding-rule/{id}")
async def rule_delete(request: web.Request) -> web.Response:
    agent = await _require(request, "write")
    return json_response(request, await agent.acl_state.delete(RULES, request.match_info["id"]))


@routes.get("/v1/acl/binding-rules")
async def rule_list(request: web.Request) -> web.Response:
    agent = await _require(request, "read")
    idx, rows = await agent.acl_state.rows(RULES)
    method = request.query.get("authmethod")
    rows = sorted((r for r in rows if not method or r["AuthMethod"] == method), key=lambda r: r.get("CreateIndex", 0))
    return json_response(request, rows, index=idx)


# ---------------------------------------------------------------------- login and logout
@routes.post("/v1/acl/login")
async def login(request: web.Request) -> web.Response:
    """Trade a bearer token (a JWT) for an ACL token, through an auth method's binding rules."""
    agent = request.app[AGENT]
    if agent.acl is None:
        raise ACLDisabled()
    body = objects.fold(await json_body(request), ("AuthMethod", "BearerToken", "Meta", "Namespace", "Partition"),
                        "Login")
    name, bearer = body.get("AuthMethod"), body.get("BearerToken")
    if not isinstance(name, str) or not name:
        raise BadRequest("Login.AuthMethod is required")
    if not isinstance(bearer, str) or not bearer:
        raise BadRequest("Login.BearerToken is required")
    method = await _row(agent, METHODS, name)
    cfg = method["Config"]
    try:
        keys = await request.app[KEYSETS].keys_for(cfg, bearer)
        claims = jwt.verify(bearer, keys, now=time.time(),
                            algorithms=cfg.get("JWTSupportedAlgs"), bound_issuer=cfg.get("BoundIssuer") or "",
                            bound_audiences=cfg.get("BoundAudiences"),
                            leeway=_seconds(cfg.get("ClockSkewLeeway"), 60.0),
                            expiration_leeway=_seconds(cfg.get("ExpirationLeeway"), 150.0),
                            not_before_leeway=_seconds(cfg.get("NotBeforeLeeway"), 150.0))
    except jwt.JWTError as e:
        raise PermissionDenied(detail=str(e)) from None
    view = auth.project(claims, method)
    rules = [r for r in (await agent.acl_state.rows(RULES))[1] if r["AuthMethod"] == name]
    bound = auth.bind(rules, view, agent.config.datacenter)
    policies, roles = await agent.acl_state.by_id(POLICIES), await agent.acl_state.by_id(ROLES)
    policy_names = {p["Name"] for p in policies.values()}
    role_names = {r["Name"] for r in roles.values()}
    bound["Policies"] = [p for p in bound["Policies"] if p["Name"] in policy_names]  # missing ones bind nothing
    bound["Roles"] = [r for r in bound["Roles"] if r["Name"] in role_names]
    if not any(bound.values()):
        raise PermissionDenied(detail="no binding rule of auth method "
                                      f"{name!r} matches this login")
    meta = body.get("Meta") or {}
    token_body: dict[str, Any] = {"Description": f"token created via login: {json.dumps(meta)}" if meta else
                                  "token created via login", **bound, "Local": method["TokenLocality"] == "local"}
    if method.get("MaxTokenTTL"):
        token_body["ExpirationTTL"] = method["MaxTokenTTL"]
    now = time.time()
    row = objects.token_row(token_body, new_accessor=new_id(), new_secret=new_id(), now_rfc3339=rfc3339(now),
                            now=now, existing=None, policies=_lookup(policies), roles=_lookup(roles),
                            secret_taken=lambda s: False, accessor_taken=lambda a: False, parse_duration=_duration,
                            rfc3339=rfc3339)
    row["AuthMethod"] = name
    await agent.acl_state.put(TOKENS, row["AccessorID"], row, cas=0)
    return json_response(request, objects.token_json(row, policies, roles))


def _seconds(value: Any, default: float) -> float:
    if value in (None, ""):
        return default
    if isinstance(value, int | float):
        return float(value) / 1e9 if value > 1e6 else float(value)
    return _duration(str(value))


@routes.post("/v1/acl/logout")
async def logout(request: web.Request) -> web.Response:
    """Delete the login token the request carries (only tokens made by login may log out)."""
    agent = request.app[AGENT]
    if agent.acl is None:
        raise ACLDisabled()
    token = request_token(request)
    if not token:
        raise ACLNotFound()
    _, row = await agent.acl.resolve_with_token(token)
    if not row.get("AuthMethod"):
        raise PermissionDenied(detail="only tokens created by login can log out")
    await agent.acl_state.delete(TOKENS, row["AccessorID"])
    _changed(agent)
    return json_response(request, True)
