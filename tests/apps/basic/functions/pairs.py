"""Two fields always written together: readers must never see them differ."""

import asyncio
import time

from server import mutation, query


@mutation
async def setup(ctx) -> str:
    return await ctx.db.insert("pairs", {"left": 0, "right": 0})


@mutation
async def bump(ctx, id: str) -> None:
    doc = await ctx.db.get(id)
    await ctx.db.patch(id, {"left": doc["left"] + 1})
    await ctx.db.patch(id, {"right": doc["right"] + 1})


@mutation
async def bump_two_docs(ctx, first: str, second: str) -> None:
    for doc_id in (first, second):
        doc = await ctx.db.get(doc_id)
        await ctx.db.replace(doc_id, {"left": doc["left"] + 1, "right": doc["right"] + 1})


@query
async def read(ctx, id: str) -> dict:
    return await ctx.db.get(id)


@query
async def read_two(ctx, first: str, second: str) -> list:
    return [await ctx.db.get(first), await ctx.db.get(second)]


@query
async def read_two_swallowing(ctx, first: str, second: str) -> list:
    """Function code that catches everything around its second read must still get a correct
    result (the one-statement first attempt is abandoned however its signal is handled)."""
    out = [await ctx.db.get(first)]
    try:
        out.append(await ctx.db.get(second))
    except BaseException:
        out.append("swallowed")
    return out


@query
async def read_slowly(ctx, id: str, seconds: float = 0.0, tag: int = 0) -> dict:
    """A pair, read after `seconds` (live-query parallelism tests: the read comes late in the
    run; `tag` makes otherwise equal subscriptions distinct executions)."""
    await asyncio.sleep(seconds)
    return await ctx.db.get(id)


@query
async def read_busily(ctx, id: str, seconds: float = 0.0, tag: int = 0) -> dict:
    """A pair, read after keeping the event loop busy for `seconds` (CPU, no await)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass
    return await ctx.db.get(id)
