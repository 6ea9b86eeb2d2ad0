"""Read-then-write increments for tests/test_hot_keys.py."""

from server import ConvexError, mutation, query


@query
async def get(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    return doc["value"] if doc else 0


@mutation
async def inc(ctx, name: str) -> int:
    """The counter `name` + 1 (created at 1)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": 1})
        return 1
    await ctx.db.patch(doc["_id"], {"value": doc["value"] + 1})
    return doc["value"] + 1


@mutation
async def inc_below(ctx, name: str, limit: int) -> int:
    """inc, failing (and so writing nothing) when the new value would pass `limit`."""
    value = await inc.handler(ctx, name=name)
    if value > limit:
        raise ConvexError({"code": "OverLimit", "value": value})
    return value
