"""Auth methods and binding rules (Consul's `jwt` type): a verified bearer token's claims become
variables, binding rules whose selector matches them say what the login token gets. Pure."""

from __future__ import annotations

import re
from typing import Any

from proconsul.agent.acl.errors import InvalidACLObject
from proconsul.agent.acl.jwt import ALGORITHMS, load_public_keys
from proconsul.agent.acl.objects import NAME_RE, fold
from proconsul.catalog.filter import FilterError, compile_filter

METHOD_FIELDS = ("Name", "Type", "DisplayName", "Description", "MaxTokenTTL", "TokenLocality", "TokenNameFormat", "Config",
                 "Namespace", "Partition", "CreateIndex", "ModifyIndex")
RULE_FIELDS = ("ID", "Description", "AuthMethod", "Selector", "BindType", "BindName", "BindVars", "Namespace",
               "Partition", "CreateIndex", "ModifyIndex")
BIND_TYPES = ("service", "node", "role", "policy", "templated-policy")
KEY_SOURCES = ("JWTValidationPubKeys", "JWKSURL", "OIDCDiscoveryURL")
JWT_CONFIG_KEYS = (*KEY_SOURCES, "JWKSCACert", "OIDCDiscoveryCACert", "BoundIssuer", "BoundAudiences",
                   "ClaimMappings", "ListClaimMappings", "JWTSupportedAlgs", "ClockSkewLeeway", "ExpirationLeeway",
                   "NotBeforeLeeway")
_VAR = re.compile(r"\$\{([^}]+)\}")


def auth_method_row(body: Any, existing: dict[str, Any] | None, parse_duration: Any) -> dict[str, Any]:
    m = fold(body, METHOD_FIELDS, "AuthMethod")
    name = m.get("Name") or (existing or {}).get("Name") or ""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidACLObject("Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' "
                               "are allowed")
    kind = m.get("Type") or (existing or {}).get("Type")
    if kind != "jwt":
        raise InvalidACLObject(f"Invalid Auth Method: Type {kind!r} is not supported here (only \"jwt\")")
    if existing is not None and existing.get("Type") != kind:
        raise InvalidACLObject("Invalid Auth Method: the Type of an existing method cannot change")
    config = m.get("Config") or {}
    if not isinstance(config, dict):
        raise InvalidACLObject("Invalid Auth Method: Config must be an object")
    known = {k.lower(): k for k in JWT_CONFIG_KEYS}
    cfg: dict[str, Any] = {}
    for k, v in config.items():
        key = known.get(str(k).lower())
        if key is None:
            raise InvalidACLObject(f"Invalid Auth Method: Config.{k} is not supported (the jwt type's keys: "
                                   f"{', '.join(JWT_CONFIG_KEYS)})")
        cfg[key] = v
    _key_source(cfg)
    algs = cfg.get("JWTSupportedAlgs") or ["RS256"]
    if not isinstance(algs, list) or any(a not in ALGORITHMS for a in algs):
        raise InvalidACLObject(f"Invalid Auth Method: Config.JWTSupportedAlgs must be among {', '.join(ALGORITHMS)}")
    for key in ("ClaimMappings", "ListClaimMappings"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise InvalidACLObject(f"Invalid Auth Method: Config.{key} must map claims to variable names")
    locality = m.get("TokenLocality") or "local"
    if locality not in ("local", "global"):
        raise InvalidACLObject("Invalid Auth Method: TokenLocality must be \"local\" or \"global\"")
    ttl = m.get("MaxTokenTTL") or ""
    if ttl:
        try:
            parse_duration(str(ttl))
        except ValueError:
            raise InvalidACLObject(f"Invalid Auth Method: MaxTokenTTL {ttl!r} is not a duration") from None
    return {"Name": name, "Type": kind, "DisplayName": str(m.get("DisplayName") or ""),
            "Description": str(m.get("Description") or ""), "MaxTokenTTL": str(ttl), "TokenLocality": locality,
            "Config": cfg}


def _key_source(cfg: dict[str, Any]) -> None:
    """Exactly one of the key sources (Consul's rule), each well formed; a CA certificate only with its URL."""
    given = [k for k in KEY_SOURCES if cfg.get(k)]
    if len(given) != 1:
        raise InvalidACLObject("Invalid Auth Method: exactly one of Config.JWTValidationPubKeys, Config.JWKSURL or "
                               f"Config.OIDCDiscoveryURL must be set (given: {', '.join(given) or 'none'})")
    for ca, url in (("JWKSCACert", "JWKSURL"), ("OIDCDiscoveryCACert", "OIDCDiscoveryURL")):
        if cfg.get(ca) and not cfg.get(url):
            raise InvalidACLObject(f"Invalid Auth Method: Config.{ca} is only for Config.{url}")
        if cfg.get(ca):
            try:
                load_certificates(cfg[ca])
            except ValueError as e:
                raise InvalidACLObject(f"Invalid Auth Method: Config.{ca} is not a PEM CA certificate: {e}") from None
    if given[0] == "JWTValidationPubKeys":
        pems = cfg["JWTValidationPubKeys"]
        if not isinstance(pems, list):
            raise InvalidACLObject("Invalid Auth Method: Config.JWTValidationPubKeys must list PEM keys")
        try:
            load_public_keys(pems)
        except Exception as e:
            raise InvalidACLObject(f"Invalid Auth Method: {e}") from None
        return
    url = cfg[given[0]]
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) < 10:
        raise InvalidACLObject(f"Invalid Auth Method: Config.{given[0]} must be an http(s) URL")


