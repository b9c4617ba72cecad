"""Intentions: validation, Consul's precedence, and the pure decision of who may talk to whom.

Precedence (Consul's table for one namespace; the destination's exactness counts first):
    exact source → exact destination   9
    *            → exact destination   8
    exact source → *                   6
    *            → *                   5
The most specific matching intention decides; with none, the default policy does. An intention
with L7 `Permissions` decides per HTTP request: the first permission that matches decides, and a
request no permission matches is denied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidIntention, InvalidSpiffeID
from .spiffe import parse_service

WILDCARD = "*"
ACTIONS = ("allow", "deny")
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
HEADER_MATCHES = ("Present", "Exact", "Prefix", "Suffix", "Regex")


def precedence(source: str, destination: str) -> int:
    if destination != WILDCARD:
        return 9 if source != WILDCARD else 8
    return 6 if source != WILDCARD else 5


def _name(d: dict[str, Any], field: str) -> str:
    v = d.get(field)
    if not isinstance(v, str) or not v:
        raise InvalidIntention(f"{field} is required and must be a service name or \"*\"")
    if v != WILDCARD and "*" in v:
        raise InvalidIntention(f"{field} {v!r}: a wildcard must be the whole name")
    return v


def _permission(p: Any, i: int) -> dict[str, Any]:
    where = f"Permissions[{i}]"
    if not isinstance(p, dict):
        raise InvalidIntention(f"{where} must be an object")
    action = p.get("Action")
    if action not in ACTIONS:
        raise InvalidIntention(f"{where}.Action must be \"allow\" or \"deny\", not {action!r}")
    http = p.get("HTTP")
    if not isinstance(http, dict) or not http:
        raise InvalidIntention(f"{where}.HTTP is required and must describe the requests it matches")
    paths = [k for k in ("PathExact", "PathPrefix", "PathRegex") if http.get(k)]
    if len(paths) > 1:
        raise InvalidIntention(f"{where}.HTTP may set only one of PathExact, PathPrefix, PathRegex")
    for k in ("PathExact", "PathPrefix"):
        if http.get(k) and not str(http[k]).startswith("/"):
            raise InvalidIntention(f"{where}.HTTP.{k} must start with /")
    if http.get("PathRegex"):
        _regex(http["PathRegex"], f"{where}.HTTP.PathRegex")
    methods = http.get("Methods") or []
    if not isinstance(methods, list) or any(m not in METHODS for m in methods):
        raise InvalidIntention(f"{where}.HTTP.Methods must be a list of HTTP methods ({', '.join(sorted(METHODS))})")
    for j, h in enumerate(http.get("Header") or []):
        hw = f"{where}.HTTP.Header[{j}]"
        if not isinstance(h, dict) or not isinstance(h.get("Name"), str) or not h["Name"]:
            raise InvalidIntention(f"{hw}.Name is required")
        kinds = [k for k in HEADER_MATCHES if h.get(k) not in (None, "", False)]
        if len(kinds) != 1:
            raise InvalidIntention(f"{hw} must set exactly one of {', '.join(HEADER_MATCHES)}")
        if kinds[0] == "Regex":
            _regex(h["Regex"], f"{hw}.Regex")
    return p


def _regex(pattern: Any, where: str) -> re.Pattern[str]:
    try:
        return re.compile(str(pattern))
    except re.error as e:
        raise InvalidIntention(f"{where} is not a valid regular expression: {e}") from None


def validate(d: Any) -> dict[str, Any]:
    """Check an intention (legacy API shape); returns it with Precedence and defaults filled."""
    if not isinstance(d, dict):
        raise InvalidIntention("an intention must be a JSON object")
    out = dict(d)
    src, dst = _name(out, "SourceName"), _name(out, "DestinationName")
    action, perms = out.get("Action") or "", out.get("Permissions") or []
    if action and perms:
        raise InvalidIntention("set either Action or Permissions, not both")
    if not action and not perms:
        raise InvalidIntention("Action is required (\"allow\" or \"deny\") unless Permissions are given")
    if action and action not in ACTIONS:
        raise InvalidIntention(f"Action must be \"allow\" or \"deny\", not {action!r}")
    if perms:
        if not isinstance(perms, list):
            raise InvalidIntention("Permissions must be a list")
        out["Permissions"] = [_permission(p, i) for i, p in enumerate(perms)]
    if out.get("SourceType", "consul") != "consul":
        raise InvalidIntention("SourceType must be \"consul\"")
    meta = out.get("Meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidIntention("Meta must be an object of string values")
    out.update({"SourceName": src, "DestinationName": dst, "SourceNS": "default", "DestinationNS": "default",
                "SourcePartition": "default", "DestinationPartition": "default", "SourceType": "consul",
                "Action": action, "Permissions": out.get("Permissions") or None, "Meta": meta,
                "Description": out.get("Description") or "", "Precedence": precedence(src, dst)})
    return out


# ---------------------------------------------------------------------- decisions
@dataclass(frozen=True, slots=True)
class Request:
    """What L7 permissions look at."""

    path: str
    method: str
    headers: dict[str, str]


def matches(ixn: dict[str, Any], source: str, destination: str) -> bool:
    return (ixn["SourceName"] in (source, WILDCARD)) and (ixn["DestinationName"] in (destination, WILDCARD))


def sort_by_precedence(intentions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest precedence first; ties broken by names so the order is stable."""
    return sorted(intentions, key=lambda i: (-i["Precedence"], i["SourceName"], i["DestinationName"]))


