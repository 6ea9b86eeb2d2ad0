"""Functions measured by bench/hot_keys.py: a read-then-write increment, seeding and totals."""

from typing import Any

from server import ConvexError, mutation, query


@mutation
async def increment(ctx, name: str) -> int:
    """Read the counter `name` by index and patch its count + 1; the new count."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is None:
        raise ConvexError({"code": "NoSuchCounter", "name": name})
    await ctx.db.patch(doc["_id"], {"count": doc["count"] + 1})
    return doc["count"] + 1


@mutation
async def seed(ctx, prefix: str, start: int, count: int) -> int:
    """Counters f"{prefix}{i}" for i in [start, start + count), each at 0."""
    for i in range(start, start + count):
        await ctx.db.insert("counters", {"name": f"{prefix}{i}", "count": 0})
    return count


@query
async def totals(ctx, prefix: str) -> dict[str, Any]:
    """Every counter's count by name (for the benchmark's check)."""
    docs = await ctx.db.query("counters").collect()
    return {d["name"]: d["count"] for d in docs if d["name"].startswith(prefix)}
