"""Functions the HTTP actions of this app call through ctx.run_mutation / ctx.run_query."""

from server import internal_mutation, mutation, query


@mutation
async def add(ctx, text: str) -> str:
    return await ctx.db.insert("notes", {"text": text})


@query
async def texts(ctx) -> list[str]:
    return [doc["text"] for doc in await ctx.db.query("notes").collect()]


@internal_mutation
async def record_webhook(ctx, webhook_id: str, event: str) -> bool:
    """Record a webhook once: False for an id seen before (a replay within the tolerance)."""
    seen = await ctx.db.query("webhooks").with_index("by_webhook_id", lambda q: q.eq("webhook_id", webhook_id)).first()
    if seen is not None:
        return False
    await ctx.db.insert("webhooks", {"webhook_id": webhook_id, "event": event})
    return True


@query
async def webhook_types(ctx) -> list[str]:
    return [doc["event"] for doc in await ctx.db.query("webhooks").collect()]
