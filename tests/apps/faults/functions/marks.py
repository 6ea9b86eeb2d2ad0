"""Each mutation leaves one mark with a key the caller chose, so that a test can tell from the
table which mutations committed, and how many times."""

from server import mutation, query


@mutation
async def put(ctx, key: str) -> str:
    return await ctx.db.insert("marks", {"key": key})


@mutation
async def put_later(ctx, keys: list[str]) -> list[str]:
    """Schedule one `put` per key, to run at once."""
    return [await ctx.scheduler.run_after(0, put, {"key": key}) for key in keys]


@query
async def ids(ctx, key: str) -> list[str]:
    return [doc["_id"] for doc in await ctx.db.query("marks").with_index("by_key", lambda q: q.eq("key", key)).collect()]
