"""Functions with typed ids and numbers, validated as Convex validates."""

from typing import Any, Literal

from pydantic import BaseModel

from server import Id, mutation, query


@mutation(returns=Id["users"])  # the plain spelling, outside an annotation
async def add_user(ctx: Any, name: str) -> str:
    return await ctx.db.insert("users", {"name": name})


@mutation
async def add_video(ctx: Any, owner: Id[Literal["users"]], title: str, views: int = 0) -> str:
    return await ctx.db.insert("videos", {"owner": owner, "title": title, "views": views})


@mutation
async def insert(ctx: Any, table: str, doc: dict[str, Any]) -> str:
    """Any document, for the schema's validation to judge."""
    return await ctx.db.insert(table, doc)


@query
async def numbers(ctx: Any, n: int, x: float, counts: dict[str, int] | None = None,
                  flags: list[bool] | None = None) -> list[str]:
    """What the function received, as Python reprs (on the wire 2 and 2.0 look alike)."""
    return [repr(n), repr(x), repr(counts), repr(flags)]


class Page(BaseModel):
    owner: Id[Literal["users"]]
    limit: int = 10


@query(args=Page)
async def by_owner(ctx: Any, args: Page) -> list[str]:
    docs = await ctx.db.query("videos").with_index("by_owner", lambda q: q.eq("owner", args.owner)).take(args.limit)
    return [d["title"] for d in docs]


@query(returns=Id["videos"])
async def echo_video_id(ctx: Any, id: str) -> str:
    """Returns what it is given: the declared return type judges it."""
    return id


@query
async def get(ctx: Any, table: str, id: str) -> dict[str, Any] | None:
    return await ctx.db.get(table, id)


@query
async def by_id(ctx: Any, id: Id["videos"]) -> dict[str, Any] | None:  # noqa: F821 (see docs/functions.md)
    return await ctx.db.query("videos").with_index("by_id", lambda q: q.eq("_id", id)).unique()


@query
async def ids_after(ctx: Any, id: str, order: str = "asc") -> list[str]:
    docs = await ctx.db.query("videos").with_index("by_id", lambda q: q.gt("_id", id)).order(order).collect()
    return [d["_id"] for d in docs]


@query
async def all_by_id(ctx: Any, order: str = "asc") -> list[str]:
    return [d["_id"] for d in await ctx.db.query("videos").with_index("by_id").order(order).collect()]


@query
async def page_by_id(ctx: Any, cursor: str | None, n: int) -> dict[str, Any]:
    return await ctx.db.query("videos").with_index("by_id").paginate({"numItems": n, "cursor": cursor})


@mutation
async def rename(ctx: Any, id: Id[Literal["videos"]], title: str) -> dict[str, Any] | None:
    await ctx.db.patch("videos", id, {"title": title})
    return await ctx.db.get("videos", id)


@mutation
async def reset(ctx: Any, id: Id[Literal["videos"]]) -> dict[str, Any] | None:
    doc = await ctx.db.get("videos", id)
    await ctx.db.replace("videos", id, {"title": doc["title"], "owner": doc["owner"]})
    return await ctx.db.get(id)


@mutation
async def remove(ctx: Any, table: str, id: str) -> None:
    await ctx.db.delete(table, id)


@mutation
async def patch_in(ctx: Any, table: str, id: str, fields: dict[str, Any]) -> None:
    await ctx.db.patch(table, id, fields)
