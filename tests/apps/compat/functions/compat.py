"""Functions the compatibility suites call, grouped by the item of issue 10 they show."""

from typing import Any

from server import ConvexError, Int64, mutation, query

# -- 1. numbers on the wire -------------------------------------------------------------------


@query
async def count(ctx, xs: list[Any]) -> int:
    """A Python int result: a Convex float64, sent as 3.0."""
    return len(xs)


@query
async def numbers(ctx) -> dict[str, Any]:
    return {"int": 3, "float": 2.5, "negative": -7, "zero": 0, "safe": 2**53, "int64": Int64(2**60)}


@query
async def echo(ctx, value: Any) -> Any:
    return value


@query
async def kinds(ctx, value: Any) -> Any:
    """What a function receives, by Python type name (1 from JavaScript, 1.0 from Python)."""
    if isinstance(value, dict):
        return {k: type(v).__name__ for k, v in value.items()}
    return type(value).__name__


# -- 2. ConvexError from a mutation -------------------------------------------------------------


@mutation
async def refuse(ctx, code: str) -> None:
    raise ConvexError({"code": code, "retry": 2})


# -- 5. field order -------------------------------------------------------------------------------


@mutation
async def insert_unordered(ctx) -> dict[str, Any]:
    doc_id = await ctx.db.insert("loose", {"zeta": 1, "Alpha": 2, "mid": {"bb": 1, "a": 2, "ccc": 3}})
    return await ctx.db.get(doc_id)


@query
async def field_names(ctx, value: dict[str, Any]) -> list[str]:
    """The order a function sees an argument's fields in."""
    return list(value)


@query
async def built(ctx) -> dict[str, Any]:
    return {"zeta": 1, "alpha": {"y": 1, "x": 2}, "Beta": 3}


# -- 9. scheduler units --------------------------------------------------------------------------


@mutation
async def schedule_at(ctx, when: float) -> str:
    return await ctx.scheduler.run_at(when, "compat:count", {"xs": []})
