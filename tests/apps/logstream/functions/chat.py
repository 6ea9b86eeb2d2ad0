"""Functions that print, log at every level and fail, one of each kind (tests/test_logs.py)."""

import logging

from server import ConvexError, action, internal_mutation, mutation, query

log = logging.getLogger(__name__)
log.setLevel(logging.DEBUG)  # its debug records pass; the root logger's level does not matter


@query
async def hello(ctx, tag: str) -> str:
    print("hello", tag)
    log.debug("debug %s", tag)
    log.info("info %s", tag)
    log.warning("warn %s", tag)
    log.error("error %s", tag)
    return tag


@query
async def broken(ctx, tag: str) -> None:
    print("about to fail", tag)
    raise ValueError(f"internal detail {tag}")


@query
async def count(ctx) -> int:
    return len(await ctx.db.query("notes").collect())


@query
async def secret(ctx) -> str:
    print("the token is", ctx.env.get("LOGS_TEST_TOKEN"))
    return "printed"


@mutation
async def note(ctx, text: str) -> str:
    print("noting", text)
    await ctx.db.insert("notes", {"text": text})
    return text


@mutation
async def refuse(ctx, code: str) -> None:
    print("refusing", code)
    raise ConvexError({"code": code})


@mutation
async def later(ctx, tag: str) -> None:
    print("scheduling", tag)
    await ctx.scheduler.run_after(0, job, {"tag": tag})


@internal_mutation
async def job(ctx, tag: str) -> None:
    print("scheduled run", tag)


@action
async def fetch(ctx, tag: str) -> str:
    print("action", tag)
    return await ctx.run_query(hello, {"tag": tag})


@action
async def crash(ctx, tag: str) -> None:
    print("crashing", tag)
    raise RuntimeError(f"internal detail {tag}")
