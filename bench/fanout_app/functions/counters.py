"""Functions driven by bench/fanout.py.

`get(name)` reads one index range (by_name == name), so a write to counter `name` touches
exactly the subscriptions of `get(name)` and nothing else; `put(name, value)` is that write."""

from server import mutation, query


@query
async def get(ctx, name: str) -> int:
    """The counter's value (a point range on the by_name index)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    return doc["value"] if doc else 0


@mutation
async def put(ctx, name: str, value: int) -> None:
    """Overwrite one counter; the writer picks a value never used before, so every write changes
    the result of exactly one query."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": value})
    else:
        await ctx.db.patch(doc["_id"], {"value": value})


@mutation
async def seed(ctx, prefix: str, start: int, count: int) -> int:
    """Create counters f"{prefix}{i}" for i in [start, start + count), all at 0."""
    for i in range(start, start + count):
        await ctx.db.insert("counters", {"name": f"{prefix}{i}", "value": 0})
    return count


@query
async def with_shared(ctx, name: str, shared: str) -> int:
    """The `shared` counter's value, read together with the counter `name` (case (d): every
    subscriber's query reads the shared document plus a key of its own, so the queries are
    distinct executions and one write to the shared counter changes all their results)."""
    own = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", shared)).unique()
    return (doc["value"] if doc else 0) + (own["value"] if own else 0)
