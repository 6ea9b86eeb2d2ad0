"""Writes and reads for tests/test_import_export.py."""

from typing import Any, Literal

from server import Id, Int64, action, mutation, query


@mutation
async def add_author(ctx, name: str, age: float) -> str:
    return await ctx.db.insert("authors", {"name": name, "age": age})


@mutation
async def add_post(ctx, author: Id[Literal["authors"]], title: str, file: Id[Literal["_storage"]] | None = None) -> str:
    doc: dict[str, Any] = {"author": author, "title": title, "likes": Int64(len(title)), "data": title.encode()}
    if file is not None:
        doc["file"] = file
    return await ctx.db.insert("posts", doc)


@query
async def dump(ctx) -> dict[str, Any]:
    """Every document, and every file's metadata, in id order."""
    return {
        "authors": await ctx.db.query("authors").collect(),
        "posts": await ctx.db.query("posts").collect(),
        "files": await ctx.db.system.query("_storage").collect(),
    }


@query
async def author_named(ctx, name: str) -> dict[str, Any] | None:
    return await ctx.db.query("authors").with_index("by_name", lambda q: q.eq("name", name)).unique()


@action
async def store(ctx, text: str) -> str:
    return await ctx.storage.store(text.encode(), "text/plain")


@action
async def read(ctx, id: str) -> str | None:
    blob = await ctx.storage.get(id)
    return None if blob is None else (await blob.read()).decode()


@mutation
async def add_message(ctx, body: str, channel: str) -> str:
    return await ctx.db.insert("messages", {"body": body, "channel": channel})


@query
async def search(ctx, text: str, channel: str | None = None) -> list[dict[str, Any]]:
    """Every message matching `text` (within `channel`), most relevant first."""
    def build(q: Any) -> Any:
        q = q.search("body", text)
        return q if channel is None else q.eq("channel", channel)

    return await ctx.db.query("messages").with_search_index("search_body", build).collect()


@query
async def count_messages(ctx) -> int:
    return len(await ctx.db.query("messages").collect())


@action
async def nearest(ctx, vector: list[float], kind: str | None = None) -> list[dict[str, Any]]:
    flt = None if kind is None else (lambda q: q.eq("kind", kind))
    return await ctx.vector_search("points", "by_embedding", vector, limit=50, filter=flt)
