"""The log stream: one entry per function execution that finished, kept in this process's memory
for admins to read as it grows (`GET /_ripple/logs`, `ripple logs`, a dashboard's log view), as
`npx convex logs` and Convex's dashboard show them. docs/logs.md describes the entries.

Where entries come from, one place per kind (Runtime): a query where it runs at the top of its
transaction (`Runtime.query_in`: clients' queries, live-query runs, an action's ctx.run_query),
a mutation once its last attempt ended (`Runtime.retried_mutation`: clients, actions and the
scheduler), an action (`Runtime._run_action`), an HTTP action (server/api/http_actions.py).
A query or mutation that a query or mutation calls (ctx.run_query inside a transaction) is part
of its caller's execution: its lines are the caller's, as in Convex.

Recording is on the path of every call, so `record` formats nothing: it keeps the execution's
list of lines and a few numbers, and JSON is made only when a reader asks. Memory is bounded by a
count and by an estimate of the bytes (lines and error text); the oldest entries go first, and a
reader whose cursor fell behind them is told how many it missed (`dropped`). Readers wait on an
event that the next entry sets: no polling.

Which transport started a call (`caller`) is a context variable that transports set once per
task (server/api/app.py: `websocket`, `http`; the live-query tick: `live`; the scheduler:
`scheduler`, `cron`; an action's nested call: `action`), so no call signature carries it.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

from server.core.logs import LogBuffer
from server.errors import FunctionFailure

KINDS = ("query", "mutation", "action", "httpAction")
SYSTEM_PREFIX = "_system/"  # Ripple's own functions (a dashboard's), not the app's: never recorded, as in Convex
ENTRY_OVERHEAD = 256  # bytes an entry costs besides its lines and error text (an estimate)
CANCELED = "Canceled: the call ended before the function did (its client left, or the server is shutting down)"
INTERNAL = "Server Error: the call failed inside Ripple (see the server log)"

caller: contextvars.ContextVar[str] = contextvars.ContextVar("ripple_caller", default="internal")


@dataclass(slots=True)
class Entry:
    """One finished execution. `lines` are the buffer's own list, formatted as `[LEVEL] text`.
    `request_id` None: no redacted failure names one, and the first reader draws a fresh one
    (recording stays cheap)."""

    seq: int
    timestamp: float  # ms since the epoch, when it finished
    kind: str
    function: str
    duration_ms: float
    request_id: str | None
    lines: list[str]
    error: str | None
    caller: str
    size: int
    cached: bool = False  # answered from the query cache (server/core/query_cache.py)

    def to_json(self) -> dict[str, Any]:
        """The entry as the endpoint sends it (the contract docs/logs.md states)."""
        if self.request_id is None:
            self.request_id = secrets.token_hex(8)
        return {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "kind": self.kind,
            "function": self.function,
            "status": "success" if self.error is None else "failure",
            "durationMs": round(self.duration_ms, 3),
            "requestId": self.request_id,
            "lines": [split_line(line) for line in self.lines],
            "error": self.error,
            "cached": self.cached,
            "caller": self.caller,
        }


def split_line(line: str) -> dict[str, str]:
    """`[WARN] text` (logs.LogBuffer's format) -> {"level": "WARN", "message": "text"}."""
    level, _, message = line[1:].partition("] ")
    return {"level": level, "message": message}


@dataclass
class Page:
    """What one read answers: the entries after its cursor, the cursor to read on from, and how
    many entries between the two were dropped before the reader got to them."""

    entries: list[Entry]
    cursor: int
    dropped: int

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries], "cursor": self.cursor, "dropped": self.dropped}


class LogStream:
    """The newest entries of this process, at most `max_entries` and about `max_bytes` (the
    newest entry is kept even if it alone is larger). Sequence numbers start at 1."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("the log stream keeps at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self._bytes = 0
        self._seq = 0
        self._wake: asyncio.Event | None = None  # made by the first reader that waits, set by the next entry
        self._closed = False
        self.waiting = 0  # readers waiting for an entry now (the gauge ripple_log_readers)

    @property
    def last_seq(self) -> int:
        return self._seq

    def record(self, kind: str, function: str, buffer: LogBuffer, exc: BaseException | None = None) -> None:
        """An execution of `function` ended; `buffer` holds its lines, start, and error if it
        failed; `exc`: what ended it when that is no failure the runtime made (a cancellation,
        the database staying away)."""
        if function.startswith(SYSTEM_PREFIX):
            return
        error = buffer.error
        if error is None and exc is not None:
            if isinstance(exc, FunctionFailure):
                error = exc.message
            else:
                error = CANCELED if isinstance(exc, asyncio.CancelledError) else INTERNAL
        self._append(kind, function, (time.perf_counter() - buffer.started) * 1000.0, buffer.request_id, buffer.lines,
                     error, False)

    def record_cached(self, kind: str, function: str, lines: list[str]) -> None:
        """A call answered from the query cache with the result of a run whose entry had
        `lines`: an entry with those lines, `cached`, taking no time (it ran nothing)."""
        if not function.startswith(SYSTEM_PREFIX):
            self._append(kind, function, 0.0, None, lines, None, True)

    def _append(self, kind: str, function: str, duration_ms: float, request_id: str | None, lines: list[str],
                error: str | None, cached: bool) -> None:
        size = ENTRY_OVERHEAD + len(function) + (sum(map(len, lines)) if lines else 0) + (len(error) if error else 0)
        self._seq += 1
        self._entries.append(Entry(self._seq, time.time() * 1000.0, kind, function, duration_ms, request_id, lines,
                                   error, caller.get(), size, cached))
        self._bytes += size
        while len(self._entries) > self.max_entries or (self._bytes > self.max_bytes and len(self._entries) > 1):
            self._bytes -= self._entries.popleft().size
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def page(self, cursor: int, limit: int) -> Page:
        """The entries after `cursor`, at most `limit`, without waiting."""
        entries = self._entries
        if not entries or cursor >= self._seq:
            return Page([], cursor, 0)
        first = entries[0].seq
        skip = max(0, cursor + 1 - first)
        chosen = list(islice(entries, skip, skip + limit))
        return Page(chosen, chosen[-1].seq, max(0, first - 1 - cursor))

    async def read(self, cursor: int | None, limit: int, timeout: float) -> Page:
        """The entries after `cursor` (None: after the newest one now, i.e. from here on), at
        once if there are any, else as soon as one is recorded, else none after `timeout`
        seconds. A cursor past the newest entry was handed out by another process (this one
        restarted since, or a load balancer chose another): it reads from the start."""
        if cursor is None:
            cursor = self._seq
        elif cursor > self._seq:
            cursor = 0
        deadline = time.monotonic() + timeout
        while True:
            page = self.page(cursor, limit)
            remaining = deadline - time.monotonic()
            if page.entries or self._closed or remaining <= 0:
                return page
            if self._wake is None:
                self._wake = asyncio.Event()
            self.waiting += 1
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return self.page(cursor, limit)
            finally:
                self.waiting -= 1

    def close(self) -> None:
        """The server is stopping: waiting readers answer now, and later ones at once, so that an
        open `ripple logs` does not hold up the shutdown."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
            self._wake = None