def load_certificates(pem: Any) -> list[Any]:
    """PEM CA certificates (one or more) → certificate objects; ValueError when there is none or one is bad."""
    from cryptography import x509

    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise ValueError("no PEM certificate")
    return x509.load_pem_x509_certificates(pem.encode())


def binding_rule_row(body: Any, *, new_id: str, existing: dict[str, Any] | None, method_exists: Any
                     ) -> dict[str, Any]:
    r = fold(body, RULE_FIELDS, "BindingRule")
    method = r.get("AuthMethod") or (existing or {}).get("AuthMethod") or ""
    if not method or not method_exists(method):
        raise InvalidACLObject(f"Invalid Binding Rule: no such auth method {method!r}")
    bind_type = r.get("BindType")
    if bind_type not in BIND_TYPES:
        raise InvalidACLObject(f"Invalid Binding Rule: BindType must be one of {', '.join(BIND_TYPES)}")
    bind_name = r.get("BindName")
    if not isinstance(bind_name, str) or not bind_name:
        raise InvalidACLObject("Invalid Binding Rule: BindName is required")
    selector = r.get("Selector") or ""
    if selector:
        try:
            compile_filter(selector)
        except FilterError as e:
            raise InvalidACLObject(f"Invalid Binding Rule: Selector is invalid: {e}") from None
    return {"ID": existing["ID"] if existing else new_id, "Description": str(r.get("Description") or ""),
            "AuthMethod": method, "Selector": selector, "BindType": bind_type, "BindName": bind_name,
            **({"BindVars": r["BindVars"]} if r.get("BindVars") else {})}


def project(claims: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """Claims → the selector's view: `value.<var>` for ClaimMappings, `list.<var>` for ListClaimMappings."""
    cfg = method.get("Config") or {}
    value = {var: _claim(claims, claim) for claim, var in (cfg.get("ClaimMappings") or {}).items()}
    lists = {}
    for claim, var in (cfg.get("ListClaimMappings") or {}).items():
        v = _claim(claims, claim)
        lists[var] = [str(x) for x in v] if isinstance(v, list) else ([] if v is None else [str(v)])
    return {"value": {k: "" if v is None else str(v) for k, v in value.items()}, "list": lists}


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by a JSON pointer (`/groups/0`) as Consul allows."""
    if not path.startswith("/"):
        return claims.get(path)
    cur: Any = claims
    for part in path.strip("/").split("/"):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def _interpolate(template: str, view: dict[str, Any]) -> str:
    def one(m: re.Match[str]) -> str:
        scope, _, var = m.group(1).strip().partition(".")
        value = view.get(scope, {}).get(var)
        if value is None or isinstance(value, list):
            raise InvalidACLObject(f"cannot bind: ${{{m.group(1)}}} has no value for this login")
        return str(value)
    return _VAR.sub(one, template)


def bind(rules: list[dict[str, Any]], view: dict[str, Any], datacenter: str) -> dict[str, list[Any]]:
    """What the matching binding rules grant: identities, role and policy names, templated policies."""
    out: dict[str, list[Any]] = {"ServiceIdentities": [], "NodeIdentities": [], "Roles": [], "Policies": [],
                                 "TemplatedPolicies": []}
    for rule in rules:
        selector = rule.get("Selector") or ""
        if selector and not compile_filter(selector)(view):
            continue
        name = _interpolate(rule["BindName"], view)
        kind = rule["BindType"]
        if kind == "service":
            out["ServiceIdentities"].append({"ServiceName": name})
        elif kind == "node":
            out["NodeIdentities"].append({"NodeName": name, "Datacenter": datacenter})
        elif kind == "role":
            out["Roles"].append({"Name": name})
        elif kind == "policy":
            out["Policies"].append({"Name": name})
        else:
            variables = {k: _interpolate(str(v), view) for k, v in (rule.get("BindVars") or {}).items()}
            out["TemplatedPolicies"].append({"TemplateName": name, "TemplateVariables": variables})
    return out
