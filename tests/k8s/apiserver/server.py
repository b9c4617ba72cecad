"""The aiohttp front end of the test API server: paths, verbs, content negotiation, watch streams."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import secrets
import string
import time
from collections import Counter
from typing import Any

from aiohttp import web

from . import discovery, patch, resources, tables
from .selectors import SelectorError
from .store import ApiError, Kind, Obj, Store, not_found

APPLY = "application/apply-patch+yaml"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", APPLY)
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
WATCH_QUEUE_MAX = 200_000


def go_bool(value: str | None) -> bool:
    """Query booleans as the API server parses them (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def status_response(err: ApiError) -> web.Response:
    return web.json_response(err.status(), status=err.code)


def bad(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


class ApiServer:
    """State and handlers of one test API server."""

    def __init__(self, bookmark_interval: float = 5.0, history_limit: int = 100_000) -> None:
        self.store = Store(resources.KINDS, history_limit=history_limit)
        self.bookmark_interval = bookmark_interval
        self.requests: Counter[str] = Counter()
        self.watch_tasks: set[asyncio.Task[Any]] = set()
        self.held = False  # test hook: while set, lists and watches are refused (a partitioned client)
        for ns in SYSTEM_NAMESPACES:
            obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
                   "labels": {"kubernetes.io/metadata.name": ns}}}
            resources.prepare(self.store, "namespaces", obj, None)
            self.store.create("namespaces", obj)

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._errors])
        r = app.router
        r.add_get("/version", lambda _: web.json_response(discovery.VERSION))
        for p in ("/healthz", "/readyz", "/livez"):
            r.add_get(p, lambda _: web.Response(text="ok"))
        r.add_get("/api", self.api)
        r.add_get("/apis", lambda _: web.json_response(discovery.api_group_list(self.store.kinds)))
        r.add_get("/openapi/v3", lambda _: web.json_response(discovery.openapi_v3_root(self.store.kinds)))
        r.add_get("/openapi/v3/{gv:.*}", self.openapi_doc)
        r.add_post("/_test/compact", self.compact)
        r.add_post("/_test/drop-watches", self.drop_watches)
        r.add_post("/_test/hold", self.hold)
        r.add_get("/_test/stats", lambda _: web.json_response({"requests": dict(self.requests),
                                                               "resourceVersion": self.store.rv}))
        r.add_route("*", "/api/v1{rest:.*}", self.core)
        r.add_route("*", "/apis/{group}/{version}{rest:.*}", self.grouped)
        r.add_get("/apis/{group}", self.group)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests[request.method] += 1
        try:
            return await handler(request)
        except ApiError as e:
            return status_response(e)
        except SelectorError as e:
            return status_response(bad(str(e)))

    async def api(self, request: web.Request) -> web.Response:
        return web.json_response(discovery.api_versions(f"{request.host}"))

    async def group(self, request: web.Request) -> web.Response:
        doc = discovery.api_group(self.store.kinds, request.match_info["group"])
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(doc)

    async def openapi_doc(self, request: web.Request) -> web.Response:
        gv = request.match_info["gv"]
        gv = gv.removeprefix("api/").removeprefix("apis/")
        if gv not in discovery.group_versions(self.store.kinds):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(discovery.openapi_v3_doc(self.store.kinds, gv))

    async def compact(self, request: web.Request) -> web.Response:
        """Test hook: compact the history and end every open watch (their clients must re-list on 410)."""
        rv = self.store.compact()
        await self._end_watches()
        return web.json_response({"compacted": rv})

    async def drop_watches(self, request: web.Request) -> web.Response:
        """Test hook: end every open watch stream without compacting (a dropped connection)."""
        n = await self._end_watches()
        return web.json_response({"dropped": n})

    async def hold(self, request: web.Request) -> web.Response:
        """Test hook: ?on=1 refuses every list and watch with 503 (and ends open watches) until ?on=0."""
        self.held = request.query.get("on", "1") == "1"
        n = await self._end_watches() if self.held else 0
        return web.json_response({"held": self.held, "dropped": n})

    async def _end_watches(self) -> int:
        tasks = list(self.watch_tasks)
        for t in tasks:
            t.cancel()
        return len(tasks)

    # ------------------------------------------------------------------ routing
    async def core(self, request: web.Request) -> web.StreamResponse:
        rest = request.match_info["rest"]
        if rest in ("", "/"):
            return web.json_response(discovery.resource_list(self.store.kinds, "v1"))
        return await self._dispatch(request, "v1", rest)

    async def grouped(self, request: web.Request) -> web.StreamResponse:
        gv = f"{request.match_info['group']}/{request.match_info['version']}"
        rest = request.match_info["rest"]
        if rest in ("", "/"):
            doc = discovery.resource_list(self.store.kinds, gv)
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.json_response(doc)
        return await self._dispatch(request, gv, rest)

    def _kind(self, gv: str, resource: str) -> Kind:
        k = self.store.kinds.get(resource)
        if k is None or k.api_version != gv:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return k

    async def _dispatch(self, request: web.Request, gv: str, rest: str) -> web.StreamResponse:
        parts = [p for p in rest.split("/") if p]
        namespace = ""
        if parts[0] == "namespaces" and len(parts) >= 3 and not (gv == "v1" and parts[2] == "status"):
            namespace, parts = parts[1], parts[2:]
        kind = self._kind(gv, parts[0])
        if kind.namespaced is False and namespace:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = parts[1] if len(parts) > 1 else ""
        sub = parts[2] if len(parts) > 2 else ""
        if sub and (sub != "status" or not kind.status) or len(parts) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if namespace and kind.namespaced and request.method in ("POST", "PUT", "PATCH"):
            self._require_namespace(namespace)
        m = request.method
        if not name:
            if m == "GET" and self.held:
                self.requests["refused"] += 1
                raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            if m == "GET":
                if go_bool(request.query.get("watch")):
                    return await self.watch(request, kind, namespace)
                return self.list(request, kind, namespace)
            if m == "POST":
                return await self.create(request, kind, namespace)
            if m == "DELETE":
                return self.delete_collection(request, kind, namespace)
        else:
            if m == "GET":
                obj = self.store.get(kind.resource, namespace, name)
                return self._one(request, kind, obj)
            if m == "PUT":
                return await self.replace(request, kind, namespace, name, sub)
            if m == "PATCH":
                return await self.patch(request, kind, namespace, name, sub)
            if m == "DELETE":
                return self.delete(request, kind, namespace, name)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _require_namespace(self, namespace: str) -> None:
        if ("", namespace) not in self.store.objects["namespaces"]:
            raise not_found("namespaces", namespace)

    # ------------------------------------------------------------------ reads
    def _wants_table(self, request: web.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")

    def _one(self, request: web.Request, kind: Kind, obj: Obj, status: int = 200) -> web.Response:
        if self._wants_table(request) and kind.resource in tables.LAYOUT and request.method == "GET":
            return web.json_response(tables.table(kind.resource, [obj], {"resourceVersion":
                                     obj["metadata"]["resourceVersion"]}, time.time(),
                                     request.query.get("includeObject", "Metadata")), status=status)
        return web.json_response(obj, status=status)

    def list(self, request: web.Request, kind: Kind, namespace: str) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise bad(f"invalid limit {q.get('limit')!r}") from None
        items, rv, cont, remaining = self.store.list(
            kind.resource, namespace, label_selector=q.get("labelSelector", ""),
            field_selector=q.get("fieldSelector", ""), limit=limit, cont=q.get("continue", ""))
        meta: Obj = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
            meta["remainingItemCount"] = remaining
        if self._wants_table(request) and kind.resource in tables.LAYOUT:
            return web.json_response(tables.table(kind.resource, items, meta, time.time(),
                                                  q.get("includeObject", "Metadata")))
        return web.json_response({"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                                  "items": items})

    async def watch(self, request: web.Request, kind: Kind, namespace: str) -> web.StreamResponse:
        q = request.query
        queue: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()
        as_table = self._wants_table(request) and kind.resource in tables.LAYOUT
        bookmarks = go_bool(q.get("allowWatchBookmarks"))
        initial = go_bool(q.get("sendInitialEvents"))
        since = "0" if initial else q.get("resourceVersion", "")  # initial events: the current state first
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def emit(type_: str, obj: Obj) -> None:
            if as_table and type_ in ("ADDED", "MODIFIED", "DELETED"):
                obj = tables.table(kind.resource, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                   time.time(), q.get("includeObject", "Metadata"))
            await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        def send(type_: str, obj: Obj) -> None:
            if queue.qsize() >= WATCH_QUEUE_MAX:
                raise ApiError(500, "InternalError", "watch queue overflow")
            queue.put_nowait((type_, obj))

        try:
            w = self.store.watch(kind.resource, namespace, q.get("labelSelector", ""), q.get("fieldSelector", ""),
                                 since, send)
        except ApiError as e:
            await resp.write(json.dumps({"type": "ERROR", "object": e.status()}).encode() + b"\n")
            return resp
        if initial:
            queue.put_nowait(("BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": {
                "resourceVersion": str(self.store.rv), "annotations": {"k8s.io/initial-events-end": "true"}}}))
        try:
            timeout = float(q.get("timeoutSeconds") or 1800)
        except ValueError:
            raise bad(f"invalid timeoutSeconds {q.get('timeoutSeconds')!r}") from None
        task = asyncio.current_task()
        assert task is not None
        self.watch_tasks.add(task)
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        await emit("BOOKMARK", self._bookmark(kind))
                    break
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                try:
                    type_, obj = await asyncio.wait_for(queue.get(), timeout=max(wait, 0))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        await emit("BOOKMARK", self._bookmark(kind))
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                await emit(type_, obj)
                while not queue.empty():
                    type_, obj = queue.get_nowait()
                    await emit(type_, obj)
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        finally:
            self.store.unwatch(w)
            self.watch_tasks.discard(task)
        return resp

    def _bookmark(self, kind: Kind) -> Obj:
        return {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": {"resourceVersion": str(self.store.rv)}}

    # ------------------------------------------------------------------ writes
    async def _body(self, request: web.Request) -> Any:
        if request.content_type == "application/vnd.kubernetes.protobuf":
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           "accepted media types include: application/json, application/yaml (this test server "
                           "does not decode protobuf)")
        raw = await request.read()
        return patch.parse_body(raw, request.content_type or "application/json")

    def _strict(self, request: web.Request, kind: Kind, obj: Obj) -> None:
        if request.query.get("fieldValidation", "") != "Strict":
            return
        unknown = resources.unknown_fields(kind.resource, obj)
        if unknown:
            detail = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise bad(f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: strict decoding '
                      f"error: {detail}")

    def _check_object(self, kind: Kind, obj: Any, namespace: str) -> Obj:
        if not isinstance(obj, dict):
            raise bad("the body of the request was in an unknown format")
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if obj["kind"] != kind.kind or obj["apiVersion"] != kind.api_version:
            raise bad(f"the API version in the data ({obj['apiVersion']}) does not match the expected API version "
                      f"({kind.api_version})")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad("metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise bad("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        return obj

    async def create(self, request: web.Request, kind: Kind, namespace: str) -> web.Response:
        obj = self._check_object(kind, await self._body(request), namespace)
        self._strict(request, kind, obj)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(string.ascii_lowercase + string.digits)
                                                          for _ in range(5))
        resources.prepare(self.store, kind.resource, obj, None)
        if request.query.get("dryRun") == "All":
            return web.json_response(obj, status=201)
        return web.json_response(self.store.create(kind.resource, obj), status=201)

    def _write(self, kind: Kind, obj: Obj, old: Obj, sub: str, expect_rv: str | None) -> Obj:
        if kind.status:
            if sub == "status":  # the status subresource changes status only
                obj = dict(old, status=obj.get("status", {}), metadata=dict(old["metadata"]))
            else:  # and the main resource never changes status
                obj["status"] = copy.deepcopy(old.get("status", {}))
        resources.prepare(self.store, kind.resource, obj, old)
        return self.store.update(kind.resource, obj, expect_rv)

    async def replace(self, request: web.Request, kind: Kind, namespace: str, name: str, sub: str) -> web.Response:
        obj = self._check_object(kind, await self._body(request), namespace)
        self._strict(request, kind, obj)
        if obj["metadata"].get("name", name) != name:
            raise bad("the name of the object does not match the name on the URL")
        obj["metadata"]["name"] = name
        old = self.store.get(kind.resource, namespace, name)
        return web.json_response(self._write(kind, obj, old, sub, obj["metadata"].get("resourceVersion")))

    async def patch(self, request: web.Request, kind: Kind, namespace: str, name: str, sub: str) -> web.Response:
        ctype = request.content_type
        if ctype not in PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                           f"media types include: {', '.join(PATCH_TYPES)}")
        body = await self._body(request)
        if ctype == APPLY:
            return self._apply(request, kind, namespace, name, sub, body)
        old = self.store.get(kind.resource, namespace, name)
        if ctype == "application/json-patch+json":
            new = patch.json_patch(old, body)
        elif not isinstance(body, dict):
            raise bad("the patch must be a JSON object")
        elif ctype == "application/merge-patch+json":
            new = patch.merge_patch(old, body)
        else:
            new = patch.strategic_merge(kind.resource, old, body)
        new = self._check_object(kind, new, namespace)
        self._strict(request, kind, new)
        expect = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        new["metadata"]["name"] = name
        return web.json_response(self._write(kind, new, old, sub, expect))

    def _apply(self, request: web.Request, kind: Kind, namespace: str, name: str, sub: str,
               body: Any) -> web.Response:
        manager = request.query.get("fieldManager", "")
        if not manager:
            raise bad("PATCH " + request.path + ": fieldManager is required for apply requests")
        applied = self._check_object(kind, body, namespace)
        self._strict(request, kind, applied)
        if applied["metadata"].get("name", name) != name:
            raise bad("the name of the object does not match the name on the URL")
        applied["metadata"]["name"] = name
        fields = patch.field_set({k: v for k, v in applied.items() if k not in ("apiVersion", "kind")})
        entry = {"manager": manager, "operation": "Apply", "apiVersion": kind.api_version,
                 "time": self.store.now_iso(), "fieldsType": "FieldsV1", "fieldsV1": patch.fields_v1(fields)}
        if sub:
            entry["subresource"] = sub
        try:
            old = self.store.get(kind.resource, namespace, name)
        except ApiError as e:
            if e.code != 404 or sub:
                raise
            obj = copy.deepcopy(applied)
            obj["metadata"]["managedFields"] = [entry]
            resources.prepare(self.store, kind.resource, obj, None)
            return web.json_response(self.store.create(kind.resource, obj), status=201)
        managed = [m for m in old["metadata"].get("managedFields") or []]
        mine = next((m for m in managed if m.get("manager") == manager and m.get("operation") == "Apply"), None)
        new = copy.deepcopy(old)
        if mine is not None:
            for gone in patch.paths_of(mine.get("fieldsV1") or {}) - fields:
                patch.remove_path(new, gone)
        new = patch.strategic_merge(kind.resource, new, applied)
        new["metadata"]["managedFields"] = [m for m in managed if m is not mine] + [entry]
        return web.json_response(self._write(kind, new, old, sub, None))

    def delete(self, request: web.Request, kind: Kind, namespace: str, name: str) -> web.Response:
        if kind.resource == "namespaces":
            if name in SYSTEM_NAMESPACES:
                raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be '
                               "deleted")
            for r, k in self.store.kinds.items():
                if k.namespaced:
                    for (ns, n) in [key for key in self.store.objects[r] if key[0] == name]:
                        self.store.delete(r, ns, n)
        return web.json_response(self.store.delete(kind.resource, namespace, name))

    def delete_collection(self, request: web.Request, kind: Kind, namespace: str) -> web.Response:
        items, _, _, _ = self.store.list(kind.resource, namespace,
                                         label_selector=request.query.get("labelSelector", ""),
                                         field_selector=request.query.get("fieldSelector", ""))
        gone = [self.store.delete(kind.resource, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                for o in items]
        return web.json_response({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                  "metadata": {"resourceVersion": str(self.store.rv)}, "items": gone})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Kubernetes API test server (tests only)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--bookmark-interval", type=float, default=5.0)
    ap.add_argument("--history-limit", type=int, default=100_000)
    args = ap.parse_args(argv)

    async def run() -> None:
        server = ApiServer(args.bookmark_interval, args.history_limit)
        runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        print(f"listening on http://{args.host}:{args.port}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
