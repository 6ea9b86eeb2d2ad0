from typing import Any

from server import action


@action
async def search(ctx, vector: list[float], limit: int = 10, genre: str | None = None) -> list[dict[str, Any]]:
    flt = None if genre is None else (lambda q: q.eq("genre", genre))
    return await ctx.vector_search("docs", "by_embedding", vector, limit=limit, filter=flt)


@action
async def floor(ctx, vector: list[float], limit: int = 10, genre: str | None = None) -> list[dict[str, Any]]:
    """The same call without the search: what the HTTP API and an action cost."""
    return []
