"""Functions measured by bench/search.py: a text search (with and without a channel filter) and
the batched insert that loads the documents."""

from typing import Any

from server import mutation, query


@query
async def search(ctx, text: str, channel: str | None = None) -> list[dict[str, Any]]:
    """The 10 most relevant messages for `text`, within `channel` when it is given."""

    def build(q: Any) -> Any:
        q = q.search("body", text)
        return q if channel is None else q.eq("channel", channel)

    return await ctx.db.query("messages").with_search_index("search_body", build).take(10)


@mutation
async def insert_many(ctx, messages: list[dict[str, Any]]) -> int:
    """Insert `messages` ({"body", "channel"} each) in one transaction; returns how many."""
    for message in messages:
        await ctx.db.insert("messages", message)
    return len(messages)
