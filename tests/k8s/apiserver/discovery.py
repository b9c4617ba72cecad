"""Discovery documents (`/api`, `/apis`, `/api/v1`, …, `/version`) and the OpenAPI v3 documents kubectl reads.

kubectl asks OpenAPI v3 whether a kind's PATCH takes `fieldValidation` (then the server validates fields,
with `fieldValidation=Strict`) and whether it takes strategic merge patches with a schema. The documents
here describe the operations (paths, parameters, the group-version-kind of each) but no type schemas, and
list no strategic-merge request body: kubectl then computes strategic merge patches from its own built-in
type metadata, the same merge keys the server applies. OpenAPI v2 is not served (kubectl only falls back to
it when v3 is missing).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .store import Kind

VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0-proconsul-test", "gitCommit": "0" * 40,
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
           "compiler": "gc", "platform": "linux/amd64"}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def group_versions(kinds: dict[str, Kind]) -> dict[str, list[Kind]]:
    out: dict[str, list[Kind]] = {}
    for k in kinds.values():
        out.setdefault(k.api_version, []).append(k)
    return out


def api_versions(address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def api_group_list(kinds: dict[str, Kind]) -> dict[str, Any]:
    groups = []
    for gv in sorted(group_versions(kinds)):
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        ref = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [ref], "preferredVersion": ref})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(kinds: dict[str, Kind], group: str) -> dict[str, Any] | None:
    for g in api_group_list(kinds)["groups"]:
        if g["name"] == group:
            return {"kind": "APIGroup", "apiVersion": "v1", **g}
    return None


def resource_list(kinds: dict[str, Kind], gv: str) -> dict[str, Any] | None:
    members = group_versions(kinds).get(gv)
    if members is None:
        return None
    resources = []
    for k in sorted(members, key=lambda k: k.resource):
        entry: dict[str, Any] = {"name": k.resource, "singularName": k.singular, "namespaced": k.namespaced,
                                 "kind": k.kind, "verbs": VERBS if k.resource != "namespaces" else
                                 [v for v in VERBS if v != "deletecollection"],
                                 "storageVersionHash": hashlib.sha256(k.resource.encode()).hexdigest()[:12]}
        if k.short_names:
            entry["shortNames"] = list(k.short_names)
        if k.categories:
            entry["categories"] = list(k.categories)
        resources.append(entry)
        if k.status:
            resources.append({"name": f"{k.resource}/status", "singularName": "", "namespaced": k.namespaced,
                              "kind": k.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _prefix(gv: str) -> str:
    return f"/api/{gv}" if "/" not in gv else f"/apis/{gv}"


def openapi_v3_root(kinds: dict[str, Kind]) -> dict[str, Any]:
    paths = {}
    for gv in group_versions(kinds):
        doc = json.dumps(openapi_v3_doc(kinds, gv), sort_keys=True).encode()
        paths[_prefix(gv)[1:]] = {"serverRelativeURL": f"/openapi/v3{_prefix(gv)}?hash="
                                  f"{hashlib.sha512(doc).hexdigest()[:32].upper()}"}
    return {"paths": paths}


def _param(name: str, where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "schema": {"type": "string", "uniqueItems": True}}


def openapi_v3_doc(kinds: dict[str, Kind], gv: str) -> dict[str, Any]:
    """Operations of one group-version: enough for kubectl's field-validation and patch-type checks."""
    paths: dict[str, Any] = {}
    for k in group_versions(kinds).get(gv, []):
        gvk = {"group": k.group, "version": k.version, "kind": k.kind}
        base = _prefix(gv) + ("/namespaces/{namespace}" if k.namespaced else "") + f"/{k.resource}"
        body = {"content": {t: {"schema": {"type": "object"}} for t in (
            "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")}}
        for path, with_status in ((base + "/{name}", False), (base + "/{name}/status", True)):
            if with_status and not k.status:
                continue
            ext = {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch"}
            params = [_param(p) for p in ("dryRun", "fieldManager", "fieldValidation", "force")]
            paths[path] = {
                "get": {"operationId": f"read{k.kind}", "x-kubernetes-group-version-kind": gvk,
                        "x-kubernetes-action": "get", "responses": {"200": {"description": "OK"}}},
                "put": {"operationId": f"replace{k.kind}", "x-kubernetes-group-version-kind": gvk,
                        "x-kubernetes-action": "put", "parameters": params[:3],
                        "responses": {"200": {"description": "OK"}}},
                "patch": {"operationId": f"patch{k.kind}", **ext, "parameters": params, "requestBody": body,
                          "responses": {"200": {"description": "OK"}}},
                "parameters": [_param("name", "path")] + ([_param("namespace", "path")] if k.namespaced else []),
            }
        paths[base] = {"post": {"operationId": f"create{k.kind}", "x-kubernetes-group-version-kind": gvk,
                                "x-kubernetes-action": "post",
                                "parameters": [_param(p) for p in ("dryRun", "fieldManager", "fieldValidation")],
                                "responses": {"201": {"description": "Created"}}},
                       "get": {"operationId": f"list{k.kind}", "x-kubernetes-group-version-kind": gvk,
                               "x-kubernetes-action": "list", "responses": {"200": {"description": "OK"}}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}
