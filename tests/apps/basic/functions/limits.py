"""Functions for the per-connection limit tests (tests/test_ws_limits.py)."""

import asyncio
from typing import Any

from server import action, mutation


def chunks(size: int, tag: int) -> Any:
    """About `size` bytes of JSON as 8 KB strings: heap allocations (below glibc's mmap
    threshold), the kind of memory a process keeps after freeing it unless it is trimmed."""
    return [f"{tag}:{i}:" + "x" * 8000 for i in range(max(1, size // 8000))]


@mutation
async def blob(ctx, size: int, tag: int = 0):  # type: ignore[no-untyped-def]
    """A large result that writes nothing: what a slow reader's outbox fills with."""
    return chunks(size, tag)


@action
async def blob_action(ctx, size: int, tag: int = 0):  # type: ignore[no-untyped-def]
    return chunks(size, tag)


@action
async def sleep(ctx, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@mutation
async def slow(ctx, seconds: float, pad: str = "") -> str:
    """Keeps the connection's mutation worker busy, so that what follows waits in its queue."""
    await asyncio.sleep(seconds)
    return "done"


@action
async def sleep_then_count(ctx, seconds: float, name: str) -> int:
    """An action with an effect after a while: cancelled with its connection, it never counts."""
    await asyncio.sleep(seconds)
    return await ctx.run_mutation("counters:inc", {"name": name})


@action
async def describe(ctx, value: Any) -> str:
    return type(value).__name__
