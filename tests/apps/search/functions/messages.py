from typing import Any

from server import mutation, query


def _search(ctx: Any, text: str, channel: str | None, author: str | None) -> Any:
    def build(q: Any) -> Any:
        q = q.search("body", text)
        if channel is not None:
            q = q.eq("channel", channel)
        if author is not None:
            q = q.eq("author", author)
        return q

    return ctx.db.query("messages").with_search_index("search_body", build)


@query
async def search(ctx, text: str, channel: str | None = None, author: str | None = None, limit: int = 10) -> list[dict]:
    return await _search(ctx, text, channel, author).take(limit)


@query
async def search_all(ctx, text: str, channel: str | None = None) -> list[dict]:
    return await _search(ctx, text, channel, None).collect()


@query
async def search_page(ctx, text: str, paginationOpts: dict, channel: str | None = None) -> dict:
    return await _search(ctx, text, channel, None).paginate(paginationOpts)


@query
async def search_long(ctx, text: str) -> list[dict]:
    return await _search(ctx, text, None, None).filter(lambda d: len(d["body"]) > 20).take(5)


@mutation
async def send(ctx, body: str, channel: str, author: str = "ann") -> str:
    return await ctx.db.insert("messages", {"body": body, "channel": channel, "author": author})


@mutation
async def send_many(ctx, messages: list[dict]) -> list[str]:
    return [await ctx.db.insert("messages", m) for m in messages]


@mutation
async def edit(ctx, id: str, body: str) -> None:
    await ctx.db.patch(id, {"body": body})


@mutation
async def move(ctx, id: str, channel: str) -> None:
    await ctx.db.patch(id, {"channel": channel})


@mutation
async def remove(ctx, id: str) -> None:
    await ctx.db.delete(id)


@mutation
async def note(ctx, text: str) -> str:
    return await ctx.db.insert("notes", {"text": text})


@mutation
async def send_and_search(ctx, body: str, channel: str, text: str) -> list[str]:
    await ctx.db.insert("messages", {"body": body, "channel": channel})
    found = await _search(ctx, text, channel, None).collect()
    return [d["body"] for d in found]
