"""The commands that talk to a running server's admin endpoints: `ripple export` and `ripple import`
(a snapshot ZIP, or one table's file: server/api/snapshot_http.py, docs/import-export.md),
`ripple data`, `ripple env`, `ripple dashboard`, and `admin_call`, which they share. Progress
goes to stderr; the server URL and admin key come from server/cli.py, which calls these."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path
from typing import IO, Any

from server import adminkey
from server.core.env import BUILT_IN, EnvVarError, check_name, check_settable

CHUNK = 1 << 20
UPLOAD_CHUNK = 256 << 10
NDJSON = "application/x-ndjson"
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


class Progress:
    """`<verb> [#######-----]  56%  12.3 / 22.0 MiB  8.1 MiB/s` on stderr: redrawn in place (at
    most ten times a second) on a terminal, else one line at the end; then, for an import, what
    the server is doing. Plain text, no dependency (rich is none of Ripple's): a carriage return
    and the erase-to-end-of-line escape."""

    BAR = 24
    EVERY = 0.1  # seconds between two redraws

    def __init__(self, verb: str, total: int | None) -> None:
        self.verb, self.total, self.done = verb, total, 0
        self.live = sys.stderr.isatty()
        self.started = self.drawn = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        if self.live and time.monotonic() - self.drawn >= self.EVERY:
            self.show(self.text())

    def text(self) -> str:
        rate = self.done / 2**20 / max(time.monotonic() - self.started, 1e-3)
        if not self.total:
            return f"{self.verb} {self.done / 2**20:.1f} MiB  {rate:.1f} MiB/s"
        filled = self.BAR * self.done // self.total
        return (f"{self.verb} [{'#' * filled}{'-' * (self.BAR - filled)}] {100 * self.done // self.total:3d}%  "
                f"{self.done / 2**20:.1f} / {self.total / 2**20:.1f} MiB  {rate:.1f} MiB/s")

    def show(self, text: str) -> None:
        """Redraw the line (on a terminal; elsewhere nothing, so logs get only the lines that end)."""
        if self.live:
            self.drawn = time.monotonic()
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End the line with the transfer's totals."""
        print(("\r" if self.live else "") + self.text() + ("\033[K" if self.live else ""), file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A status: a line redrawn by the next `show` on a terminal, a line of its own elsewhere."""
        if self.live:
            self.show(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.live:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


class _Reading:
    """A file handed to urllib as a request body, read a chunk at a time (never whole), counting
    what it sends; at its end the upload's line is finished and `then` said."""

    def __init__(self, f: IO[bytes], progress: Progress, then: str) -> None:
        self.f, self.progress, self.then = f, progress, then

    def read(self, size: int = -1) -> bytes:
        chunk = self.f.read(max(size, UPLOAD_CHUNK))  # http.client asks for 8 KiB: too many small writes
        if chunk:
            self.progress.add(len(chunk))
        elif self.then:
            self.progress.finish()
            self.progress.note(self.then)
            self.then = ""
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


def check_admin(url: str, source: str, key: str | None) -> None:
    """A server answers there and takes the key (AdminCallFailed saying why not), checked before
    work that would show a refusal late or badly: an upload, opening a browser."""
    admin_call(url, source, key, "GET", "/_ripple/data")


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
    if refusal is None:
        # Before sending what may be gigabytes: a server answers and takes the key. (It refuses a
        # wrong key without reading the body, which an upload in progress sees only as a broken
        # connection, not as the 401 it is.)
        try:
            check_admin(url, source, key)
        except AdminCallFailed as exc:
            refusal = str(exc)
    if refusal:
        print(f"ripple import: {refusal}", file=sys.stderr)
        return 1
    size = path.stat().st_size
    progress = Progress("uploaded", size)
    endpoint = f"{url.rstrip('/')}/_ripple/import?{urllib.parse.urlencode(query)}"
    try:
        with path.open("rb") as f:
            body: Any = _Reading(f, progress, "the server is checking and writing the documents, in one transaction ...")
            request = urllib.request.Request(endpoint, data=body, method="POST", headers={
                "Authorization": f"Convex {key}", "Content-Length": str(size),
                "Content-Type": "application/octet-stream", "Accept": f"{NDJSON}, application/json"})
            with urllib.request.urlopen(request, timeout=3600) as response:
                if response.headers.get_content_type() == NDJSON:
                    result = _follow(response, progress)
                else:  # a server from before progress lines: one answer at the end
                    result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        progress.clear()
        print(f"ripple import: {exc.code}: {error_message(exc)}; nothing was imported", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        progress.clear()
        print(f"ripple import: no Ripple server at {url} ({source}): {exc.reason}", file=sys.stderr)
        return 1
    except AdminCallFailed as exc:
        progress.clear()
        print(f"ripple import: {exc}", file=sys.stderr)
        return 1
    progress.clear()
    if "error" in result:  # the same words as a refusal before the import started (HTTP 400)
        print(f"ripple import: {result['error']['message']}; nothing was imported", file=sys.stderr)
        return 1
    for name, count in sorted(result["imported"].items()):
        print(f"imported {count} documents into {name}", file=sys.stderr)
    return 0


def _follow(response: IO[bytes], progress: Progress) -> dict[str, Any]:
    """Show the server's progress lines (server/api/snapshot_http.py) until the last one, which
    says how the import ended: `{"imported": ...}` or `{"error": ...}`. A stream cut before that
    (a server stopped) leaves the outcome unknown, and says so."""
    totals: dict[str, int] = {}
    for raw in response:
        line = json.loads(raw)
        if "documents" in line:
            totals = line["documents"]
            progress.note(f"the server is writing {sum(totals.values()):,} documents, in one transaction ...")
        elif "table" in line:
            of = f" / {totals[line['table']]:,}" if line["table"] in totals else ""
            progress.show(f"writing {line['table']}: {line['written']:,}{of} documents")
        elif line.get("phase") == "committing":
            progress.show("committing ...")
        elif "imported" in line or "error" in line:
            return dict(line)
    raise AdminCallFailed("the server closed the connection before saying how the import ended; it commits all "
                          "or nothing, and `ripple data TABLE` shows whether it did")


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


def _read_value(name: str) -> str:
    """A value from stdin (a prompt without echo on a terminal), so it stays out of shell history."""
    if sys.stdin.isatty():
        return getpass.getpass(f"Value of {name}: ")
    value = sys.stdin.read()
    return value[:-1] if value.endswith("\n") else value  # the newline `echo` and here-strings add


def env(url: str, source: str, key: str | None, verb: str, name: str | None, value: str | None) -> int:
    """`ripple env set|get|list|remove` through the server's admin endpoints (docs/env.md)."""
    try:
        if verb in ("set", "remove"):
            check_settable(name)
        elif verb == "get":
            check_name(name)
            if name in BUILT_IN:
                raise AdminCallFailed(f"{name} is built-in, not stored: functions read it as the server's URL "
                                      "(docs/env.md, Built-in variables)")
        assert verb == "list" or name is not None
        if verb == "set":
            value = value if value is not None else _read_value(str(name))
            admin_call(url, source, key, "POST", "/api/update_environment_variables", {"changes": [{"name": name, "value": value}]})
            print(f"set {name}", file=sys.stderr)
            return 0
        variables = admin_call(url, source, key, "GET", "/api/list_environment_variables")["environmentVariables"]
        if verb == "list":
            for listed in sorted(variables):
                print(f"{listed}={variables[listed]}")
        elif name not in variables:
            raise AdminCallFailed(f"{name} is not set")
        elif verb == "get":
            print(variables[name])
        else:
            admin_call(url, source, key, "POST", "/api/update_environment_variables", {"changes": [{"name": name}]})
            print(f"removed {name}", file=sys.stderr)
        return 0
    except (AdminCallFailed, EnvVarError) as exc:
        print(f"ripple env {verb}: {exc}", file=sys.stderr)
        return 1


def dashboard(url: str, source: str, key: str | None, open_browser: bool) -> int:
    """`ripple dashboard` (as `npx convex dashboard`): the dashboard's address, signed in: the key
    travels in the fragment (`#key=`), which the browser never sends to a server and the page
    removes from the address bar and history at once. The key is checked first (check_admin),
    so a wrong one is said here rather than on the page."""
    try:
        check_admin(url, source, key)
    except AdminCallFailed as exc:
        print(f"ripple dashboard: {exc}", file=sys.stderr)
        return 1
    page = f"{url.rstrip('/')}/_ripple/"
    signed_in = f"{page}#key={urllib.parse.quote(key or '', safe='')}"
    if open_browser and webbrowser.open(signed_in):
        print(f"Opened the dashboard at {page} in your browser, signed in.")
        return 0
    print(f"The dashboard, signed in (this address holds the admin key: keep it to yourself):\n{signed_in}")
    return 0
