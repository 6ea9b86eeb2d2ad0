"""Documents at and past Convex's limits, built inside the function (tests/test_doc_limits.py)."""

from typing import Any

from server import mutation, query
from server.errors import LimitExceeded


def shaped(kind: str, n: int) -> dict[str, Any]:
    """A document of the `items` table (any object) with `n` of `kind`."""
    if kind == "string":  # a string of n bytes
        return {"s": "x" * n}
    if kind == "fields":  # n top-level fields
        return {f"f{i}": i for i in range(n)}
    if kind == "inner_fields":  # an object with n fields
        return {"o": {f"f{i}": i for i in range(n)}}
    if kind == "depth":  # a document nested n levels deep, the document object included
        value: Any = []
        for _ in range(n - 2):
            value = [value]
        return {"deep": value}
    if kind == "array":
        return {"xs": [0] * n}
    raise ValueError(kind)


@mutation
async def store(ctx, kind: str, n: int) -> str:
    return await ctx.db.insert("items", shaped(kind, n))


@mutation
async def store_doc(ctx, doc: dict[str, Any]) -> str:
    return await ctx.db.insert("items", doc)


@mutation
async def store_named(ctx, name: str, nested: bool = False) -> str:
    """A field named `name` (a nested one: not a validated top-level name)."""
    return await ctx.db.insert("items", {"o": {name: 1}} if nested else {name: 1})


@mutation
async def patch_string(ctx, id: str, n: int) -> None:
    await ctx.db.patch(id, {"s": "y" * n})


@mutation
async def small_then_big(ctx, tag: str) -> None:
    """The first insert is rolled back with the mutation the second one fails."""
    await ctx.db.insert("items", {"a": tag})
    await ctx.db.insert("items", shaped("string", 2 << 20))


@mutation
async def write_bytes(ctx, docs: int, size: int, catch: bool = False) -> int:
    """Insert `docs` documents of about `size` bytes; `catch`: carry on past a refusal."""
    written = 0
    for i in range(docs):
        try:
            await ctx.db.insert("items", {"n": i, "s": "z" * size})
            written += 1
        except LimitExceeded:
            if not catch:
                raise
    return written


@query
async def read_all(ctx) -> int:
    return len(await ctx.db.query("items").collect())


@query
async def count_small(ctx, tag: str) -> int:
    return len([d for d in await ctx.db.query("items").collect() if d.get("a") == tag])


@query
async def get(ctx, id: str) -> Any:
    return await ctx.db.get(id)
