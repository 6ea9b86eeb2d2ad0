"""RunFunction-like calls of bench/loadgen.py: a point query and a single-document insert."""

from typing import Any

from server import mutation, query


@query
async def get(ctx, key: str, cacheBreaker: int = 0) -> dict[str, Any] | None:
    """The document with `key` (an index point lookup), or None. `cacheBreaker` is unused: a
    fresh value per call makes every call a query cache miss, as in Convex's scenario."""
    return await ctx.db.query("points").with_index("by_key", lambda q: q.eq("key", key)).unique()


@mutation
async def insert(ctx, key: str, value: int) -> str:
    """Insert one small document."""
    return await ctx.db.insert("points", {"key": key, "value": value})


@mutation
async def seed(ctx, prefix: str, start: int, count: int) -> int:
    """Insert `count` documents with keys f"{prefix}{i:06d}" for i in [start, start + count)."""
    for i in range(start, start + count):
        await ctx.db.insert("points", {"key": f"{prefix}{i:06d}", "value": i})
    return count
