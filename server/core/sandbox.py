"""Queries and mutations must be deterministic over the database: no network I/O.

An audit hook (PEP 578) refuses socket connections, DNS look-ups and subprocesses while a
query or mutation runs in the current asyncio context. Actions are not restricted.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any

from server.errors import ForbiddenOperation

running_kind: contextvars.ContextVar[str | None] = contextvars.ContextVar("ripple_kind", default=None)

_FORBIDDEN = {
    "socket.connect": "open a network connection",
    "socket.getaddrinfo": "resolve a host name",
    "socket.sendto": "send network packets",
    "socket.bind": "bind a socket",
    "urllib.Request": "make an HTTP request",
    "subprocess.Popen": "start a process",
    "os.system": "start a process",
    "os.exec": "start a process",
    "os.spawn": "start a process",
}
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    what = _FORBIDDEN.get(event)
    if what is None:
        return
    kind = running_kind.get()
    if kind in ("query", "mutation"):
        raise ForbiddenOperation(
            f"a {kind} may not {what} ({event}); do network I/O in an action instead"
        )


def install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
