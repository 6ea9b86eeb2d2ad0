"""Large query results (tests/test_large_results.py): Transitions that go out as TransitionChunk
parts. Each result stays within Convex's 16 MiB return value; a Transition of several is larger."""

from server import query

# 7 bytes of UTF-8 in 3 characters: cuts every 5,000,000 bytes fall inside multi-byte characters.
FILL = "\u00e9\U0001f600x"


@query
async def text(ctx, name: str, size: int, part: int = 0) -> list[str]:
    """About `size` bytes of JSON in strings of about 14,000 bytes, each starting with the value of
    counter `name` and `part`, so a write to the counter changes the result."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    value = doc["value"] if doc else 0
    return [f"{value}:{part}:{i}:" + FILL * 1999 for i in range(max(1, size // 14_000))]
