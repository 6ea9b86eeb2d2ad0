"""Functions that hold the event loop without ever awaiting (tests/test_runaway.py)."""

import asyncio
import time

from server import action, mutation, query


def _spin(seconds: float | None = None) -> None:
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        pass


@query
async def spin(ctx) -> None:
    while True:
        pass


@mutation
async def sleep(ctx, seconds: float = 15) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 -- the point: it blocks the event loop


@mutation
async def spin_then_write(ctx, name: str, seconds: float = 3) -> None:
    await ctx.db.insert("counters", {"name": name, "value": 1})  # rolled back with the failure
    _spin(seconds)
    await ctx.db.insert("counters", {"name": name, "value": 2})


@query
async def stubborn(ctx) -> None:
    """Swallows every Exception and goes on."""
    while True:
        try:
            _spin()
        except Exception:
            pass


@action
async def spin_in_action(ctx) -> None:
    _spin()


@query
async def spin_in_task(ctx) -> None:
    """The spinning code runs in a task of its own (gather wraps it in one)."""
    async def spinner() -> None:
        _spin()

    await asyncio.gather(spinner())


@query
async def spin_at(ctx, name: str, at: int) -> int:
    """A counter's value; spins once it reaches `at` (a live query that runs away later)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    value = doc["value"] if doc else 0
    if value >= at:
        _spin()
    return value


@query
async def busy(ctx, seconds: float) -> float:
    """Holds the event loop for a while, under the limit: warned about, not interrupted."""
    time.sleep(seconds)  # noqa: ASYNC251 -- the point
    return seconds


@query
async def raises_timeout(ctx) -> None:
    """Its own TimeoutError: an error like any other, not a time limit of the function."""
    raise TimeoutError("gave up waiting for something")
