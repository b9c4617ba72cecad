"""The web UI: its static files under `ui_config.content_path` (default `/ui/`), `/` redirecting there as
Consul does, and the `/v1/internal/ui/*` reads that give a page in one call what the public API would
need thousands of calls for (services with health summaries, nodes with their checks, a service's topology).

The UI itself (`proconsul.ui`, in the browser) uses only HTTP: these handlers and the public `/v1` API.
"""

from __future__ import annotations

import gzip
import re
from collections import OrderedDict
from typing import Any

import hcl2
import orjson
from aiohttp import web

from proconsul.agent.acl.filters import needs_filter
from proconsul.agent.api.authz import authorizer
from proconsul.agent.api.catalog import run_query
from proconsul.agent.api.connect import _connect
from proconsul.agent.api.errors import BadRequest, NotFoundHTTP, TooLarge
from proconsul.agent.api.keys import AGENT
from proconsul.agent.api.params import blocking_params, check_common, consistency_mode
from proconsul.agent.api.responses import consul_headers, dumps
from proconsul.agent.api.ui_metrics import attach as attach_metrics
from proconsul.agent.api.ui_metrics import service_links
from proconsul.connect import intentions as ixns
from proconsul.ui.assets import Asset, Bundle

GZIP_MIN = 1024  # API bodies at least this big go gzipped to browsers that accept it
GZIP_CACHE = 16  # gzipped bodies kept, keyed by route, reused while the encoded body is the same object
MAX_VALIDATE = 512 << 10
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

api = web.RouteTableDef()


# ---------------------------------------------------------------------- compressed JSON for the UI
class GzipCache:
    """The last gzipped copy of each route's encoded body: the backend hands back the very same bytes
    object while the answer is unchanged, so 20 open tabs cost one compression per change."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()

    def get(self, key: str, body: bytes) -> bytes:
        hit = self._entries.get(key)
        if hit is not None and hit[0] is body:
            self._entries.move_to_end(key)
            return hit[1]
        gz = gzip.compress(body, 6, mtime=0)
        self._entries[key] = (body, gz)
        if len(self._entries) > GZIP_CACHE:
            self._entries.popitem(last=False)
        return gz


def _accepts_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


def _json(request: web.Request, body: bytes, index: int | None, key: str | None = None) -> web.Response:
    headers = consul_headers(request, index)
    headers["Vary"] = "Accept-Encoding"
    if len(body) >= GZIP_MIN and _accepts_gzip(request):
        cache: GzipCache = request.app[AGENT].ui_gzip
        gz = cache.get(key, body) if key else gzip.compress(body, 6, mtime=0)
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=gz, content_type="application/json", headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def _query(request: web.Request, name: str, args: dict[str, Any]) -> tuple[int, bytes]:
    """Run a named read (blocking when asked) and return its index and encoded body."""
    check_common(request)
    b = blocking_params(request)
    backend = request.app[AGENT].backend
    mode = consistency_mode(request)
    if hasattr(backend, "query_encoded"):
        idx, _, body = await backend.query_encoded(name, args, dumps, b.index, b.wait, mode)
        return idx, body
    idx, result = await backend.query(name, args, b.index, b.wait, mode)
    return idx, dumps(result)


# ---------------------------------------------------------------------- /v1/internal/ui/*
async def _listing(request: web.Request, query: str) -> web.Response:
    """A whole-catalog listing: gzipped once per change for every open tab (`?filter`/`?pretty`: as usual)."""
    if request.query.get("filter") or "pretty" in request.query or \
            needs_filter(query, await authorizer(request)):
        return await run_query(request, query, {})
    idx, body = await _query(request, query, {})
    return _json(request, body, idx, query)


@api.get("/v1/internal/ui/services")
async def services(request: web.Request) -> web.Response:
    """Every service with Consul's summary: kind, tags, nodes, instance count, check counts."""
    return await _listing(request, "ui.services")


@api.get("/v1/internal/ui/nodes")
async def nodes(request: web.Request) -> web.Response:
    """Every node with its services and checks (Consul's NodeDump)."""
    return await _listing(request, "ui.nodes")


@api.get("/v1/internal/ui/node/{node}")
async def node(request: web.Request) -> web.Response:
    name = request.match_info["node"]
    idx, body = await _query(request, "ui.node", {"node": name})
    if body == b"null":
        raise NotFoundHTTP(f"Node not found: {name!r}")
    return _json(request, body, idx)


