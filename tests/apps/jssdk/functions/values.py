"""Values the JS SDK encodes and decodes: int64 (bigint), bytes, special floats; stored in a
document and read back, and made on the server."""

from typing import Any

from server import Int64, mutation, query


@query
async def echo(ctx, value: Any) -> Any:
    return value


@query
async def kinds(ctx, value: dict[str, Any]) -> dict[str, str]:
    return {key: type(item).__name__ for key, item in value.items()}


@query
async def made(ctx) -> dict[str, Any]:
    return {"big": Int64(2**62 + 1), "negative": Int64(-(2**63)), "bytes": bytes([0, 1, 254, 255]),
            "nan": float("nan"), "inf": float("-inf"), "negzero": -0.0, "float": 2.5}


@mutation
async def store(ctx, value: Any) -> str:
    return await ctx.db.insert("stored", {"value": value})


@query
async def stored(ctx, id: str) -> Any:
    doc = await ctx.db.get(id)
    return doc["value"] if doc else None
