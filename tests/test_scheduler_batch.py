"""Scheduled mutations claimed and committed in batches (server/core/scheduler/batch.py), against
real PostgreSQL: a failing job among its batch-mates, a connection lost mid-batch and a COMMIT
whose answer was lost (through tests/faultproxy.py), two processes' schedulers draining one table.

That jobs shared a transaction is read from the change log: each commit's row lists what it
wrote (not from `xmin`: a batch writes jobs' final states inside their savepoints, whose
subtransactions have ids of their own)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from asyncpg.pool import PoolConnectionProxy

from server.config import SchedulerConfig
from server.core.database import decode_doc
from server.core.keys import index_keys
from server.core.runtime import Runtime
from server.core.scheduler.loop import Scheduler

from conftest import APPS, open_proxied_runtime, open_runtime
from faultproxy import FaultProxy

SCHED_APP = APPS / "scheduler"
ONE_WORKER = SchedulerConfig(concurrency=1, batch_size=16, poll_seconds=30.0, fallback_poll_seconds=0.2,
                             lease_seconds=1.0, shutdown_seconds=2.0)


async def call(rt: Runtime, kind: str, path: str, **args: Any) -> Any:
    return (await rt.call(kind, path, args, allow_internal=True)).value  # type: ignore[arg-type]


async def schedule_at(rt: Runtime, when: float, jobs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [await call(rt, "mutation", "jobs:schedule_at", when=when, fn=fn, args=args) for fn, args in jobs]


async def wait_finished(rt: Runtime, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = await call(rt, "query", "jobs:jobs")
        if sum(j["state"]["kind"] in ("success", "failed") for j in jobs) >= n:
            return list(jobs)
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} jobs not finished within {timeout} s: {[j['state'] for j in jobs]}")
        await asyncio.sleep(0.05)


async def transactions_of(rt: Runtime) -> dict[str, int]:
    """The commit (its ts in the change log) that last wrote each job (its final state)."""
    async with rt.db.acquire() as conn:
        rows = await conn.fetch(f'SELECT ts, writes FROM "{rt.db.namespace}"._ripple_commits ORDER BY ts')
    return {w["id"]: r["ts"] for r in rows for w in r["writes"] if w["table"] == "_scheduled_functions"}


@contextlib.asynccontextmanager
async def scheduling(rt: Runtime, settings: SchedulerConfig) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(rt, dataclasses.replace(settings))
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


async def test_a_failing_mutation_fails_alone_and_its_batch_mates_commit(namespace: str) -> None:
    async with open_runtime(SCHED_APP, namespace) as rt, scheduling(rt, ONE_WORKER):
        when = time.time() + 1.0  # all due at once: one worker takes them as one batch
        plan = [("jobs:bump", {"key": f"ok-{i}"}) for i in range(5)]
        plan.insert(2, ("jobs:bump_then_fail", {"key": "boom"}))
        ids = await schedule_at(rt, when, plan)
        jobs = {j["_id"]: j for j in await wait_finished(rt, len(ids))}
        failing = jobs[ids[2]]
        assert failing["state"]["kind"] == "failed" and "BOOM" in failing["state"]["error"], failing
        assert all(jobs[i]["state"] == {"kind": "success"} for i in ids if i != ids[2])
        assert await call(rt, "query", "jobs:counter", key="boom") == 0  # its write rolled back
        assert await call(rt, "query", "jobs:counters", prefix="ok-") == {f"ok-{i}": 1 for i in range(5)}
        # Batches take at most 2 jobs of one heap page (loop.py, PER_HEAP_PAGE), and these few
        # jobs share a page or two: the failing job committed with a batch-mate that succeeded.
        xids = await transactions_of(rt)
        mates = [i for i in ids if i != ids[2] and xids[i] == xids[ids[2]]]
        assert mates, xids
        assert rt.metrics.value("ripple_scheduled_jobs_total", state="failed") == 1
        assert rt.metrics.value("ripple_scheduled_jobs_total", state="success") == 5
        assert rt.metrics.value("ripple_scheduler_batch_splits_total") == 0
        logged = [e for e in rt.log_stream.page(0, 100).entries if e.function.startswith("jobs:bump")]
        assert len(logged) == 6 and {e.caller for e in logged} == {"scheduler"}
        assert [e.error for e in logged if e.error] == [failing["state"]["error"]]


async def test_a_job_sees_its_batch_mates_that_ran_before_it_finished(namespace: str) -> None:
    """A batch writes its jobs' final states together, before the next statement of any job
    (batch.Marks): each job still sees those that ran before it done, as if each had committed
    alone. Run serially, the n jobs see 0, 1, ..., n-1 finished jobs, whatever their order."""
    async with open_runtime(SCHED_APP, namespace) as rt, scheduling(rt, ONE_WORKER):
        n = 6
        ids = await schedule_at(rt, time.time() + 1.0, [("jobs:count_finished", {"key": f"seen-{i}"}) for i in range(n)])
        jobs = await wait_finished(rt, n)
        assert all(j["state"] == {"kind": "success"} for j in jobs), jobs
        seen = await call(rt, "query", "jobs:counters", prefix="seen-")
        assert sorted(seen.values()) == list(range(n)), seen
        per_tx = collections.Counter((await transactions_of(rt)).values())
        assert max(per_tx.values()) > 1 and len(ids) == n, per_tx  # some ran together in a batch
        # Their final states were written with the keys read from the claimed rows (those of
        # indexes over no patched field kept): every index key stored is the document's.
        info = rt.catalog.table("_scheduled_functions")
        async with rt.db.acquire() as conn:
            rows = await conn.fetch(f'SELECT * FROM "{rt.db.namespace}"._scheduled_functions')
        for row in rows:
            doc = decode_doc(row["id"], row["creation_time"], row["doc"])
            assert {n: row[f"k_{n}"] for n in info.index_fields} == index_keys(doc, info.index_fields, info.name)


@pytest.fixture
async def proxied_runtime(namespace: str) -> AsyncIterator[tuple[Runtime, FaultProxy]]:
    """The scheduler app in process, its database reached only through a FaultProxy."""
    async with open_proxied_runtime(SCHED_APP, namespace, pool_max=8, retry_seconds=10.0) as pair:
        yield pair


async def test_connections_cut_mid_batch_lose_no_job_and_run_none_twice(
        proxied_runtime: tuple[Runtime, FaultProxy]) -> None:
    rt, proxy = proxied_runtime
    n = 60
    async with scheduling(rt, ONE_WORKER):
        await schedule_at(rt, time.time() + 1.0, [("jobs:bump", {"key": f"job-{i:02}", "sleep_ms": 4})
                                                  for i in range(n)])
        await asyncio.sleep(1.0)
        for _ in range(6):  # cut every connection, mid-batch (each job holds it ~4 ms)
            await asyncio.sleep(0.03)
            proxy.cut()
        jobs = await wait_finished(rt, n)
    assert all(j["state"] == {"kind": "success"} for j in jobs), [j["state"] for j in jobs]
    counts = await call(rt, "query", "jobs:counters", prefix="job-")
    assert counts == {f"job-{i:02}": 1 for i in range(n)}  # every job once: none lost, none twice
    assert rt.metrics.value("ripple_connection_retries_total") >= 1  # a batch did lose its connection


def lose_next_commit(monkeypatch: pytest.MonkeyPatch, *, ran: bool) -> list[bool]:
    """The next commit tail and COMMIT loses its connection, after PostgreSQL ran it (`ran`: its
    answer is lost) or before it was sent. Returns a flag list: [True] once it struck."""
    original = PoolConnectionProxy.execute
    struck: list[bool] = []

    async def execute(self: PoolConnectionProxy, query: str, *args: Any, **kwargs: Any) -> Any:
        if struck or not query.endswith("; COMMIT"):
            return await original(self, query, *args, **kwargs)
        struck.append(True)
        if ran:
            await original(self, query, *args, **kwargs)
        self.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(PoolConnectionProxy, "execute", execute)
    return struck


@pytest.mark.parametrize("ran", [True, False], ids=["answer-lost", "never-arrived"])
async def test_a_batch_whose_commit_was_cut_off_runs_each_job_once(
        proxied_runtime: tuple[Runtime, FaultProxy], monkeypatch: pytest.MonkeyPatch, ran: bool) -> None:
    rt, _ = proxied_runtime
    n = 8
    ids = await schedule_at(rt, time.time() + 0.5, [("jobs:bump", {"key": f"c-{i}"}) for i in range(n)])
    struck = lose_next_commit(monkeypatch, ran=ran)  # the scheduler's first commit: the batch's
    async with scheduling(rt, ONE_WORKER):
        jobs = await wait_finished(rt, n)
    assert struck == [True]
    assert all(j["state"] == {"kind": "success"} for j in jobs)
    assert await call(rt, "query", "jobs:counters", prefix="c-") == {f"c-{i}": 1 for i in range(n)}
    outcome = "committed" if ran else "not_committed"
    assert rt.metrics.value("ripple_commit_resolutions_total", outcome=outcome) == 1
    per_tx = collections.Counter((await transactions_of(rt)).values())
    assert len(per_tx) < n, per_tx  # they ran in batches
    assert len(ids) == n


async def test_two_processes_batching_from_one_table_run_each_job_once(namespace: str) -> None:
    n = 400
    settings = dataclasses.replace(ONE_WORKER, concurrency=4)
    async with open_runtime(SCHED_APP, namespace) as a, open_runtime(SCHED_APP, namespace) as b:
        async with scheduling(a, settings), scheduling(b, settings):
            await call(a, "mutation", "jobs:schedule_many", n=n, prefix="two-", delay=0.5)
            await wait_finished(a, n, timeout=60)
        counts = await call(a, "query", "jobs:counters", prefix="two-")
        assert counts == {f"two-{i}": 1 for i in range(n)}
        ran = [rt.metrics.value("ripple_scheduled_jobs_total", state="success") for rt in (a, b)]
        assert sum(ran) == n and min(ran) > 0, ran  # both drained, neither ran a job twice
        # They ran batches: some committed as such; the ones that lost a conflict (these jobs
        # read and insert into one index) were split and run job by job.
        per_tx = collections.Counter((await transactions_of(a)).values())
        splits = sum(rt.metrics.value("ripple_scheduler_batch_splits_total") for rt in (a, b))
        print(f"largest batch committed: {max(per_tx.values())}; batches split: {splits}")
        assert max(per_tx.values()) > 1 or splits > 0, per_tx
