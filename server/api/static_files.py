"""An app's static files and the JS SDK, served by `ripple dev` and `ripple serve` alike
(docs/static-files.md).

* `public/` of the app directory, at `/`: a GET or HEAD that no HTTP action's route takes gets
  the file at that path (`/` and any directory: its `index.html`). HttpActions asks here before
  answering 404 or 405, so routes always win.
* server/dashboard/ at `/_ripple/` (its index.html) and `/_ripple/dashboard/<file>`: the
  dashboard (docs/dashboard.md), plain files with no build step.
* client_sdk/js at `/_ripple/sdk/<name>.js`, so a page needs no copy of it and no build step:
  `import { RippleClient } from "/_ripple/sdk/ripple.js"` (its modules import each other
  relatively, so they resolve there too).

Nothing outside the folder is reachable: a path with a `..` or `.` segment, a segment starting
with `.` (`.env`, `.git`), a backslash or a NUL is refused before the disk is touched, and the
resolved path (symlinks followed) must still lie inside the folder. Refusals are the plain 404
of a missing file, so a probe learns nothing. Responses carry ETag and Last-Modified, answer a
matching If-None-Match with 304, and say `Cache-Control: no-cache`: a browser revalidates each
time, so an edited file shows at the next reload without stale copies.
"""

from __future__ import annotations

import importlib.util
import mimetypes
import os
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from server.api.http_api import error_response

# Types browsers insist on (a module script must be served as JavaScript), whatever the
# platform's mimetypes tables say; other extensions go to `mimetypes`, else octet-stream.
CONTENT_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
    ".css": "text/css", ".json": "application/json", ".map": "application/json",
    ".svg": "image/svg+xml", ".webmanifest": "application/manifest+json", ".wasm": "application/wasm",
    ".txt": "text/plain", ".ico": "image/x-icon", ".png": "image/png", ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp", ".avif": "image/avif",
    ".woff": "font/woff", ".woff2": "font/woff2", ".mp4": "video/mp4", ".webm": "video/webm",
}
SDK_PREFIX = "/_ripple/sdk/"
_SDK_NAME = re.compile(r"[A-Za-z0-9_-]+\.js")


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    found = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"{found}; charset=utf-8" if found.startswith("text/") or found == "application/json" else found


def sdk_dir() -> Path | None:
    """client_sdk/js of the installed client_sdk package (found without importing it)."""
    spec = importlib.util.find_spec("client_sdk")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "js"


class StaticFiles:
    """The files of one folder, which may not exist (yet: it is looked for at each request)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, url_path: str) -> Path | None:
        """The file `url_path` names inside the folder, or None (missing, or refused)."""
        segments = url_path.split("/")[1:]
        for segment in segments:
            if segment.startswith(".") or "\\" in segment or "\x00" in segment:
                return None
        try:
            root = self.root.resolve(strict=True)
            target = root.joinpath(*(s for s in segments if s))
            if target.is_dir():
                target = target / "index.html"
            resolved = target.resolve(strict=True)
        except (OSError, ValueError):  # missing, a symlink loop, a name the OS refuses
            return None
        if not resolved.is_relative_to(root) or not resolved.is_file():
            return None
        return resolved

    @staticmethod
    async def send(path: Path, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the file (`find`'s answer) as the response to a GET or HEAD."""
        stat = os.stat(path)
        response: Response = FileResponse(path, stat_result=stat, media_type=content_type(path),
                                          headers={"cache-control": "no-cache"})
        etag = response.headers["etag"]
        wanted = Request(scope).headers.get("if-none-match")
        if wanted is not None and etag in (tag.strip() for tag in wanted.split(",")):
            response = Response(status_code=304, headers={"etag": etag, "cache-control": "no-cache",
                                                           "last-modified": response.headers["last-modified"]})
        await response(scope, receive, send)


class SdkFiles:
    """`/_ripple/sdk/<name>.js`: the JS SDK's modules (only its own top-level .js files). An
    ASGI app of its own, the endpoint of that route."""

    def __init__(self) -> None:
        folder = sdk_dir()
        self.files = StaticFiles(folder) if folder is not None else None

    def find(self, name: str) -> Path | None:
        if self.files is None or not _SDK_NAME.fullmatch(name):
            return None
        return self.files.find("/" + name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope["path_params"]["name"])
        if found is None:
            await error_response(404, "NotFound", f"no route for {scope['method']} {scope['path']}")(scope, receive, send)
            return
        await StaticFiles.send(found, scope, receive, send)


DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"


class DashboardFiles:
    """`/_ripple/` (the dashboard's page) and `/_ripple/dashboard/<file>` (its scripts and
    styles): the files of server/dashboard/. The page asks for the admin key itself; the files
    hold no secret, so serving them needs none."""

    def __init__(self, root: Path = DASHBOARD_DIR) -> None:
        self.files = StaticFiles(root)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("path_params", {}).get("path")
        found = self.files.find("/" if name is None else "/" + name)
        if found is None:
            await error_response(404, "NotFound", f"no route for {scope['method']} {scope['path']}")(scope, receive, send)
            return
        await StaticFiles.send(found, scope, receive, send)
