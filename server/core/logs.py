"""Function logs: `print()` and the `logging` module inside a function become that call's log
lines (Convex `logLines`).

`builtins.print` is wrapped once: while a function runs in the current asyncio context, each
print call to stdout becomes one `[LOG] ...` line (to stderr: `[ERROR] ...`), like one
`console.log` call in Convex. Elsewhere print behaves as usual.

`logging.Logger.handle` is wrapped once too: a record that a logger lets through (its level
decides, as usual) while a function runs becomes one line at Convex's level for it (`[DEBUG]`,
`[INFO]`, `[WARN]`, `[ERROR]`: `console.debug` ... `console.error`) instead of reaching the
process's handlers, so it is in the server log once, as a print is. Records of Ripple's own
loggers (`ripple.*`) and records outside functions are handled as usual.

This module is also the one place that decides where those lines go: each line is written to
the server log (logger `ripple.functions.log`, so `ripple dev` shows it in its terminal as it
happens, as `npx convex dev` streams logs), it is kept for the log stream an admin reads
(core/log_stream.py) in every mode, and for the client (`logLines`) only in dev mode; in
production clients get none, as from Convex.
"""

from __future__ import annotations

import builtins
import contextvars
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

MAX_LINES = 256
MAX_LINE_CHARS = 32 * 1024

stream = logging.getLogger("ripple.functions.log")


class LogBuffer:
    """The log lines of one function execution. `label` names it in the server log (e.g.
    `Q videos:list`); `keep`: whether its lines are kept for the client; `mask`: hides secrets
    in each line (environment variables' values: core/env.py, EnvValues.mask).

    `lines` are kept whatever `keep` says: the log stream's entry of the execution holds them
    (admins only). `shown` is what the client gets (`finish`). So is the rest of what the entry
    says: when it `started`, and, once it failed, the `error` a client sees and the `request_id`
    that message names (Runtime.failure)."""

    __slots__ = ("attempts", "count", "error", "keep", "label", "lines", "mask", "overflowed", "request_id", "shown",
                 "started")

    def __init__(self, label: str = "", keep: bool = True, mask: Callable[[str], str] | None = None) -> None:
        self.label = label
        self.keep = keep
        self.mask = mask
        self.lines: list[str] = []
        self.shown: list[str] = []
        self.count = 0
        self.overflowed = False
        self.started = time.perf_counter()
        self.attempts = 0
        self.error: str | None = None
        self.request_id: str | None = None

    def begin(self) -> None:
        """An attempt of the execution begins: a mutation retried after a conflict starts its lines
        again (those of the attempt that lost stay in the server log only); its start time stays."""
        self.attempts += 1
        if self.count:
            self.lines, self.shown, self.count, self.overflowed = [], [], 0, False
        self.error = self.request_id = None

    def add(self, level: str, message: str) -> None:
        if self.mask is not None:
            message = self.mask(message)
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + " (truncated)"
        line = f"[{level}] {message}"
        if self._append(line):
            stream.info("[%s] %s", self.label, line)

    def extend(self, lines: list[str], *, recorded: bool = False) -> None:
        """Lines of a nested call, already written to the server log by that call. `recorded`:
        that call has an entry of its own in the log stream (an action's ctx.run_query ...), so
        its lines join only what the client is shown; a call inside the caller's transaction
        has none, and its lines are the caller's."""
        for line in lines:
            self._append(line, recorded)

    def _append(self, line: str, recorded: bool = False) -> bool:
        if self.overflowed:
            return False
        if self.count >= MAX_LINES - 1:
            line = f"[ERROR] Log overflow (maximum {MAX_LINES}). Remaining log lines omitted."
            stream.info("[%s] %s", self.label, line)
            self.overflowed = True
        self.count += 1
        if not recorded or self.overflowed:
            self.lines.append(line)
        if self.keep:
            self.shown.append(line)
        return not self.overflowed

    def finish(self) -> list[str]:
        """The lines the client gets: all of them in dev mode (`keep`), none otherwise."""
        return self.shown


current: contextvars.ContextVar[LogBuffer | None] = contextvars.ContextVar("ripple_logs", default=None)
_real_print = builtins.print


def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    buf = current.get()
    if buf is None or (file is not None and file is not sys.stdout and file is not sys.stderr):
        _real_print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    text = (" " if sep is None else sep).join(str(a) for a in args)
    buf.add("ERROR" if file is sys.stderr else "LOG", text)


def level_of(levelno: int) -> str:
    """Convex's level for a `logging` level (Convex has no CRITICAL: that is an error too)."""
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARN"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


_formatter = logging.Formatter()
_real_handle = logging.Logger.handle


def _text(record: logging.LogRecord) -> str:
    """The message (`msg % args`, formatted with str) and, as logging's default formatter adds
    them, the traceback of `exc_info` and the stack of `stack_info`."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + _formatter.formatException(record.exc_info)
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + _formatter.formatStack(record.stack_info)
    return text


def _handle(self: logging.Logger, record: logging.LogRecord) -> None:
    buf = current.get()
    if buf is None or record.name == "ripple" or record.name.startswith("ripple."):
        _real_handle(self, record)
        return
    if self.disabled or not self.filter(record):
        return
    buf.add(level_of(record.levelno), _text(record))


def install() -> None:
    """Idempotent: route print() and logging records in function code to the running function's
    log buffer."""
    if builtins.print is not _print:
        builtins.print = _print
    if logging.Logger.handle is not _handle:
        logging.Logger.handle = _handle  # type: ignore[method-assign]
