"""The UI's static files as a ready-to-serve bundle: content types, content hashes, gzip bodies, and the
`index.html` rendered for one mount path.

Every file under `static/` is read once when the agent starts. JavaScript modules are addressed as
`<path>?v=<hash>` through an import map written into `index.html`, so a browser may cache them forever
(`immutable`) and still never runs a stale module after an upgrade; `index.html` itself is revalidated
with its ETag on every load. Nothing here touches the network: the UI works on machines without internet.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
ASSETS = "assets/"  # every file but index.html lives below this prefix
MIN_GZIP = 512  # bytes: smaller bodies are sent as they are
TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
         ".json": "application/json", ".txt": "text/plain; charset=utf-8", ".png": "image/png",
         ".ico": "image/x-icon", ".woff2": "font/woff2"}


class UIContentError(ValueError):
    """The UI's content path or files cannot be used (the agent refuses to start with this message)."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One file ready to send: its body, the same gzipped (or None when not worth it), type and hash."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    digest: str  # first 16 hex digits of the SHA-256 of the body; the ETag and the `?v=` of its URL

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def make_asset(body: bytes, name: str) -> Asset:
    suffix = Path(name).suffix.lower()
    ctype = TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    gz = gzip.compress(body, 9, mtime=0) if len(body) >= MIN_GZIP and not suffix == ".png" else None
    if gz is not None and len(gz) >= len(body):
        gz = None
    return Asset(body, gz, ctype, hashlib.sha256(body).hexdigest()[:16])


def normalize_content_path(path: str) -> str:
    """Consul's rule: the UI's URL prefix starts and ends with `/` (`ui` → `/ui/`)."""
    path = "/" + path.strip().strip("/") + "/" if path.strip().strip("/") else "/"
    if path == "/" or "//" in path or any(c in path for c in "?#\"'<> \\"):
        raise UIContentError(f"ui_config.content_path {path!r} must be a URL path below / such as \"/ui/\"")
    if path.startswith("/v1/"):
        raise UIContentError(f"ui_config.content_path {path!r} would hide the HTTP API under /v1/")
    return path


class Bundle:
    """Every UI file, keyed by its path below the content path (`index.html`, `assets/js/app.js`)."""

    def __init__(self, content_path: str = "/ui/", root: Path = STATIC) -> None:
        self.content_path = normalize_content_path(content_path)
        if not (root / INDEX).is_file():
            raise UIContentError(f"the UI's files are missing: no {root / INDEX} (a broken install?)")
        self.assets: dict[str, Asset] = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and rel != INDEX and rel.startswith(ASSETS) and not path.name.startswith("."):
                self.assets[rel] = make_asset(path.read_bytes(), rel)
        self.index = make_asset(self._render_index((root / INDEX).read_text("utf-8")).encode(), INDEX)

    def url(self, rel: str) -> str:
        """The cache-busting URL of an asset: its content hash in the query."""
        return f"{self.content_path}{rel}?v={self.assets[rel].digest}"

    def _render_index(self, template: str) -> str:
        """Fill the mount path, the import map (every module → its hashed URL) and module preloads."""
        modules = [rel for rel in self.assets if rel.endswith((".js", ".mjs"))]
        imports = {f"{self.content_path}{rel}": self.url(rel) for rel in modules}
        for rel in modules:  # bare specifiers of the vendored libraries: "preact", "preact/hooks", "htm"
            if rel.startswith(f"{ASSETS}vendor/"):
                bare = Path(rel).stem.replace(".", "/")
                imports[bare] = self.url(rel)
        # Loaded on demand (the YAML parser) or as a worker (not a module of the page): no preload.
        lazy = {rel for rel in modules if "/lazy/" in rel or "/workers/" in rel}
        preload = "\n".join(f'  <link rel="modulepreload" href="{self.url(rel)}">'
                            for rel in modules if rel not in lazy)
        css = "\n".join(f'  <link rel="stylesheet" href="{self.url(rel)}">'
                        for rel in self.assets if rel.endswith(".css"))
        out = template.replace("{{BASE}}", self.content_path)
        out = out.replace("{{IMPORTMAP}}", json.dumps({"imports": imports}, indent=1).replace("</", "<\\/"))
        out = out.replace("{{PRELOAD}}", preload).replace("{{CSS}}", css)
        app = f"{ASSETS}js/app.js"
        return out.replace("{{APP}}", self.url(app) if app in self.assets else "")

    def lookup(self, rel: str) -> Asset | None:
        """The asset at `rel`, or None; any other path under the content path is a page of the app."""
        return self.assets.get(rel)