def match(intentions: Iterable[dict[str, Any]], by: str, name: str) -> list[dict[str, Any]]:
    """Consul's /v1/connect/intentions/match: every intention naming `name` (or *) on side `by`."""
    field = {"source": "SourceName", "destination": "DestinationName"}.get(by)
    if field is None:
        raise InvalidIntention(f"by must be \"source\" or \"destination\", not {by!r}")
    return sort_by_precedence(i for i in intentions if i[field] in (name, WILDCARD))


def governing(intentions: Iterable[dict[str, Any]], source: str, destination: str) -> dict[str, Any] | None:
    """The most specific intention matching source → destination, or None."""
    best = None
    for ixn in intentions:
        if matches(ixn, source, destination) and (best is None or ixn["Precedence"] > best["Precedence"]):
            best = ixn
    return best


def _permission_matches(p: dict[str, Any], req: Request) -> bool:
    http = p["HTTP"]
    if http.get("PathExact") and req.path != http["PathExact"]:
        return False
    if http.get("PathPrefix") and not req.path.startswith(http["PathPrefix"]):
        return False
    if http.get("PathRegex") and re.fullmatch(http["PathRegex"], req.path) is None:
        return False
    if http.get("Methods") and req.method.upper() not in http["Methods"]:
        return False
    lower = {k.lower(): v for k, v in req.headers.items()}
    for h in http.get("Header") or []:
        value = lower.get(h["Name"].lower())
        if h.get("Present"):
            ok = value is not None
        elif value is None:
            ok = False
        elif h.get("Exact") is not None and h.get("Exact") != "":
            ok = value == h["Exact"]
        elif h.get("Prefix"):
            ok = value.startswith(h["Prefix"])
        elif h.get("Suffix"):
            ok = value.endswith(h["Suffix"])
        else:
            ok = re.fullmatch(h["Regex"], value) is not None
        if ok == bool(h.get("Invert")):
            return False
    return True


