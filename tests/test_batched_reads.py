"""Many query runs at once on one connection, their reads sent together (server/core/batched_reads.py),
against real PostgreSQL: every run gets the value, the read set and the pagination journal it
gets running alone on the same snapshot, while far fewer statements reach the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from server.core.batched_reads import BatchedReads
from server.core.runtime import QueryRun, Runtime

from conftest import BASIC_APP, open_runtime


@pytest.fixture
async def rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(BASIC_APP, namespace, pool_max=4) as runtime:
        yield runtime


def calls(pair_ids: list[str], item_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Queries of every shape a run reads with: index ranges both ways (one batch of rows or
    several), filters, first/last, pages, gets by id (found or not), a by_id range."""
    out: list[tuple[str, dict[str, Any]]] = []
    for n in range(0, 300, 37):
        out.append(("items:by_range", {"index": "by_n", "eq": [], "lower": ["gte", n], "upper": ["lt", n + 150],
                                       "order": "desc" if n % 2 else "asc"}))
        out.append(("items:page", {"paginationOpts": {"numItems": 7, "cursor": None}, "min_n": n,
                                   "order": "asc" if n % 2 else "desc"}))
    out += [("items:by_range", {"index": "by_a", "eq": [a]}) for a in range(5)]
    out += [("items:by_range", {"index": "by_a_b", "eq": [1], "lower": ["gt", 3], "upper": ["lte", 40]})]
    out += [("items:filtered", {"parity": p, "limit": 140}) for p in (0, 1)]  # more than one batch of rows
    out += [("items:first_last", {})] * 2
    out += [("counters:get", {"name": name}) for name in ("a", "b", "missing")]
    out += [("pairs:read", {"id": i}) for i in pair_ids]
    out += [("pairs:read_two", {"first": pair_ids[0], "second": pair_ids[-1]})]
    out += [("pairs:read", {"id": item_ids[3]})]  # an id of another table: its document
    out += [("items:by_range", {"index": "by_a", "eq": [1, 2, 3]})]  # the run fails, as alone
    return out


async def run_all(rt: Runtime, conn: Any, queries: list[tuple[str, dict[str, Any]]], together: bool) -> list[Any]:
    async def one(path: str, args: dict[str, Any]) -> Any:
        fn = rt.app.registry.resolve(path, kind="query")
        run: QueryRun = await rt.execute_query(conn, fn, fn.validate_args(args), None)
        value = orjson.loads(orjson.dumps(run.value)) if run.failure is None else run.failure.message.split("] ", 1)[1]
        return value, run.reads, run.journal

    if together:
        return list(await asyncio.gather(*(one(path, args) for path, args in queries)))
    return [await one(path, args) for path, args in queries]


async def test_runs_reading_together_get_what_each_gets_alone(rt: Runtime) -> None:
    await rt.call("mutation", "items:insert_many", {"docs": [{"n": n, "a": n % 5, "b": n} for n in range(300)]})
    item_ids = [str(d) for d in (await rt.call("mutation", "items:insert_many", {"docs": [{"n": 1000}] * 4})).value]
    pair_ids = [str((await rt.call("mutation", "pairs:setup", {})).value) for _ in range(3)]
    for name in ("a", "b"):
        await rt.call("mutation", "counters:inc", {"name": name})
    queries = calls(pair_ids, item_ids)
    snapshot = await rt.db.snapshot()
    try:
        alone = await run_all(rt, snapshot.conn, queries, together=False)
        reads = BatchedReads(snapshot.conn, rt.catalog.batched)
        together = await run_all(rt, reads, queries, together=True)
        await reads.idle()
    finally:
        await snapshot.close()
    assert together == alone
    assert any(isinstance(value, str) for value, _, _ in alone)  # the failing run failed both times
    issued = sum(len(r) for _, r, _ in alone)  # a read range per statement (the filters' scans: several)
    # Every run's first read went out in one statement, and so on: a handful of rounds, not one
    # statement per read.
    assert reads.statements <= 12 < issued, (reads.statements, issued)


async def test_a_failing_batch_fails_each_of_its_runs_and_nothing_waits_for_ever(rt: Runtime) -> None:
    snapshot = await rt.db.snapshot()
    try:
        reads = BatchedReads(snapshot.conn, rt.catalog.batched)
        info = rt.catalog.table("counters")
        statement = info.sql.range[("by_name", False)]
        bad = [reads.fetch(statement, b"", b"\xff", -1) for _ in range(3)]  # LIMIT -1: PostgreSQL refuses it
        results = await asyncio.gather(*bad, return_exceptions=True)
        await reads.idle()
    finally:
        await snapshot.close()
    assert all(isinstance(r, Exception) for r in results), results
