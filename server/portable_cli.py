"""`ripple export` and `ripple import`: a snapshot ZIP (or one table's file) to and from a running
server's admin endpoints (server/api/snapshot_http.py, docs/import-export.md). Progress goes to
stderr; the server URL and admin key come from server/cli.py, which calls these."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

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


def _message(exc: urllib.error.HTTPError) -> str:
    payload = exc.read().decode(errors="replace")
    try:
        return str(json.loads(payload)["message"])
    except (ValueError, KeyError, TypeError):
        return payload


def _check(url: str, source: str, key: str | None) -> str | None:
    if not key:
        return ("no admin key: pass --admin-key, set RIPPLE_ADMIN_KEY, or run in (or --dir to) the app directory "
                "of a `ripple dev`")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"the server URL {url!r} ({source}) is not an http:// URL"
    return None


def export(url: str, source: str, key: str | None, path: Path) -> int:
    problem = _check(url, source, key)
    if problem:
        print(f"ripple export: {problem}", file=sys.stderr)
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
        print(f"ripple export: {exc.code}: {_message(exc)}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        partial.unlink(missing_ok=True)
        print(f"ripple export: no Ripple server at {url} ({source}): {exc.reason}", file=sys.stderr)
        return 1
    os.replace(partial, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def import_(url: str, source: str, key: str | None, path: Path, table: str | None, fmt: str | None, mode: str) -> int:
    problem = _check(url, source, key)
    if problem is None and not path.is_file():
        problem = f"{path} is not a file"
    query: dict[str, str] = {"mode": mode}
    if problem is None and table is not None:
        fmt = fmt or FORMATS.get(path.suffix.lower())
        if fmt is None:
            problem = f"cannot tell the format of {path.name} from its extension; pass --format jsonl, json or csv"
        else:
            query.update(table=table, format=fmt, name=path.name)
    elif problem is None and fmt is not None:
        problem = "--format is for a single table's file (with --table); a snapshot is a ZIP"
    if problem:
        print(f"ripple import: {problem}", file=sys.stderr)
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
        print(("\n" if progress.live else "") + f"ripple import: {exc.code}: {_message(exc)}; nothing was imported",
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
    problem = _check(url, source, key)
    if problem:
        print(f"ripple data: {problem}", file=sys.stderr)
        return 1
    query = "" if table is None else "/" + urllib.parse.quote(table, safe="") + "?" + urllib.parse.urlencode(
        {"limit": limit, "order": order})
    request = urllib.request.Request(f"{url.rstrip('/')}/_ripple/data{query}", headers={"Authorization": f"Convex {key}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"ripple data: {exc.code}: {_message(exc)}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"ripple data: no Ripple server at {url} ({source}): {exc.reason}", file=sys.stderr)
        return 1
    if table is None:
        for name in body["tables"]:
            print(name)
    else:
        print(json.dumps(body["documents"], indent=2))
    return 0
