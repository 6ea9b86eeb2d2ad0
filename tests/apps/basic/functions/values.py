from typing import Any

from server import Int64, mutation, query


@query
async def echo(ctx, value: Any) -> Any:
    return value


@query
async def add_one(ctx, x: Int64) -> Int64:
    return Int64(x + 1)


@query
async def describe(ctx, value: Any) -> str:
    return type(value).__name__


@mutation
async def store_message(ctx, author: str, body: str, big: Int64 | None = None, blob: bytes | None = None) -> dict:
    doc_id = await ctx.db.insert("messages", {"author": author, "body": body, "big": big, "blob": blob})
    return await ctx.db.get(doc_id)
