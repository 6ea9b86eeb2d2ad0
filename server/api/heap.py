"""Handing freed memory back to the operating system after a connection that held a lot.

CPython allocates anything over 512 bytes (a response's JSON, a large string) with malloc, and
glibc's malloc keeps freed memory in its heaps for reuse instead of returning it: a process
that once held a few hundred megabytes for a slow client keeps that resident size after the
client is gone. `malloc_trim(0)` returns the free pages of every heap. It costs about 20 ms
per 300 MB freed, so it runs on a worker thread (ctypes releases the GIL), at most once per
`DELAY` seconds however many connections close, and only after a connection whose buffers
held at least `TRIM_AFTER_BYTES`. Elsewhere than Linux with glibc (musl has no malloc_trim,
macOS returns memory itself) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import platform
import sys
from collections.abc import Callable

log = logging.getLogger("ripple.sync")

TRIM_AFTER_BYTES = 4 * 1024 * 1024
DELAY = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_trim = _malloc_trim()
_scheduled: asyncio.TimerHandle | None = None
_running: set[asyncio.Task[None]] = set()


def available() -> bool:
    return _trim is not None


def connection_closed(held_bytes: int) -> None:
    """A connection ended whose buffers held `held_bytes` at most: trim the heap soon if that
    was a lot. Call from the event loop."""
    global _scheduled
    if _trim is None or held_bytes < TRIM_AFTER_BYTES:
        return
    loop = asyncio.get_running_loop()
    if _scheduled is not None and _scheduled.when() > loop.time() - 1.0:  # (a loop now closed never ran it)
        return
    _scheduled = loop.call_later(DELAY, _start)


def _start() -> None:
    global _scheduled
    _scheduled = None
    task = asyncio.get_running_loop().create_task(_run(), name="ripple-malloc-trim")
    _running.add(task)
    task.add_done_callback(_running.discard)


async def _run() -> None:
    assert _trim is not None
    try:
        await asyncio.to_thread(_trim, 0)
    except Exception:  # never worth a failure: at worst the memory stays with the process
        log.exception("malloc_trim failed")
