"""Vector search (docs/search.md, Vector search): documents with 8-dimensional embeddings in
genres, searched from actions."""

from typing import Any

from server import action, mutation, query


@mutation
async def add_many(ctx, docs: list[dict]) -> list[str]:
    return [await ctx.db.insert("docs", d) for d in docs]


@mutation
async def add_loose(ctx, doc: dict) -> str:
    return await ctx.db.insert("loose", doc)


@mutation
async def set_embedding(ctx, id: str, embedding: list[float]) -> None:
    await ctx.db.patch(id, {"embedding": embedding})


@mutation
async def remove(ctx, id: str) -> None:
    await ctx.db.delete(id)


@query
async def genres_of(ctx, ids: list[str]) -> list[str]:
    return [(await ctx.db.get(i))["genre"] for i in ids]


def _filter(genres: list[str] | None) -> Any:
    if not genres:
        return None
    if len(genres) == 1:
        return lambda q: q.eq("genre", genres[0])
    return lambda q: q.or_(*(q.eq("genre", g) for g in genres))


@action
async def search(ctx, vector: Any, limit: Any = None, genres: list[str] | None = None) -> list[dict]:
    """`genres`: none (no filter), one (q.eq) or several (q.or_ of q.eq)."""
    return await ctx.vector_search("docs", "by_embedding", vector, limit=limit, filter=_filter(genres))


@action
async def search_loose(ctx, vector: list[float], tag: Any = None) -> list[dict]:
    flt = None if tag is None else (lambda q: q.eq("tag", tag))
    return await ctx.vector_search("loose", "by_v", {"vector": vector, "filter": flt})


@action
async def search_with(ctx, table: str, index: str, vector: Any, limit: Any = None, filter_field: str | None = None,
                      filter_value: Any = None, terms: int = 0, chained: bool = False) -> list[dict]:
    """Any search, for the errors: `filter_field`: an eq on it; `terms`: an or_ of that many
    different eqs; `chained`: q.eq(...).eq(...)."""
    flt = None
    if chained:
        flt = lambda q: q.eq("genre", "a").eq("genre", "b")  # noqa: E731
    elif terms:
        flt = lambda q: q.or_(*(q.eq("genre", f"g{i}") for i in range(terms)))  # noqa: E731
    elif filter_field is not None:
        flt = lambda q: q.eq(filter_field, filter_value)  # noqa: E731
    return await ctx.vector_search(table, index, vector, limit=limit, filter=flt)


@query
async def search_in_query(ctx) -> list[dict]:
    return await ctx.vector_search("docs", "by_embedding", [1.0] * 8)
