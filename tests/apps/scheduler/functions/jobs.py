"""Functions the scheduler tests schedule and inspect."""

import asyncio
import datetime as dt
from typing import Any

from server import ConvexError, action, internal_action, internal_mutation, mutation, query


async def _bump(ctx: Any, key: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_key", lambda q: q.eq("key", key)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"key": key, "value": 1})
        return 1
    await ctx.db.patch(doc["_id"], {"value": doc["value"] + 1})
    return int(doc["value"]) + 1


@internal_mutation
async def bump(ctx, key: str, sleep_ms: float = 0) -> int:
    """Count one run under `key` (optionally holding the transaction open a little)."""
    if sleep_ms:
        await asyncio.sleep(sleep_ms / 1000)
    return await _bump(ctx, key)


@internal_mutation
async def bump_then_fail(ctx, key: str) -> None:
    await _bump(ctx, key)
    raise ConvexError({"code": "BOOM", "key": key})


@internal_mutation
async def noop(ctx) -> None:
    return None


@internal_mutation
async def count_finished(ctx, key: str) -> int:
    """Record under `key` how many scheduled jobs this run sees finished."""
    jobs = await ctx.db.system.query("_scheduled_functions").collect()
    done = sum(j["state"]["kind"] in ("success", "failed") for j in jobs)
    await ctx.db.insert("counters", {"key": key, "value": done})
    return done


@query
async def read(ctx, key: str) -> int:
    return 0


@mutation
async def schedule(ctx, fn: str, args: dict[str, Any] | None = None, delay: float = 0) -> str:
    return await ctx.scheduler.run_after(delay, fn, args or {})


@mutation
async def schedule_ref(ctx, key: str) -> str:
    """Schedules by function reference rather than by path."""
    return await ctx.scheduler.run_after(0, bump, {"key": key})


@mutation
async def schedule_at(ctx, when: float, fn: str, args: dict[str, Any] | None = None) -> str:
    return await ctx.scheduler.run_at(when, fn, args or {})


@mutation
async def schedule_at_datetime(ctx, iso: str, key: str) -> str:
    return await ctx.scheduler.run_at(dt.datetime.fromisoformat(iso), bump, {"key": key})


@mutation
async def schedule_many(ctx, n: int, prefix: str, delay: float = 0, sleep_ms: float = 0) -> int:
    for i in range(n):
        await ctx.scheduler.run_after(delay, bump, {"key": f"{prefix}{i}", "sleep_ms": sleep_ms})
    return n


@mutation
async def schedule_big_args(ctx, count: int, size: int) -> None:
    for _ in range(count):
        await ctx.scheduler.run_after(0, bump, {"key": "x" * size})


@mutation
async def schedule_then_fail(ctx, key: str) -> None:
    await ctx.scheduler.run_after(0, bump, {"key": key})
    raise ConvexError("changed my mind")


@mutation
async def cancel(ctx, id: str) -> None:
    await ctx.scheduler.cancel(id)


@query
async def counter(ctx, key: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_key", lambda q: q.eq("key", key)).unique()
    return int(doc["value"]) if doc else 0


@query
async def counters(ctx, prefix: str) -> dict[str, int]:
    rows = await ctx.db.query("counters").with_index("by_key", lambda q: q.gte("key", prefix).lt("key", prefix + "\uffff")).collect()
    return {r["key"]: r["value"] for r in rows}


@query
async def job(ctx, id: str) -> dict[str, Any] | None:
    return await ctx.db.system.get(id)


@query
async def jobs(ctx, state: str | None = None) -> list[dict[str, Any]]:
    q = ctx.db.system.query("_scheduled_functions")
    if state is not None:
        q = q.with_index("by_state", lambda r: r.eq("state.kind", state))
    return await q.collect()


@query
async def cron_jobs(ctx) -> list[dict[str, Any]]:
    return await ctx.db.system.query("_cron_jobs").collect()


@internal_action
async def slow(ctx, key: str, ms: float) -> str:
    """Records its start, sleeps, records its end."""
    await ctx.run_mutation(bump, {"key": f"{key}:start"})
    await asyncio.sleep(ms / 1000)
    await ctx.run_mutation(bump, {"key": f"{key}:end"})
    return key


@internal_action
async def failing_action(ctx, key: str) -> None:
    await ctx.run_mutation(bump, {"key": key})
    raise ConvexError({"code": "ACTION_FAILED"})


@internal_action
async def spawner(ctx, key: str, ms: float) -> None:
    """Schedules a child at once (through a mutation) and a late one, sleeps, then schedules
    another child directly: canceling this action while it sleeps must stop all three."""
    await ctx.scheduler.run_after(30, bump, {"key": f"{key}:early"})
    await ctx.run_mutation(schedule, {"fn": "jobs:bump", "args": {"key": f"{key}:via-mutation"}, "delay": 30})
    await ctx.run_mutation(bump, {"key": f"{key}:started"})
    await asyncio.sleep(ms / 1000)
    await ctx.scheduler.run_after(0, bump, {"key": f"{key}:late"})
    await ctx.run_mutation(bump, {"key": f"{key}:finished"})


@action
async def schedule_from_action(ctx, key: str, delay: float = 0) -> str:
    return await ctx.scheduler.run_after(delay, bump, {"key": key})


@action
async def cancel_from_action(ctx, id: str) -> None:
    await ctx.scheduler.cancel(id)


@internal_mutation
async def cron_tick(ctx) -> None:
    await _bump(ctx, "cron:tick")


@internal_action
async def cron_slow(ctx, ms: float) -> None:
    await ctx.run_mutation(bump, {"key": "cron:slow:start"})
    await asyncio.sleep(ms / 1000)
    await ctx.run_mutation(bump, {"key": "cron:slow:end"})
