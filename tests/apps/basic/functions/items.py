"""Index range queries, driven by tests (see tests/test_documents.py)."""

from typing import Any, Literal

from server import mutation, query


@mutation
async def insert_many(ctx, docs: list[dict[str, Any]]) -> list[str]:
    return [await ctx.db.insert("items", d) for d in docs]


@mutation
async def patch(ctx, id: str, fields: dict[str, Any]) -> None:
    await ctx.db.patch(id, fields)


@query
async def by_range(
    ctx,
    index: str,
    eq: list[Any],
    lower: tuple[Literal["gt", "gte"], Any] | None = None,
    upper: tuple[Literal["lt", "lte"], Any] | None = None,
    order: Literal["asc", "desc"] = "asc",
) -> list[str]:
    fields = {"by_a": ["a"], "by_a_b": ["a", "b"], "by_n": ["n"]}[index] + ["_creationTime"]

    def build(q):
        for f, v in zip(fields, eq, strict=False):
            q = q.eq(f, v)
        rf = fields[len(eq)]
        if lower:
            q = getattr(q, lower[0])(rf, lower[1])
        if upper:
            q = getattr(q, upper[0])(rf, upper[1])
        return q

    docs = await ctx.db.query("items").with_index(index, build).order(order).collect()
    return [d["_id"] for d in docs]


@query
async def page(ctx, paginationOpts: dict[str, Any], order: Literal["asc", "desc"] = "asc", min_n: int | None = None) -> dict:
    q = ctx.db.query("items").with_index("by_n", (lambda r: r.gte("n", min_n)) if min_n is not None else None)
    return await q.order(order).paginate(paginationOpts)


@query
async def filtered(ctx, parity: int, limit: int) -> list[int]:
    docs = await ctx.db.query("items").with_index("by_n").filter(lambda d: d["n"] % 2 == parity).take(limit)
    return [d["n"] for d in docs]


@query
async def first_last(ctx) -> list:
    first = await ctx.db.query("items").with_index("by_n").first()
    last = await ctx.db.query("items").with_index("by_n").order("desc").first()
    return [first and first["n"], last and last["n"]]


@mutation
async def clear(ctx) -> int:
    n = 0
    async for doc in ctx.db.query("items"):
        await ctx.db.delete(doc["_id"])
        n += 1
    return n


@mutation
async def clear_ids(ctx, ids: list[str]) -> None:
    for doc_id in ids:
        await ctx.db.delete(doc_id)
