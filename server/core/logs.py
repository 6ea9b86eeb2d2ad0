"""`print()` inside a function becomes that call's log lines (Convex `logLines`).

`builtins.print` is wrapped once: while a function runs in the current asyncio context, each
print call to stdout becomes one `[LOG] ...` line (to stderr: `[ERROR] ...`), like one
`console.log` call in Convex. Elsewhere print behaves as usual.
"""

from __future__ import annotations

import builtins
import contextvars
import sys
from typing import Any

MAX_LINES = 256
MAX_LINE_CHARS = 32 * 1024


class LogBuffer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.overflowed = False

    def add(self, level: str, message: str) -> None:
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + " (truncated)"
        self._append(f"[{level}] {message}")

    def extend(self, lines: list[str]) -> None:
        for line in lines:
            self._append(line)

    def _append(self, line: str) -> None:
        if self.overflowed:
            return
        if len(self.lines) >= MAX_LINES - 1:
            self.lines.append(f"[ERROR] Log overflow (maximum {MAX_LINES}). Remaining log lines omitted.")
            self.overflowed = True
            return
        self.lines.append(line)

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