def decide(intentions: Iterable[dict[str, Any]], source: str, destination: str, default_allow: bool,
           request: Request | None = None) -> tuple[bool, str]:
    """(allowed, reason) for a connection (or, with `request`, an HTTP request) source → destination."""
    ixn = governing(intentions, source, destination)
    if ixn is None:
        return default_allow, ("Default behavior: no intention matched, " +
                               ("allow" if default_allow else "deny") + " by default")
    label = f"{ixn['SourceName']} => {ixn['DestinationName']} (precedence {ixn['Precedence']})"
    if not ixn.get("Permissions"):
        return ixn["Action"] == "allow", f"Matched L4 intention: {label}, {ixn['Action']}"
    if request is None:
        return False, f"Matched L7 intention: {label}; its permissions need an HTTP request to decide"
    for i, p in enumerate(ixn["Permissions"]):
        if _permission_matches(p, request):
            return p["Action"] == "allow", f"Matched L7 intention: {label}, permission {i}: {p['Action']}"
    return False, f"Matched L7 intention: {label}; no permission matched the request, deny"


def authorize(intentions: Iterable[dict[str, Any]], target: str, client_cert_uri: str, trust_domain: str,
              default_allow: bool) -> tuple[bool, str]:
    """Consul's /v1/agent/connect/authorize decision for a client certificate's SPIFFE URI."""
    try:
        ident = parse_service(client_cert_uri)
    except InvalidSpiffeID as e:
        return False, f"Client certificate URI is not a service identity: {e}"
    if ident.trust_domain != trust_domain:
        return False, f"Identity from an external trust domain ({ident.trust_domain}) is not allowed"
    return decide(intentions, ident.service, target, default_allow)


# ---------------------------------------------------------------------- config entry conversions
def to_config_entry(destination: str, intentions: list[dict[str, Any]], meta: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """The service-intentions config entry holding every intention for `destination`."""
    sources = []
    for ixn in sort_by_precedence(intentions):
        src = {"Name": ixn["SourceName"], "Precedence": ixn["Precedence"], "Type": "consul",
               "Description": ixn.get("Description") or "", "LegacyID": ixn.get("ID") or "",
               "LegacyMeta": ixn.get("Meta") or {}, "LegacyCreateTime": ixn.get("CreatedAt"),
               "LegacyUpdateTime": ixn.get("UpdatedAt")}
        if ixn.get("Permissions"):
            src["Permissions"] = ixn["Permissions"]
        else:
            src["Action"] = ixn["Action"]
        sources.append(src)
    return {"Kind": "service-intentions", "Name": destination, "Sources": sources, "Meta": meta or {}}


def from_config_entry(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The legacy-API view of a service-intentions entry: one intention per source."""
    out = []
    for src in entry.get("Sources") or []:
        out.append(validate({
            "ID": src.get("LegacyID") or "", "SourceName": src.get("Name"), "DestinationName": entry["Name"],
            "Action": src.get("Action") or "", "Permissions": src.get("Permissions"),
            "Description": src.get("Description") or "", "Meta": src.get("LegacyMeta") or {},
            "CreatedAt": src.get("LegacyCreateTime"), "UpdatedAt": src.get("LegacyUpdateTime"),
            "CreateIndex": entry.get("CreateIndex", 0), "ModifyIndex": entry.get("ModifyIndex", 0)}))
    return out


def validate_config_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Validate a service-intentions config entry (its sources become intentions)."""
    name = entry.get("Name")
    if not isinstance(name, str) or not name:
        raise InvalidIntention("Name (the destination service) is required")
    sources = entry.get("Sources")
    if not isinstance(sources, list):
        raise InvalidIntention("Sources must be a list")
    seen = set()
    for i, src in enumerate(sources):
        if not isinstance(src, dict):
            raise InvalidIntention(f"Sources[{i}] must be an object")
        if src.get("Name") in seen:
            raise InvalidIntention(f"Sources[{i}].Name {src.get('Name')!r} appears twice")
        seen.add(src.get("Name"))
        try:
            fixed = validate({"SourceName": src.get("Name"), "DestinationName": name, "Action": src.get("Action"),
                              "Permissions": src.get("Permissions")})
        except InvalidIntention as e:
            raise InvalidIntention(f"Sources[{i}]: {e}") from None
        src["Precedence"] = fixed["Precedence"]
        src.setdefault("Type", "consul")
    return entry
