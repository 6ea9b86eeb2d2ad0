"""The hot-key queue (server/core/hot_keys.py): mutations that conflict over the same keys take
turns in a process; nothing is lost or doubled, across processes too; a failing mutation gives
its turn back; keys queue separately.

The deterministic tests make conflicts and waits happen on purpose: a connection of the test
holds a counter's row locked (`Blocker`), so a mutation updating it waits in PostgreSQL while
holding its key's turn, until the test lets it go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.core.runtime import Runtime
from server.errors import FunctionFailure

from conftest import call, database_url, open_runtime, until

APP = Path(__file__).parent / "apps" / "hotkeys"
BEHIND_ME = """
WITH RECURSIVE behind(pid) AS (
    SELECT pid FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))
    UNION
    SELECT a.pid FROM pg_stat_activity a JOIN behind b ON b.pid = ANY(pg_blocking_pids(a.pid))
)
SELECT count(*) FROM behind"""


class Blocker:
    """A connection of the test's own that holds counters' rows locked in an open transaction."""

    def __init__(self, conn: asyncpg.Connection, rt: Runtime) -> None:
        self.conn, self.rt = conn, rt
        self.table = rt.catalog.table("counters").sql.table

    async def doc_id(self, name: str) -> str:
        doc_id = await self.conn.fetchval(f'SELECT id FROM "{self.table}" WHERE doc @> $1::jsonb',
                                          f'{{"name": "{name}"}}')
        assert doc_id is not None
        return str(doc_id)

    @contextlib.asynccontextmanager
    async def holding(self, *names: str, update: bool) -> AsyncIterator[None]:
        """Lock the rows of `names` (`update`: change them, so that a serializable transaction
        that read them before cannot commit after); commit when the block ends, roll back if
        it raises."""
        ids = [await self.doc_id(name) for name in names]
        tx = self.conn.transaction()
        await tx.start()
        try:
            for doc_id in ids:
                if update:
                    await self.conn.execute(f'UPDATE "{self.table}" SET doc = doc WHERE id = $1', doc_id)
                else:
                    await self.conn.execute(f'SELECT 1 FROM "{self.table}" WHERE id = $1 FOR UPDATE', doc_id)
            yield
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()

    async def waiting(self) -> int:
        """Backends waiting behind the blocker: for a row lock it holds, or in line for one
        behind another waiter (PostgreSQL's tuple lock)."""
        # pg_stat_activity is read once per transaction, and the blocker is in one: read it anew.
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(await self.conn.fetchval(BEHIND_ME))


@contextlib.asynccontextmanager
async def blocker_for(rt: Runtime, namespace: str) -> AsyncIterator[Blocker]:
    conn = await asyncpg.connect(database_url(), server_settings={"search_path": namespace})
    try:
        yield Blocker(conn, rt)
    finally:
        await conn.close()


async def until_async(predicate: Any, timeout: float = 15.0) -> None:
    """`until` for a coroutine predicate."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def metric(rt: Runtime, name: str) -> float:
    return rt.metrics.value(name)


async def inc(rt: Runtime, name: str) -> int:
    return int((await rt.call("mutation", "counters:inc", {"name": name})).value)


async def value(rt: Runtime, name: str) -> int:
    return int((await rt.call("query", "counters:get", {"name": name})).value)


async def heat(rt: Runtime, blocker: Blocker, *names: str) -> None:
    """Make `names` hot keys for `counters:inc`: two increments of each read the counter, then
    wait on the blocker's changed row; when it commits, each loses a conflict."""
    async with blocker.holding(*names, update=True):
        tasks = [asyncio.create_task(inc(rt, name)) for name in names for _ in range(2)]
        await until_async(lambda: _equals(blocker.waiting(), len(tasks)))
    await asyncio.gather(*tasks)


async def _equals(count: Any, expected: int) -> bool:
    return await count == expected


@pytest.fixture
async def rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(APP, namespace, dev=False) as runtime:
        # Waits here last as long as the test holds a row; a slow machine must not turn them
        # into timeouts, which the tests count as a turn never given back.
        runtime.hot_keys.wait_seconds = 30.0
        yield runtime


async def test_conflicts_make_keys_hot_and_retries_queue(rt: Runtime, namespace: str) -> None:
    for name in ("a", "b"):
        await inc(rt, name)
    async with blocker_for(rt, namespace) as blocker:
        retries = metric(rt, "ripple_mutation_retries_total")
        await heat(rt, blocker, "a", "b")
    # Each of the four lost a conflict (at least) once; of each pair, the second retry waited
    # its turn.
    assert metric(rt, "ripple_mutation_retries_total") - retries >= 4
    assert rt.hot_keys.hot_count() >= 2
    assert metric(rt, "ripple_mutation_queued_total") >= 2
    assert (await value(rt, "a"), await value(rt, "b")) == (3, 3)
    assert rt.hot_keys.held_count() == 0


async def test_queue_does_not_hold_up_other_keys(rt: Runtime, namespace: str) -> None:
    for name in ("a", "b"):
        await inc(rt, name)
    async with blocker_for(rt, namespace) as blocker:
        await heat(rt, blocker, "a", "b")
        queued = metric(rt, "ripple_mutation_queued_total")
        async with blocker.holding("a", update=False):
            first = asyncio.create_task(inc(rt, "a"))  # its turn on "a", then waits in PostgreSQL
            await until_async(lambda: _equals(blocker.waiting(), 1))
            second = asyncio.create_task(inc(rt, "a"))  # waits for its turn behind `first`
            await until(lambda: metric(rt, "ripple_mutation_queued_total") == queued + 1)
            # "b" is hot too and queued on: its own queue is free.
            assert await inc(rt, "b") == 4
            assert not first.done() and not second.done()
            assert metric(rt, "ripple_mutation_queued_total") == queued + 1
        assert sorted(await asyncio.gather(first, second)) == [4, 5]
    assert metric(rt, "ripple_mutation_queue_timeouts_total") == 0
    assert rt.hot_keys.held_count() == 0


async def test_a_failing_mutation_gives_its_turn_back(rt: Runtime, namespace: str) -> None:
    await inc(rt, "a")
    async with blocker_for(rt, namespace) as blocker:
        await heat(rt, blocker, "a")  # a = 3
        # inc_below touches a hot key when it succeeds: remembered, it queues from now on.
        assert (await rt.call("mutation", "counters:inc_below", {"name": "a", "limit": 5})).value == 4
        queued = metric(rt, "ripple_mutation_queued_total")
        async with blocker.holding("a", update=False):
            first = asyncio.create_task(inc(rt, "a"))  # 5
            await until_async(lambda: _equals(blocker.waiting(), 1))
            failing = asyncio.create_task(rt.call("mutation", "counters:inc_below", {"name": "a", "limit": 5}))
            await until(lambda: metric(rt, "ripple_mutation_queued_total") == queued + 1)
            last = asyncio.create_task(inc(rt, "a"))  # behind `failing`
            await until(lambda: metric(rt, "ripple_mutation_queued_total") == queued + 2)
        assert await first == 5
        with pytest.raises(FunctionFailure) as failed:
            await failing
        assert failed.value.data == {"code": "OverLimit", "value": 6}
        assert await last == 6  # it got its turn when `failing` gave it back, not by timing out
    assert metric(rt, "ripple_mutation_queue_timeouts_total") == 0
    assert rt.hot_keys.held_count() == 0
    assert await value(rt, "a") == 6


async def test_many_clients_end_at_exact_totals(rt: Runtime) -> None:
    names = [f"n{i}" for i in range(3)]
    for name in names:
        await inc(rt, name)
    sem = asyncio.Semaphore(30)

    async def one(i: int) -> None:
        async with sem:
            await inc(rt, names[i % 3])

    await asyncio.gather(*(one(i) for i in range(300)))
    assert [await value(rt, name) for name in names] == [101, 101, 101]
    assert rt.hot_keys.held_count() == 0


async def test_queue_off_still_exact(namespace: str) -> None:
    async with open_runtime(APP, namespace, dev=False, hot_key_queue=False) as rt:
        await inc(rt, "a")
        await asyncio.gather(*(inc(rt, "a") for _ in range(60)))
        assert await value(rt, "a") == 61
        assert metric(rt, "ripple_mutation_queued_total") == 0
        assert rt.hot_keys.hot_count() == 0


def test_two_server_processes_end_at_exact_totals(start_server: Any) -> None:
    servers = [start_server(app_dir=APP), start_server(app_dir=APP)]
    names = [f"c{i}" for i in range(4)]

    async def run() -> list[int]:
        clients = [httpx.AsyncClient(base_url=s.url, timeout=60) for s in servers]
        try:
            for name in names:
                assert (await call(clients[0], "mutation", "counters:inc", {"name": name})).json()["status"] == "success"
            sem = asyncio.Semaphore(40)

            async def one(i: int) -> None:
                async with sem:
                    r = await call(clients[i % 2], "mutation", "counters:inc", {"name": names[i % 4]})
                    assert r.json()["status"] == "success", r.text

            await asyncio.gather(*(one(i) for i in range(400)))
            return [(await call(clients[0], "query", "counters:get", {"name": n})).json()["value"] for n in names]
        finally:
            for client in clients:
                await client.aclose()

    assert asyncio.run(run()) == [101, 101, 101, 101]
