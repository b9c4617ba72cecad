"""A small Kubernetes API server for the tests (not shipped): real clients (kubectl, the official Python
client, the syncer's kubernetes_asyncio) talk to it over HTTP on 127.0.0.1.

Modules: `store` (objects, resourceVersions, history, watches — pure), `selectors`, `patch` (merge, JSON,
strategic-merge patch and a simplified server-side apply), `resources` (per-kind defaulting and validation),
`tables` (server-side printing for `kubectl get`), `discovery` (discovery and OpenAPI documents), `server`
(the aiohttp front end).
"""