def _link(ixn_list: list[dict[str, Any]], src: str, dst: str, default_allow: bool, source: str,
          summary: dict[str, Any] | None, protocol: str, name: str) -> dict[str, Any]:
    """One edge of the topology (`name` is the service at its other end) with the decision the agent
    enforces for it (connect/intentions)."""
    allowed, reason = ixns.decide(ixn_list, src, dst, default_allow)
    gov = ixns.governing(ixn_list, src, dst)
    out = dict(summary or {"Name": name, "Kind": "", "InstanceCount": 0, "ChecksPassing": 0, "ChecksWarning": 0,
                           "ChecksCritical": 0, "Tags": [], "Nodes": []})
    out.update(Name=name, Source=source, Protocol=protocol, Registered=summary is not None, Intention={
        "Allowed": allowed, "HasPermissions": bool(gov and gov.get("Permissions")),
        "HasExact": bool(gov and gov["SourceName"] == src and gov["DestinationName"] == dst),
        "DefaultAllow": default_allow, "ID": gov["ID"] if gov else "", "Reason": reason})
    return out


@api.get("/v1/internal/ui/service-topology/{service}")
async def service_topology(request: web.Request) -> web.Response:
    """A service's upstreams and downstreams — from its proxies' registrations and from intentions that
    name it exactly — each with the decision `connect/intentions` makes for that link (Consul's shape)."""
    index, body = await _topology(request, request.match_info["service"])
    return _json(request, dumps(body), index)


async def _topology(request: web.Request, name: str) -> tuple[int, dict[str, Any]]:
    agent = request.app[AGENT]
    default_allow = agent.config.intention_default_allow
    ixn_list = (await _connect(request)).intentions() if agent.connect is not None else []
    by_ixn_up = {i["DestinationName"] for i in ixn_list if i["SourceName"] == name} - {name, ixns.WILDCARD}
    by_ixn_down = {i["SourceName"] for i in ixn_list if i["DestinationName"] == name} - {name, ixns.WILDCARD}
    index, raw = await _query(request, "ui.topology", {"name": name, "also": sorted(by_ixn_up | by_ixn_down)})
    topo = orjson.loads(raw)
    ups = {n: "proxy-registration" for n in topo["Upstreams"]}
    downs = {n: "proxy-registration" for n in topo["Downstreams"]}
    for n in by_ixn_up:
        ups.setdefault(n, "specific-intention")
    for n in by_ixn_down:
        downs.setdefault(n, "specific-intention")
    names = sorted(set(ups) | set(downs))
    summaries: dict[str, Any] = {}
    if names:
        _, body = await request.app[AGENT].backend.query("ui.services", {"names": names}, 0, 0.0,
                                                           consistency_mode(request))
        summaries = {s["Name"]: s for s in body}
    protocols = topo["Protocols"]
    metrics = await service_links(request, name)
    links = {"Upstreams": [_link(ixn_list, name, up, default_allow, src, summaries.get(up), protocols.get(up, "tcp"),
                                 up) for up, src in sorted(ups.items())],
             "Downstreams": [_link(ixn_list, down, name, default_allow, src, summaries.get(down),
                                   protocols.get(down, "tcp"), down) for down, src in sorted(downs.items())]}
    for side, items in links.items():
        for link in items:
            link["Metrics"] = metrics[side].get(link["Name"])
    return index, {
        "Protocol": topo["Protocol"], "TransparentProxy": False, "DefaultAllow": default_allow,
        "WildcardIntention": any(ixns.WILDCARD in (i["SourceName"], i["DestinationName"]) for i in ixn_list),
        "FilteredByACLs": False,
        **links,
        # Per link above (`Metrics`: request rate, success rate, p99 from the service's own sidecars); here
        # the provider and the state of each proxy read (ui_metrics.py).
        "Metrics": {k: metrics[k] for k in ("Provider", "Proxies", "Error")},
    }


