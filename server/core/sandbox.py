"""Queries and mutations must be deterministic over the database: no network I/O.

An audit hook (PEP 578) refuses socket connections, DNS look-ups and starting processes while a
query or mutation runs in the current asyncio context. Actions are not restricted. An event loop
that does its I/O in C (uvloop) raises no audit events, so the loops the server runs on
(server/loops.py) call `refuse` from the loop methods that connect, resolve or start processes.

The check reads a context variable, so it covers what runs in the function's context: its own
code, tasks it creates, and `asyncio.to_thread` (which copies the context). Work handed to
`loop.run_in_executor` or a `threading.Thread` runs in another thread without the context
variable and is NOT checked. The hook is a guard against mistakes, not a security boundary.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import Any

from server.errors import ForbiddenOperation

running_kind: contextvars.ContextVar[str | None] = contextvars.ContextVar("ripple_kind", default=None)

_FORBIDDEN = {
    "socket.connect": "open a network connection",
    "socket.getaddrinfo": "resolve a host name",
    "socket.sendto": "send network packets",
    "socket.bind": "bind a socket",
    "urllib.Request": "make an HTTP request",
    # Every process-starting event of the CPython 3.11 audit events table.
    "subprocess.Popen": "start a process",
    "os.system": "start a process",
    "os.exec": "start a process",
    "os.spawn": "start a process",
    "os.posix_spawn": "start a process",  # also os.posix_spawnp
    "os.fork": "start a process",  # also os.spawn* and multiprocessing on POSIX
    "os.forkpty": "start a process",
    "os.startfile": "start a process",
    "os.startfile/2": "start a process",
    "pty.spawn": "start a process",
    "webbrowser.open": "start a process",
    "_winapi.CreateProcess": "start a process",
}
_installed = False


def refuse(what: str, operation: str) -> None:
    """Raise ForbiddenOperation if a query or mutation runs in this context (`what` it may not
    do, by `operation`); otherwise do nothing."""
    kind = running_kind.get()
    if kind in ("query", "mutation"):
        raise ForbiddenOperation(
            f"a {kind} may not {what} ({operation}); do network I/O in an action instead"
        )


@contextlib.contextmanager
def runtime_io() -> Iterator[None]:
    """Ripple's own I/O on behalf of the running function, which the function's kind does not
    restrict: e.g. the first `ctx.storage.generate_upload_url()` of a process reading the
    storage secret, which may open a pool connection from inside a mutation."""
    token = running_kind.set(None)
    try:
        yield
    finally:
        running_kind.reset(token)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    what = _FORBIDDEN.get(event)
    if what is not None:
        refuse(what, event)


def install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
