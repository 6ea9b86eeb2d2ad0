"""`print()` inside a function becomes that call's log lines (Convex `logLines`).

sys.stdout and sys.stderr are replaced once by proxies that send text to the log buffer of the
function running in the current asyncio context, and to the real stream otherwise.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any, TextIO

MAX_LINES = 256
MAX_LINE_CHARS = 32 * 1024


class LogBuffer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial: dict[str, str] = {}
        self.overflowed = False

    def write(self, level: str, text: str) -> None:
        pending = self._partial.get(level, "") + text
        *complete, rest = pending.split("\n")
        self._partial[level] = rest
        for line in complete:
            self.add(level, line)

    def add(self, level: str, message: str) -> None:
        if self.overflowed:
            return
        if len(self.lines) >= MAX_LINES - 1:
            self.lines.append(f"[ERROR] Log overflow (maximum {MAX_LINES}). Remaining log lines omitted.")
            self.overflowed = True
            return
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + " (truncated)"
        self.lines.append(f"[{level}] {message}")

    def extend(self, lines: list[str]) -> None:
        for line in lines:
            if self.overflowed:
                return
            if len(self.lines) >= MAX_LINES - 1:
                self.add("ERROR", "")
                return
            self.lines.append(line)

    def finish(self) -> list[str]:
        for level, rest in list(self._partial.items()):
            if rest:
                self.add(level, rest)
        self._partial.clear()
        return self.lines


current: contextvars.ContextVar[LogBuffer | None] = contextvars.ContextVar("ripple_logs", default=None)


class _Proxy:
    def __init__(self, real: TextIO, level: str) -> None:
        self._real = real
        self._level = level

    def write(self, text: str) -> int:
        buf = current.get()
        if buf is None:
            return self._real.write(text)
        buf.write(self._level, text)
        return len(text)

    def flush(self) -> None:
        if current.get() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install() -> None:
    """Idempotent: route print() in function code to the running function's log buffer."""
    if not isinstance(sys.stdout, _Proxy):
        sys.stdout = _Proxy(sys.stdout, "LOG")  # type: ignore[assignment]
    if not isinstance(sys.stderr, _Proxy):
        sys.stderr = _Proxy(sys.stderr, "ERROR")  # type: ignore[assignment]
