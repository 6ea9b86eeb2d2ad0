"""Functions of bench/abuse.py: the unaffected client's counter (`get`, `inc`) and what the
abusive clients run: slow queries (awaiting), blocking queries (holding the event loop) and a
mutation with a large result."""

import asyncio
import time

import server
from server import mutation, query


async def _value(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    return doc["value"] if doc else 0


@query
async def get(ctx, name: str) -> int:
    return await _value(ctx, name)


@mutation
async def inc(ctx, name: str) -> int:
    """Add one to the counter `name`; returns the new value (the probe looks for it)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": 1})
        return 1
    await ctx.db.patch(doc["_id"], {"value": doc["value"] + 1})
    return doc["value"] + 1


@query
async def slow_get(ctx, name: str, seconds: float, tag: int) -> int:
    """The counter, after awaiting `seconds` (`tag` only makes distinct subscriptions)."""
    value = await _value(ctx, name)
    await asyncio.sleep(seconds)
    return value


@query
async def busy_get(ctx, name: str, seconds: float, tag: int) -> int:
    """The counter, after spinning the CPU for `seconds` without awaiting: blocking code."""
    value = await _value(ctx, name)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return value


@mutation
async def big(ctx, n: int) -> str:
    """A result of `n` bytes."""
    return "x" * n


@query
async def server_file(ctx) -> str:
    """Where the serving process imported `server` from: the benchmark checks the tree."""
    return server.__file__
