"""Function logs: `print()` inside a function becomes that call's log lines (Convex `logLines`).

`builtins.print` is wrapped once: while a function runs in the current asyncio context, each
print call to stdout becomes one `[LOG] ...` line (to stderr: `[ERROR] ...`), like one
`console.log` call in Convex. Elsewhere print behaves as usual.

This module is also the one place that decides where those lines go: each line is written to
the server log (logger `ripple.functions.log`, so `ripple dev` shows it in its terminal as it
happens, as `npx convex dev` streams logs), and it is kept for the client (`logLines`) only in
dev mode; in production clients get none, as from Convex.
"""

from __future__ import annotations

import builtins
import contextvars
import logging
import sys
from typing import Any

MAX_LINES = 256
MAX_LINE_CHARS = 32 * 1024

stream = logging.getLogger("ripple.functions.log")


class LogBuffer:
    """The log lines of one function execution. `label` names it in the server log (e.g.
    `Q videos:list`); `keep`: whether its lines are kept for the client."""

    def __init__(self, label: str = "", keep: bool = True) -> None:
        self.label = label
        self.keep = keep
        self.lines: list[str] = []
        self.count = 0
        self.overflowed = False

    def add(self, level: str, message: str) -> None:
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + " (truncated)"
        line = f"[{level}] {message}"
        if self._append(line):
            stream.info("[%s] %s", self.label, line)

    def extend(self, lines: list[str]) -> None:
        """Lines of a nested call, already written to the server log by that call."""
        for line in lines:
            self._append(line)

    def _append(self, line: str) -> bool:
        if self.overflowed:
            return False
        if self.count >= MAX_LINES - 1:
            line = f"[ERROR] Log overflow (maximum {MAX_LINES}). Remaining log lines omitted."
            stream.info("[%s] %s", self.label, line)
            self.overflowed = True
        self.count += 1
        if self.keep:
            self.lines.append(line)
        return not self.overflowed

    def finish(self) -> list[str]:
        return self.lines


current: contextvars.ContextVar[LogBuffer | None] = contextvars.ContextVar("ripple_logs", default=None)
_real_print = builtins.print


def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    buf = current.get()
    if buf is None or (file is not None and file is not sys.stdout and file is not sys.stderr):
        _real_print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    text = (" " if sep is None else sep).join(str(a) for a in args)
    buf.add("ERROR" if file is sys.stderr else "LOG", text)


def install() -> None:
    """Idempotent: route print() in function code to the running function's log buffer."""
    if builtins.print is not _print:
        builtins.print = _print
