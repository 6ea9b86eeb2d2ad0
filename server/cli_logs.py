"""`ripple logs`: a running server's function logs as they happen, as `npx convex logs` shows a
deployment's: one line per log line of a function, one per failure (in red on a terminal), and
with `--success` one per successful execution too. It long-polls `GET /_ripple/logs`
(server/api/logs_http.py, docs/logs.md) with the admin key, rides out a server restart (saying
so on stderr), and ends with status 0 on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from server.core.backoff import reconnect_delays
from server.portable_cli import error_message, problem

POLL_SECONDS = 30  # the server's wait per request; the HTTP timeout allows for it
MAX_PAGE = 10_000  # the server's largest answer
PREFIXES = {"query": "Q", "mutation": "M", "action": "A", "httpAction": "H"}
RED, YELLOW, GREEN, DIM, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[2m", "\033[0m"
LEVEL_COLORS = {"ERROR": RED, "WARN": YELLOW}


class Refused(Exception):
    """The server answered, and will answer the same again: a bad key, a bad request."""


@dataclass
class Show:
    """What to print: `success` adds a line per successful execution; `jsonl` prints each
    entry as it came, one JSON object a line; `color`: ANSI colours (a terminal without NO_COLOR)."""

    success: bool = False
    jsonl: bool = False
    color: bool = False

    def paint(self, text: str, color: str | None) -> str:
        return f"{color}{text}{RESET}" if self.color and color else text

    def lines(self, entry: dict[str, Any]) -> Iterator[str]:
        """An entry as `npx convex logs` prints one: its log lines, then its failure (or, with
        `success`, that it succeeded), each after the time and `M videos:create`."""
        if self.jsonl:
            yield json.dumps(entry, ensure_ascii=False)
            return
        stamp = datetime.fromtimestamp(entry["timestamp"] / 1000.0).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        head = f"{self.paint(stamp, DIM)} {PREFIXES.get(entry['kind'], '?')} {entry['function']}"
        for line in entry["lines"]:
            yield f"{head}  " + self.paint(f"[{line['level']}] {line['message']}", LEVEL_COLORS.get(line["level"]))
        took = f"{entry['durationMs']:.1f}ms"
        if entry["status"] == "failure":
            yield f"{head}  " + self.paint(f"failure {took}  {entry['error']}", RED)
        elif self.success:
            yield f"{head}  " + self.paint(f"success {took}", GREEN)


def fetch(url: str, key: str, cursor: int | str | None, timeout: float, limit: int = 1000) -> dict[str, Any]:
    """One answer of `GET /_ripple/logs`; Refused for a 4xx, OSError (URLError) when there is no
    server, or it is starting or stopping."""
    query = {"timeout": f"{timeout:g}", "limit": str(limit)}
    if cursor is not None:
        query["cursor"] = str(cursor)
    request = urllib.request.Request(f"{url.rstrip('/')}/_ripple/logs?{urllib.parse.urlencode(query)}",
                                     headers={"Authorization": f"Convex {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout + 30) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise Refused(f"{exc.code}: {error_message(exc)}") from None
        raise OSError(f"{exc.code}: {error_message(exc)}") from None


def history(url: str, key: str, count: int | None) -> tuple[list[dict[str, Any]], int | str]:
    """The last `count` entries the server keeps (None: all of them), and the cursor after them."""
    entries: list[dict[str, Any]] = []
    cursor: int | str = 0
    while True:
        page = fetch(url, key, cursor, 0, MAX_PAGE)
        entries.extend(page["entries"])
        cursor = page["cursor"]
        if len(page["entries"]) < MAX_PAGE:
            break
    return (entries if count is None else entries[-count:] if count > 0 else []), cursor


def follow(url: str, source: str, key: str | None, show: Show, backlog: int | None = 0,
           out: TextIO | None = None) -> int:
    """Print entries as they come until interrupted (`backlog`: how many kept ones to print
    first, None: all). Returns the exit status."""
    refusal = problem(url, source, key)
    if refusal:
        print(f"ripple logs: {refusal}", file=sys.stderr)
        return 1
    assert key is not None
    out = out or sys.stdout

    def emit(entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            for line in show.lines(entry):
                print(line, file=out)
        out.flush()

    # SIGTERM ends it as Ctrl-C does: nothing is left to undo, everything printed was flushed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cursor: int | str | None = None  # a string from a group of workers (server/api/worker_group.py)
    lost: str | None = None  # why the server is out of reach, while it is
    delays = reconnect_delays(first=0.5, cap=5.0)
    try:
        while True:
            try:
                if cursor is None and backlog != 0:
                    entries, cursor = history(url, key, backlog)
                    emit(entries)
                page = fetch(url, key, cursor, POLL_SECONDS)
            except Refused as exc:
                print(f"ripple logs: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:  # urllib's URLError, a reset connection, a 5xx of a starting server
                reason = str(getattr(exc, "reason", exc))
                if lost is None:
                    print(f"ripple logs: lost the server at {url} ({reason}); reconnecting", file=sys.stderr, flush=True)
                    if cursor is None:
                        print(f"ripple logs: is a Ripple server running there ({source})? start one with "
                              "`ripple dev`, or choose it with --url or RIPPLE_URL", file=sys.stderr, flush=True)
                lost = reason
                time.sleep(next(delays))
                continue
            if lost is not None:
                print(f"ripple logs: reconnected to {url}", file=sys.stderr, flush=True)
                lost, delays = None, reconnect_delays(first=0.5, cap=5.0)
            if page["dropped"]:
                print(f"ripple logs: {page['dropped']} entries were dropped before they could be shown "
                      "(the server keeps a bounded number)", file=sys.stderr, flush=True)
            emit(page["entries"])
            cursor = page["cursor"]
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `ripple logs | head`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")
