"""Decoding large requests on a worker thread, so that the event loop keeps serving.

Turning a request's JSON into Python values (server/core/values.py) is Python code: a 16 MiB
argument can take a second or more, and on the event loop that second stalls every other
request and websocket of the process. Above `THREAD_BYTES` it runs on a worker thread instead.
The GIL still lets one thread run Python at a time, but a thread running Python code hands it
over every switch interval (5 ms), so the loop keeps answering, a little slower, while the big
decode goes on. (orjson's parse itself is C that keeps the GIL to the end: it costs the loop
its few hundred milliseconds on any thread, so it is not worth moving alone.)

One thread: a second would not decode faster (the GIL), it would only take more of the loop's
turns. Large requests wait for it in arrival order. Small ones are decoded in place: below
`THREAD_BYTES` (a few milliseconds of work) the hop to a thread would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

THREAD_BYTES = 256 * 1024

P = ParamSpec("P")
T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def _decoder() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ripple-decode")
    return _executor


async def decode(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, on the decode thread when `size` (the bytes it decodes) is at
    least THREAD_BYTES, else right here. `fn` must not touch state the loop uses."""
    if size < THREAD_BYTES:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoder(), functools.partial(fn, *args, **kwargs))