@api.get("/v1/internal/ui/intention-check")
async def intention_check(request: web.Request) -> web.Response:
    """The decision for source → destination, and the intention that made it: the same pure function
    (`connect.intentions.decide`) the agent's authorize and the proxies use. With `path` (and optionally
    `method` and `header=Name:value`), an L7 intention is evaluated for that HTTP request."""
    check_common(request)
    q = request.query
    src, dst = q.get("source", ""), q.get("destination", "")
    for field, value in (("source", src), ("destination", dst)):
        if not value:
            raise BadRequest(f"required query parameter {field!r} is missing")
        if value != ixns.WILDCARD and "*" in value:
            raise BadRequest(f"{field} {value!r}: a wildcard must be the whole name")
    req = None
    if q.get("path") or q.get("method") or q.getall("header", []):
        path = q.get("path") or "/"
        if not path.startswith("/"):
            raise BadRequest(f"path {path!r} must start with /")
        method = (q.get("method") or "GET").upper()
        if method not in ixns.METHODS:
            raise BadRequest(f"method {method!r} is not an HTTP method ({', '.join(sorted(ixns.METHODS))})")
        headers = {}
        for h in q.getall("header", []):
            if ":" not in h:
                raise BadRequest(f"header {h!r} must be Name:value")
            k, v = h.split(":", 1)
            headers[k.strip()] = v.strip()
        req = ixns.Request(path=path, method=method, headers=headers)
    conn = await _connect(request)
    ixn_list = conn.intentions()
    default_allow = request.app[AGENT].config.intention_default_allow
    allowed, reason = ixns.decide(ixn_list, src, dst, default_allow, req)
    gov = ixns.governing(ixn_list, src, dst)
    body = {"Allowed": allowed, "Reason": reason, "Intention": gov, "DefaultAllow": default_allow,
            "NeedsRequest": bool(gov and gov.get("Permissions") and req is None)}
    return _json(request, dumps(body), conn.intentions_index())


_LINE = re.compile(r"line (\d+)", re.I)


@api.post("/v1/internal/ui/validate")
async def validate(request: web.Request) -> web.Response:
    """Check a KV value's syntax before the UI saves it: `?format=hcl` with the agent's own HCL parser
    (python-hcl2), `?format=json` strictly. (YAML is checked in the browser.)"""
    fmt = request.query.get("format", "")
    if fmt not in ("hcl", "json"):
        raise BadRequest(f"format {fmt!r}: use \"hcl\" or \"json\"")
    raw = await request.read()
    if len(raw) > MAX_VALIDATE:
        raise TooLarge(f"value too large to validate: {len(raw)} bytes (limit {MAX_VALIDATE})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _json(request, dumps({"Valid": False, "Error": f"not UTF-8 text: {e}", "Line": 0}), None)
    error, line = "", 0
    try:
        if fmt == "json":
            orjson.loads(text)
        else:
            hcl2.loads(text)
    except Exception as e:  # each parser has its own error types; all of them mean "not valid"
        error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        lineno = getattr(e, "line", None) or getattr(e, "lineno", None)
        m = _LINE.search(str(e))
        line = int(lineno) if isinstance(lineno, int) else int(m.group(1)) if m else 0
    return _json(request, dumps({"Valid": not error, "Error": error, "Line": line}), None)


# ---------------------------------------------------------------------- the app's files
def _send_asset(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {"Cache-Control": cache_control, "ETag": asset.etag, "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    if asset.gzipped is not None and _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=asset.gzipped, headers=headers, content_type=asset.content_type.split(";")[0],
                            charset="utf-8" if "charset" in asset.content_type else None)
    return web.Response(body=asset.body, headers=headers, content_type=asset.content_type.split(";")[0],
                        charset="utf-8" if "charset" in asset.content_type else None)


async def ui_file(request: web.Request) -> web.Response:
    """An asset by path (cached for a year when asked for by its content hash), else the app's page:
    every other path below the content path is a route of the single-page app."""
    bundle: Bundle = request.app[AGENT].ui_bundle
    rel = request.match_info.get("tail", "")
    asset = bundle.lookup(rel)
    if asset is not None:
        immutable = request.query.get("v") == asset.digest
        return _send_asset(request, asset, IMMUTABLE if immutable else REVALIDATE)
    if rel.startswith("assets/"):
        raise NotFoundHTTP(f"no such UI file: {rel}")
    response = _send_asset(request, bundle.index, REVALIDATE)
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


async def root(request: web.Request) -> web.Response:
    """`/`: a 301 to the UI, as Consul does; a one-line hint when the UI is disabled."""
    agent = request.app[AGENT]
    if agent.config.ui_enabled:
        raise web.HTTPMovedPermanently(agent.config.ui_content_path)
    return web.Response(text="Proconsul agent: UI disabled. To enable, set ui_config.enabled = true in the "
                             "agent configuration (or pass --ui) and restart.\n")


def attach(agent: Any) -> None:
    """Wire the UI into an agent: the internal reads always (like Consul), the files when enabled."""
    agent.ui_gzip = GzipCache()
    agent.http_routes.append(api)
    attach_metrics(agent)
    files = web.RouteTableDef()
    files.get("/")(root)
    if agent.config.ui_enabled:
        path = agent.config.ui_content_path
        agent.ui_bundle = Bundle(path)
        files.get(path.rstrip("/"))(_redirect_to(path))
        files.get(path + "{tail:.*}")(ui_file)
    agent.http_routes.append(files)


def _redirect_to(path: str) -> Any:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(path)
    return redirect

