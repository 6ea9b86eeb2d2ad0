"""The commands that talk to a running server's admin endpoints: `ripple export` and `ripple import`
(a snapshot ZIP, or one table's file: server/api/snapshot_http.py, docs/import-export.md),
`ripple data`, and `admin_call`, which `ripple env` uses too. Progress goes to stderr; the server
URL and admin key come from server/cli.py, which calls these."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from server import adminkey

CHUNK = 1 << 20
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


class Progress:
    """`<verb> <done> / <total> MiB` on stderr: rewritten in place on a terminal, else only at the end."""

    def __init__(self, verb: str, total: int | None) -> None:
        self.verb, self.total, self.done = verb, total, 0
        self.live = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.done += n
        if self.live:
            print(f"\r{self.text()}", end="", file=sys.stderr, flush=True)

    def text(self) -> str:
        of = f" / {self.total / 2**20:.1f}" if self.total is not None else ""
        return f"{self.verb} {self.done / 2**20:.1f}{of} MiB"

    def finish(self) -> None:
        print(("\r" if self.live else "") + self.text(), file=sys.stderr, flush=True)


class _Reading:
    """A file handed to urllib as a request body, counting what it sends."""

    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self.f, self.progress = f, progress

    def read(self, size: int = -1) -> bytes:
        chunk = self.f.read(CHUNK if size is None or size < 0 else size)
        self.progress.add(len(chunk))
        return chunk


DEFAULT_URL = "http://127.0.0.1:3210"


class AdminCallFailed(Exception):
    """What a command using an admin endpoint prints before exiting with status 1."""


def error_message(exc: urllib.error.HTTPError) -> str:
    """What a refused request says: the `message` of Ripple's JSON error, else the body as is."""
    payload = exc.read().decode(errors="replace")
    try:
        return str(json.loads(payload)["message"])
    except (ValueError, KeyError, TypeError):
        return payload


def problem(url: str, source: str, key: str | None) -> str | None:
    """Why an admin endpoint cannot be called: no admin key, or a URL that is not http(s)."""
    if not key:
        return ("no admin key: pass --admin-key, set RIPPLE_ADMIN_KEY, or run in (or --dir to) the app directory "
                f"of a `ripple dev`, which keeps it in {adminkey.KEY_FILE}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"the server URL {url!r} ({source}) is not an http:// URL, such as {DEFAULT_URL}"
    return None


def admin_call(url: str, source: str, key: str | None, method: str, endpoint: str, body: Any = None) -> Any:
    """An admin endpoint's JSON answer, or AdminCallFailed saying what went wrong: no key, no
    server, a key refused, a request refused."""
    refusal = problem(url, source, key)
    if refusal:
        raise AdminCallFailed(refusal)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}{endpoint}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Authorization": f"Convex {key}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise AdminCallFailed(f"{exc.code}: {error_message(exc)}") from None
    except urllib.error.URLError as exc:
        raise AdminCallFailed(f"no Ripple server at {url} ({source}): {exc.reason}; start one with `ripple dev`, "
                              "or choose the server with --url or RIPPLE_URL") from None


def export(url: str, source: str, key: str | None, path: Path) -> int:
    refusal = problem(url, source, key)
    if refusal:
        print(f"ripple export: {refusal}", file=sys.stderr)
        return 1
    partial = path.with_name(path.name + ".partial")
    request = urllib.request.Request(f"{url.rstrip('/')}/_ripple/export", headers={"Authorization": f"Convex {key}"})
    try:
        with urllib.request.urlopen(request, timeout=3600) as response, partial.open("wb") as out:
            length = response.headers.get("Content-Length")
            progress = Progress("exported", int(length) if length and length.isdigit() else None)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                progress.add(len(chunk))
        progress.finish()
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        print(f"ripple export: {exc.code}: {error_message(exc)}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        partial.unlink(missing_ok=True)
        print(f"ripple export: no Ripple server at {url} ({source}): {exc.reason}", file=sys.stderr)
        return 1
    os.replace(partial, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def import_(url: str, source: str, key: str | None, path: Path, table: str | None, fmt: str | None, mode: str) -> int:
    refusal = problem(url, source, key)
    if refusal is None and not path.is_file():
        refusal = f"{path} is not a file"
    query: dict[str, str] = {"mode": mode}
    if refusal is None and table is not None:
        fmt = fmt or FORMATS.get(path.suffix.lower())
        if fmt is None:
            refusal = f"cannot tell the format of {path.name} from its extension; pass --format jsonl, json or csv"
        else:
            query.update(table=table, format=fmt, name=path.name)
    elif refusal is None and fmt is not None:
        refusal = "--format is for a single table's file (with --table); a snapshot is a ZIP"
    if refusal:
        print(f"ripple import: {refusal}", file=sys.stderr)
        return 1
    size = path.stat().st_size
    progress = Progress("uploaded", size)
    endpoint = f"{url.rstrip('/')}/_ripple/import?{urllib.parse.urlencode(query)}"
    try:
        with path.open("rb") as f:
            body: Any = _Reading(f, progress)
            request = urllib.request.Request(endpoint, data=body, method="POST", headers={
                "Authorization": f"Convex {key}", "Content-Length": str(size),
                "Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(request, timeout=3600) as response:
                result = json.loads(response.read())
        progress.finish()
    except urllib.error.HTTPError as exc:
        print(("\n" if progress.live else "") + f"ripple import: {exc.code}: {error_message(exc)}; nothing was imported",
              file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"ripple import: no Ripple server at {url} ({source}): {exc.reason}", file=sys.stderr)
        return 1
    for name, count in sorted(result["imported"].items()):
        print(f"imported {count} documents into {name}", file=sys.stderr)
    return 0


def data(url: str, source: str, key: str | None, table: str | None, limit: int, order: str) -> int:
    """`ripple data`: the tables, one a line; `ripple data TABLE`: a page of its documents, as
    indented JSON, newest first unless `--order asc` (as `npx convex data`)."""
    query = "" if table is None else "/" + urllib.parse.quote(table, safe="") + "?" + urllib.parse.urlencode(
        {"limit": limit, "order": order})
    try:
        body = admin_call(url, source, key, "GET", f"/_ripple/data{query}")
    except AdminCallFailed as exc:
        print(f"ripple data: {exc}", file=sys.stderr)
        return 1
    if table is None:
        for name in body["tables"]:
            print(name)
    else:
        print(json.dumps(body["documents"], indent=2))
    return 0
