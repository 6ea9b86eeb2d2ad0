"""Scheduler, crons and actions against real PostgreSQL: in-process for the semantics, and
through real `ripple serve` processes for exactly-once, kill -9, waking and crons."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server import Crons, Identity
from server.config import SchedulerConfig
from server.core.documents import DatabaseWriter
from server.core.runtime import Runtime
from server.core.scheduler import crons
from server.core.scheduler import table as jobs
from server.core.scheduler.doorbell import Doorbell
from server.core.scheduler.loop import Scheduler
from server.core.scheduler.runs import LOST_ACTION_ERROR, SHUTDOWN_ACTION_ERROR
from server.core.transaction import Transaction
from server.errors import FunctionFailure, RippleUsageError

from conftest import APPS, ROOT, ServerProcess, open_runtime

SCHED_APP = APPS / "scheduler"
FAST = SchedulerConfig(poll_seconds=30.0, fallback_poll_seconds=0.2, lease_seconds=1.0, shutdown_seconds=1.0)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        await asyncio.sleep(0.02)


class App:
    """The scheduler test app in-process, with its scheduler loop running."""

    def __init__(self, runtime: Runtime, scheduler: Scheduler) -> None:
        self.rt, self.scheduler = runtime, scheduler

    async def mutation(self, path: str, **args: Any) -> Any:
        return (await self.rt.call("mutation", path, args, allow_internal=True)).value

    async def action(self, path: str, **args: Any) -> Any:
        return (await self.rt.call("action", path, args, allow_internal=True)).value

    async def query(self, path: str, **args: Any) -> Any:
        return (await self.rt.call("query", path, args)).value

    async def job(self, job_id: str) -> dict[str, Any]:
        doc = await self.query("jobs:job", id=job_id)
        assert doc is not None
        return doc

    async def wait_state(self, job_id: str, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            doc = await self.job(job_id)
            return doc if doc["state"]["kind"] in states else None

        return await eventually(check, timeout, f"job {job_id} in {states}")  # type: ignore[no-any-return]

    async def counter(self, key: str) -> int:
        return int(await self.query("jobs:counter", key=key))

    async def run_marker_then_stop(self, after_ms: float) -> None:
        """Bound a "this job never runs" check: run a job due after `after_ms` (a job's
        scheduledTime), so the scheduler had its turn at everything due before, then stop the
        scheduler, which lets what it is running finish: from then on nothing runs."""
        when = max(time.time(), after_ms / 1000 + 0.01)
        marker = await self.mutation("jobs:schedule_at", when=when, fn="jobs:bump", args={"key": "marker"})
        await self.wait_state(marker, "success")
        await self.scheduler.stop()


@pytest.fixture
async def app(namespace: str) -> AsyncIterator[App]:
    async with open_runtime(SCHED_APP, namespace) as rt:
        scheduler = Scheduler(rt, dataclasses.replace(FAST))
        await scheduler.start()
        try:
            yield App(rt, scheduler)
        finally:
            await scheduler.stop()


# -- scheduling from mutations and actions --------------------------------------------------------

async def test_scheduled_mutation_runs_once_and_its_job_has_convex_shape(app: App) -> None:
    job_id = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "a"})
    doc = await app.wait_state(job_id, "success", "failed")
    assert doc["state"] == {"kind": "success"}
    assert doc["name"] == "jobs:bump" and doc["args"] == [{"key": "a"}]
    assert doc["scheduledTime"] <= doc["startedTime"] <= doc["completedTime"]
    assert "lease" not in doc and "error" not in doc["state"]
    assert await app.counter("a") == 1
    by_ref = await app.mutation("jobs:schedule_ref", key="ref")  # a function reference, not a path
    assert (await app.wait_state(by_ref, "success"))["name"] == "jobs:bump"
    assert await app.counter("ref") == 1
    assert app.rt.metrics.value("ripple_scheduled_jobs_total", state="success") == 2


async def test_a_mutation_that_raises_after_scheduling_leaves_no_job(app: App) -> None:
    with pytest.raises(FunctionFailure, match="changed my mind"):
        await app.mutation("jobs:schedule_then_fail", key="never")
    assert await app.query("jobs:jobs") == []
    # A job scheduled later runs, and is the only job there is: none can run "never" later.
    marker = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "marker"})
    await app.wait_state(marker, "success")
    assert [j["_id"] for j in await app.query("jobs:jobs")] == [marker]
    assert await app.counter("never") == 0


async def test_a_failing_scheduled_mutation_is_recorded_failed_and_its_writes_roll_back(app: App) -> None:
    job_id = await app.mutation("jobs:schedule", fn="jobs:bump_then_fail", args={"key": "f"})
    doc = await app.wait_state(job_id, "failed", "success")
    assert doc["state"]["kind"] == "failed" and "BOOM" in doc["state"]["error"]
    assert await app.counter("f") == 0


async def test_actions_run_at_most_once_and_may_schedule(app: App) -> None:
    ok = await app.mutation("jobs:schedule", fn="jobs:slow", args={"key": "s", "ms": 50})
    bad = await app.mutation("jobs:schedule", fn="jobs:failing_action", args={"key": "fa"})
    assert (await app.wait_state(ok, "success", "failed"))["state"] == {"kind": "success"}
    failed = await app.wait_state(bad, "failed", "success")
    assert "ACTION_FAILED" in failed["state"]["error"]
    assert (await app.counter("s:start"), await app.counter("s:end"), await app.counter("fa")) == (1, 1, 1)
    from_action = await app.action("jobs:schedule_from_action", key="fa2")  # its own transaction
    assert (await app.wait_state(from_action, "success"))["name"] == "jobs:bump"
    assert await app.counter("fa2") == 1


async def test_run_at_arms_a_timer_and_past_times_run_at_once(app: App) -> None:
    soon = await app.mutation("jobs:schedule_at", when=time.time() + 1.0, fn="jobs:bump", args={"key": "soon"})
    past = await app.mutation("jobs:schedule_at", when=time.time() - 60, fn="jobs:bump", args={"key": "past"})
    aware = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)).isoformat()
    by_datetime = await app.mutation("jobs:schedule_at_datetime", iso=aware, key="dt")
    assert (await app.job(soon))["state"]["kind"] == "pending"
    for job_id in (past, soon, by_datetime):  # the poll interval is 30 s: timers did this
        await app.wait_state(job_id, "success", timeout=5)
    doc = await app.job(soon)
    assert doc["startedTime"] >= doc["scheduledTime"]


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("jobs:schedule_at_datetime", {"iso": "2030-01-01T00:00:00", "key": "k"}, "naive datetime"),
        ("jobs:schedule", {"fn": "jobs:bump", "args": {"key": "k"}, "delay": -1}, "must not be negative"),
        ("jobs:schedule", {"fn": "jobs:read", "args": {"key": "k"}}, "is a query"),
        ("jobs:schedule", {"fn": "jobs:nope"}, "Could not find"),
        ("jobs:schedule", {"fn": "jobs:bump", "args": {"wrong": 1}}, "key"),
        ("jobs:schedule_many", {"n": 1001, "prefix": "lim"}, "1000 at most"),
        ("jobs:schedule_big_args", {"count": 3, "size": 3 * 1024 * 1024}, "exceed 8 MiB"),
        # Units: seconds everywhere. Milliseconds (JavaScript's habit) land decades to millennia
        # ahead; beyond the 5-year horizon they are refused, naming the mix-up.
        ("jobs:schedule_at", {"when": time.time() * 1000, "fn": "jobs:bump", "args": {"key": "k"}},
         r"years from now, beyond the scheduling horizon of 5 years .*looks like milliseconds"),
        ("jobs:schedule", {"fn": "jobs:bump", "args": {"key": "k"}, "delay": 7 * 86_400 * 1000},
         r"beyond the scheduling horizon .*seconds, not milliseconds \(did you mean 604800\?\)"),
        ("jobs:schedule_at_datetime", {"iso": "2100-01-01T00:00:00+00:00", "key": "k"}, r"beyond the scheduling horizon of 5 years"),
    ],
)
async def test_scheduling_mistakes_fail_clearly_and_schedule_nothing(app: App, path: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(FunctionFailure, match=message):
        await app.mutation(path, **args)
    assert await app.query("jobs:jobs") == []


# -- cancel -----------------------------------------------------------------------------------------

async def test_cancel_pending_and_finished_jobs(app: App) -> None:
    later = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "later"}, delay=0.3)
    await app.mutation("jobs:cancel", id=later)
    doc = await app.job(later)
    assert doc["state"] == {"kind": "canceled"} and "completedTime" in doc
    done = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "done"})
    await app.wait_state(done, "success")
    await app.mutation("jobs:cancel", id=done)  # finished: nothing happens
    assert (await app.job(done))["state"] == {"kind": "success"}
    from_action = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "a"}, delay=30)
    await app.action("jobs:cancel_from_action", id=from_action)
    assert (await app.job(from_action))["state"] == {"kind": "canceled"}
    with pytest.raises(FunctionFailure, match="not the id of a scheduled function"):
        await app.mutation("jobs:cancel", id="nonsense")
    await app.run_marker_then_stop(after_ms=(await app.job(later))["scheduledTime"])
    assert await app.counter("later") == 0
    assert app.rt.metrics.value("ripple_scheduled_jobs_total", state="canceled") == 2


async def test_canceling_a_running_action_lets_it_finish_but_stops_what_it_scheduled(app: App) -> None:
    spawner = await app.mutation("jobs:schedule", fn="jobs:spawner", args={"key": "sp", "ms": 1500})
    await eventually(lambda: app.counter("sp:started"), what="spawner started")
    await app.mutation("jobs:cancel", id=spawner)
    await eventually(lambda: app.counter("sp:finished"), what="spawner finished")
    assert (await app.job(spawner))["state"] == {"kind": "canceled"}
    children = [j for j in await app.query("jobs:jobs") if j.get("parentId") == spawner]
    assert sorted(c["args"][0]["key"] for c in children) == ["sp:early", "sp:late", "sp:via-mutation"]
    assert all(c["state"] == {"kind": "canceled"} for c in children)
    (late,) = [c for c in children if c["args"][0]["key"] == "sp:late"]
    await app.run_marker_then_stop(after_ms=late["scheduledTime"])
    assert await app.counter("sp:late") == 0


# -- failures of processes --------------------------------------------------------------------------

async def _insert_job(rt: Runtime, fields: dict[str, Any]) -> str:
    async def body(writer: DatabaseWriter, tx: Transaction) -> str:
        job_id = await jobs.insert_job(writer, "jobs:slow", {"key": "ghost", "ms": 1}, jobs.now_ms() - 5000)
        await writer.patch(job_id, fields)
        return job_id

    return await rt.system_transaction(body)


async def test_an_action_whose_lease_expired_is_failed_not_rerun(app: App) -> None:
    past = jobs.now_ms() - 1000
    lost = await _insert_job(app.rt, {"state": {"kind": "inProgress"}, "startedTime": past,
                                      "lease": {"owner": "dead-host:1:abc", "expiresAt": past}})
    alive = await _insert_job(app.rt, {"state": {"kind": "inProgress"}, "startedTime": past,
                                       "lease": {"owner": "other-host:2:def", "expiresAt": jobs.now_ms() + 60_000}})
    doc = await app.wait_state(lost, "failed", timeout=5)  # the maintenance loop found it
    assert doc["state"]["error"] == LOST_ACTION_ERROR and "lease" not in doc
    assert (await app.job(alive))["state"] == {"kind": "inProgress"}
    await app.run_marker_then_stop(after_ms=doc["scheduledTime"])
    assert await app.counter("ghost:start") == 0  # never re-run
    assert app.rt.metrics.value("ripple_scheduler_lost_actions_total") == 1


async def test_shutdown_fails_an_action_that_does_not_finish_in_time(namespace: str) -> None:
    async with open_runtime(SCHED_APP, namespace) as rt:
        scheduler = Scheduler(rt, SchedulerConfig(poll_seconds=30, shutdown_seconds=0.2))
        await scheduler.start()
        app = App(rt, scheduler)
        job_id = await app.mutation("jobs:schedule", fn="jobs:slow", args={"key": "sd", "ms": 10_000})
        await app.wait_state(job_id, "inProgress")
        await scheduler.stop()
        doc = await app.job(job_id)
        assert doc["state"] == {"kind": "failed", "error": SHUTDOWN_ACTION_ERROR}


async def test_listener_reconnects_and_polling_covers_the_gap(app: App, pg_url: str) -> None:
    old_pid = app.scheduler.listener.backend_pid
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", old_pid)
    finally:
        await conn.close()

    async def reconnected() -> bool:
        return app.scheduler.listener.healthy and app.scheduler.listener.backend_pid != old_pid

    await eventually(reconnected, 5, "listener reconnected")
    job_id = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "r"})
    await app.wait_state(job_id, "success", timeout=3)


async def test_prune_deletes_only_finished_jobs_past_retention(app: App) -> None:
    done = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "p"})
    pending = await app.mutation("jobs:schedule", fn="jobs:bump", args={"key": "q"}, delay=60)
    await app.wait_state(done, "success")
    assert await app.scheduler.runner.prune() == 0  # within the 7-day retention
    app.scheduler.settings.retention_seconds = 0.05

    async def gone() -> bool:
        return await app.query("jobs:job", id=done) is None

    await eventually(gone, 5, "finished job pruned")  # by the maintenance loop
    assert (await app.job(pending))["state"] == {"kind": "pending"}
    assert app.rt.metrics.value("ripple_scheduler_pruned_total") == 1


async def test_a_timer_refresh_that_predates_a_commit_looks_again(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker finding nothing due reads the earliest future job to arm the timer. When a job
    commits while such a read is in flight (and its NOTIFY is lost: the listener was still
    connecting), the next worker's request to look must not be dropped: it once was, and the
    job then waited for the poll (seconds late)."""
    async with open_runtime(SCHED_APP, namespace) as rt:
        scheduler = Scheduler(rt, dataclasses.replace(FAST))  # not started: no listener, no workers
        real_acquire = rt.db.acquire
        read, release = asyncio.Event(), asyncio.Event()
        stalled = False

        class StalledAfterReading:
            def __init__(self, conn: Any) -> None:
                self.conn = conn

            async def fetchrow(self, *args: Any) -> Any:
                row = await self.conn.fetchrow(*args)  # reads before the job commits
                read.set()
                await release.wait()
                return row

        @contextlib.asynccontextmanager
        async def acquire() -> AsyncIterator[Any]:
            nonlocal stalled
            async with real_acquire() as conn:
                if stalled:
                    yield conn
                else:
                    stalled = True
                    yield StalledAfterReading(conn)

        monkeypatch.setattr(rt.db, "acquire", acquire)
        first = asyncio.create_task(scheduler._refresh_timer())
        await read.wait()
        when = time.time() + 30
        await rt.call("mutation", "jobs:schedule_at", {"when": when, "fn": "jobs:bump", "args": {"key": "t"}})
        await scheduler._refresh_timer()  # the look the commit asked for, while the first read is in flight
        release.set()
        await first
        assert scheduler._timer_ms is not None and abs(scheduler._timer_ms - when * 1000) < 1


async def test_a_job_that_fell_due_between_a_peek_and_the_timer_read_is_not_left_to_the_poll(namespace: str) -> None:
    """A worker peeks (nothing due yet), the job falls due, then the worker reads the earliest
    future job to arm the timer: the job is no longer "future", but it must still arm the timer
    (it once waited for the 5 s poll: the drain benchmark saw whole batches start 2.7 s late)."""
    async with open_runtime(SCHED_APP, namespace) as rt:
        scheduler = Scheduler(rt, dataclasses.replace(FAST))  # not started: only its timer logic
        due = time.time() + 0.05
        await rt.call("mutation", "jobs:schedule_at", {"when": due, "fn": "jobs:bump", "args": {"key": "g"}})
        assert await scheduler._peek() == []  # not due yet
        await asyncio.sleep(0.1)  # now it is
        await scheduler._refresh_timer()
        assert scheduler._timer_ms is not None and abs(scheduler._timer_ms - due * 1000) < 1


async def test_doorbell_keeps_rings_that_nobody_waited_for() -> None:
    bell = Doorbell(cap=2)
    bell.ring(5)
    await asyncio.wait_for(bell.wait(), 1)
    await asyncio.wait_for(bell.wait(), 1)
    waiter = asyncio.ensure_future(bell.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    bell.ring()
    await asyncio.wait_for(waiter, 1)


# -- crons ----------------------------------------------------------------------------------------

def test_cron_definitions_and_next_runs() -> None:
    c = Crons()
    c.interval("i", minutes=1, seconds=30, fn="jobs:noop")
    c.cron("c", "*/5  * * * *", fn="jobs:noop", args={"a": 1})
    c.hourly("h", minute_utc=7, fn="jobs:noop")
    c.daily("d", hour_utc=3, minute_utc=15, fn="jobs:noop")
    c.weekly("w", day_of_week="tuesday", hour_utc=17, minute_utc=30, fn="jobs:noop")
    c.monthly("m", day=1, hour_utc=0, minute_utc=0, fn="jobs:noop")
    assert c.jobs["i"].schedule == {"kind": "interval", "seconds": 90.0}
    assert [c.jobs[n].schedule["expression"] for n in "chdwm"] == [
        "*/5 * * * *", "7 * * * *", "15 3 * * *", "30 17 * * 2", "0 0 1 * *"]
    for bad in (lambda: c.interval("i", seconds=1, fn="jobs:noop"),  # duplicate name
                lambda: c.interval("z", seconds=0, fn="jobs:noop"),
                lambda: c.cron("z", "* * * * * *", fn="jobs:noop"),
                lambda: c.cron("z", "61 * * * *", fn="jobs:noop"),
                lambda: c.daily("z", hour_utc=24, minute_utc=0, fn="jobs:noop"),
                lambda: c.weekly("z", day_of_week="someday", hour_utc=1, minute_utc=0, fn="jobs:noop")):
        with pytest.raises(RippleUsageError):
            bad()
    t0 = dt.datetime(2026, 11, 28, 13, 2, 30, tzinfo=dt.UTC).timestamp() * 1000
    assert crons.next_run({"kind": "cron", "expression": "*/5 * * * *"}, t0) == t0 + 150_000
    every = {"kind": "interval", "seconds": 10.0}
    assert crons.next_run(every, t0) == t0 + 10_000  # first run: one interval after registering
    assert crons.next_run(every, t0 + 10_001, t0 + 10_000) == t0 + 20_000
    assert crons.next_run(every, t0 + 35_000, t0 + 10_000) == t0 + 40_000  # missed ticks: one run


async def test_a_cron_tick_schedules_one_run_even_when_two_processes_race(namespace: str) -> None:
    async with open_runtime(SCHED_APP, namespace) as a, open_runtime(SCHED_APP, namespace) as b:
        sa, sb = Scheduler(a, dataclasses.replace(FAST)), Scheduler(b, dataclasses.replace(FAST))  # not started
        c = Crons()
        c.interval("race", seconds=0.3, fn="jobs:noop")
        await asyncio.gather(sa.sync_crons(c), sb.sync_crons(c))
        await asyncio.sleep(0.4)
        (first,) = [o for batch in await asyncio.gather(sa.tick_crons(), sb.tick_crons()) for o in batch]
        assert first.scheduled_job is not None
        await asyncio.sleep(0.3)
        again = [o for batch in await asyncio.gather(sa.tick_crons(), sb.tick_crons()) for o in batch]
        assert again and all(o.scheduled_job is None for o in again)  # the first run is still pending
        (doc,) = (await a.call("query", "jobs:cron_jobs", {})).value
        assert doc["skippedRuns"] == len(again) and doc["lastJobId"] == first.scheduled_job
        skipped = sum(rt.metrics.value("ripple_cron_runs_total", cron="race", outcome="skipped") for rt in (a, b))
        assert skipped == len(again)
        c2 = Crons()
        c2.cron("other", "0 0 * * *", fn="jobs:noop")
        await sa.sync_crons(c2)  # removed crons go, new ones come
        assert [d["name"] for d in (await a.call("query", "jobs:cron_jobs", {})).value] == ["other"]


# -- many processes ---------------------------------------------------------------------------------

def _call(server: ServerProcess, kind: str, path: str, **args: Any) -> Any:
    r = httpx.post(f"{server.url}/api/{kind}", json={"path": path, "args": args, "format": "json"}, timeout=30)
    body = r.json()
    assert body.get("status") == "success", body
    return body["value"]


def _metric(server: ServerProcess, line_prefix: str) -> float:
    text = httpx.get(f"{server.url}/_ripple/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(0.05)


SERVE_ENV = {"RIPPLE_SCHEDULER_POLL_SECONDS": "30", "RIPPLE_SCHEDULER_LEASE_SECONDS": "1.5",
             "RIPPLE_SCHEDULER_SHUTDOWN_SECONDS": "1"}


@pytest.fixture
def two_servers(start_server: Callable[..., ServerProcess]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    yield start_server(app_dir=SCHED_APP, extra_env=SERVE_ENV), start_server(app_dir=SCHED_APP, extra_env=SERVE_ENV)


def _stop_and_read_back(start_server: Callable[..., ServerProcess], *servers: ServerProcess) -> ServerProcess:
    """Bound a "never twice" check: stop the servers (a stopped server runs nothing more) and
    start one that runs no scheduler, to read what they left."""
    for server in servers:
        server.stop()
    return start_server(app_dir=SCHED_APP, extra_env={**SERVE_ENV, "RIPPLE_SCHEDULER": "off"})


@pytest.mark.e2e
def test_two_processes_run_500_scheduled_mutations_exactly_once(
    start_server: Callable[..., ServerProcess], two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    time.sleep(0.3)  # both loops are idle: only NOTIFY can wake them now (the poll is 30 s)
    assert _call(a, "mutation", "jobs:schedule", fn="jobs:bump", args={"key": "wake"}) is not None
    # Bounded far below the 30 s poll: only the NOTIFY can have woken a loop in time.
    _wait(lambda: _call(b, "query", "jobs:counter", key="wake"), 5, "run_after(0) picked up")

    _call(a, "mutation", "jobs:schedule_many", n=500, prefix="job-", sleep_ms=2)
    _wait(lambda: (c := _call(b, "query", "jobs:counters", prefix="job-")) and len(c) == 500
          and all(v >= 1 for v in c.values()), 60, "500 jobs ran")
    # A process counts a job after its commit: wait for the counts to cover every job.
    ran = _wait(lambda: (r := [_metric(s, 'ripple_scheduled_jobs_total{state="success"}') for s in (a, b)])
                and sum(r) >= 501 and r, 10, "both processes counted the jobs they ran")
    assert sum(ran) == 501 and min(ran) > 0, ran  # both processes drained, neither twice
    reader = _stop_and_read_back(start_server, a, b)
    counts = _call(reader, "query", "jobs:counters", prefix="job-")
    assert len(counts) == 500 and set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    states = [j["state"]["kind"] for j in _call(reader, "query", "jobs:jobs")]
    assert states.count("success") == 501 and len(states) == 501


@pytest.mark.e2e
def test_kill_9_mid_action_leaves_it_failed_and_the_other_process_keeps_draining(
    start_server: Callable[..., ServerProcess], two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    servers = {s.proc.pid: s for s in two_servers}
    victim_job = _call(two_servers[0], "mutation", "jobs:schedule", fn="jobs:slow", args={"key": "victim", "ms": 60_000})
    job = _wait(lambda: (j := _call(two_servers[0], "query", "jobs:job", id=victim_job))["state"]["kind"] == "inProgress"
                and _call(two_servers[0], "query", "jobs:counter", key="victim:start") and j, 10, "action running")
    owner_pid = int(job["lease"]["owner"].split(":")[-2])
    doomed = servers.pop(owner_pid)
    (survivor,) = servers.values()
    _call(survivor, "mutation", "jobs:schedule_many", n=50, prefix="before-")
    os.kill(owner_pid, signal.SIGKILL)
    doomed.proc.wait(10)
    _call(survivor, "mutation", "jobs:schedule_many", n=50, prefix="after-")
    failed = _wait(lambda: (j := _call(survivor, "query", "jobs:job", id=victim_job))["state"]["kind"] != "inProgress" and j,
                   15, "lost action recovered")
    assert failed["state"] == {"kind": "failed", "error": LOST_ACTION_ERROR}
    for prefix in ("before-", "after-"):
        done = _wait(lambda p=prefix: (c := _call(survivor, "query", "jobs:counters", prefix=p)) and len(c) == 50 and c,
                     20, f"{prefix} jobs drained")
        assert set(done.values()) == {1}
    # The after- jobs, due after the victim, ran: the survivor had its turn at the victim.
    reader = _stop_and_read_back(start_server, survivor)
    assert _call(reader, "query", "jobs:counter", key="victim:start") == 1  # never re-run
    assert _call(reader, "query", "jobs:counter", key="victim:end") == 0
    assert _call(reader, "query", "jobs:job", id=victim_job)["state"] == {"kind": "failed", "error": LOST_ACTION_ERROR}
    for prefix in ("before-", "after-"):
        counts = _call(reader, "query", "jobs:counters", prefix=prefix)
        assert len(counts) == 50 and set(counts.values()) == {1}


@pytest.mark.e2e
def test_cron_ticks_across_two_processes_fire_once_each_and_overlaps_are_skipped(
    start_server: Callable[..., ServerProcess],
) -> None:
    env = {**SERVE_ENV, "SCHED_TEST_CRONS": "1", "SCHED_TEST_TICK": "0.5", "SCHED_TEST_SLOW_MS": "1200"}
    a = start_server(app_dir=SCHED_APP, extra_env=env)
    b = start_server(app_dir=SCHED_APP, extra_env=env)
    time.sleep(3.2)
    for server in (a, b):
        server.stop()  # stop ticking; finish what runs
    a = start_server(app_dir=SCHED_APP, extra_env={**SERVE_ENV, "RIPPLE_SCHEDULER": "off"})
    all_jobs = _call(a, "query", "jobs:jobs")
    ticks = sorted(j["scheduledTime"] for j in all_jobs if j.get("cronName") == "tick")
    assert len(ticks) >= 4
    gaps = [round(t2 - t1) for t1, t2 in itertools.pairwise(ticks)]
    # One job per tick: never two for one tick; ticks on the 500 ms grid (a tick the loop was
    # too late for is not made up, so a gap may be a multiple).
    assert all(g > 0 and g % 500 == 0 for g in gaps), gaps
    assert gaps.count(500) >= len(gaps) - 1, gaps
    tick_runs = [j for j in all_jobs if j.get("cronName") == "tick" and j["state"]["kind"] == "success"]
    assert _call(a, "query", "jobs:counter", key="cron:tick") == len(tick_runs)
    slow = sorted((j for j in all_jobs if j.get("cronName") == "slow"), key=lambda j: j["scheduledTime"])
    ran = [j for j in slow if "startedTime" in j]
    for earlier, later in itertools.pairwise(ran):
        assert later["startedTime"] >= earlier["completedTime"]  # never two at once
    (slow_cron,) = [c for c in _call(a, "query", "jobs:cron_jobs") if c["name"] == "slow"]
    assert slow_cron["skippedRuns"] >= 1 and "lastSkipped" in slow_cron
    assert _call(a, "query", "jobs:counter", key="cron:slow:start") == len(ran)


# -- the example app ------------------------------------------------------------------------------

async def _system_docs(rt: Runtime, table: str) -> list[dict[str, Any]]:
    async def body(writer: DatabaseWriter, tx: Transaction) -> list[dict[str, Any]]:
        return await writer.query(table).collect()

    return await rt.system_transaction(body)


async def test_the_example_app_processes_a_new_video_through_the_scheduler(namespace: str) -> None:
    """`videos:createVideo` schedules `processing:processVideo` in its own transaction and the
    scheduler runs it. In process there is no HTTP server and no processing settings, so the action
    records why it cannot send the job: the video fails with that reason, which is what this
    checks (tests/test_example_app.py drives the whole pipeline through a real server)."""
    issuer = "https://issuer.example"
    creator = Identity({"tokenIdentifier": f"{issuer}|casey", "subject": "casey", "issuer": issuer})
    reviewer = Identity({"tokenIdentifier": f"{issuer}|riley", "subject": "riley", "issuer": issuer, "role": "reviewer"})
    async with open_runtime(ROOT, namespace) as rt:
        scheduler = Scheduler(rt, dataclasses.replace(FAST))
        await scheduler.start()
        try:
            campaign = (await rt.call("mutation", "campaigns:create", {"name": "Launch", "brand": "Acme"}, reviewer)).value
            file = await rt.files.store_bytes(b"\x00\x00\x00\x18ftypmp42", "video/mp4")
            video = (await rt.call("mutation", "videos:createVideo", {"campaignId": campaign, "storageId": file},
                                   creator)).value

            async def settled() -> dict[str, Any] | None:
                doc = (await rt.call("query", "videos:get", {"id": video}, creator)).value
                return doc if doc["status"] != "uploaded" else None

            doc = await eventually(settled, 10, "video processed")
            assert [h["status"] for h in doc["approvalHistory"]] == ["uploaded", "failed"]
            assert doc["failureReason"].startswith("processing is not configured: "), doc
            assert doc["processingAttempts"] == 1
            # The job is marked done in its own transaction after the action returns, so a moment
            # after the action's last mutation.
            async def finished() -> list[dict[str, Any]] | None:
                found = await _system_docs(rt, jobs.JOBS)
                return found if found and found[0]["state"]["kind"] != "inProgress" else None

            (job,) = await eventually(finished, 10, "processing job finished")
            assert job["name"] == "processing:processVideo" and job["state"] == {"kind": "success"}
            assert [c["name"] for c in await _system_docs(rt, jobs.CRONS)] == ["requeue stuck videos"]
        finally:
            await scheduler.stop()


@pytest.mark.e2e
async def test_scheduled_functions_are_live_queryable(start_server: Callable[..., ServerProcess]) -> None:
    from client_sdk import RippleClient

    server = start_server(app_dir=SCHED_APP, extra_env=SERVE_ENV)
    async with RippleClient(server.url) as client:
        job_id = await client.mutation("jobs:schedule", {"fn": "jobs:slow", "args": {"key": "live", "ms": 400}, "delay": 0.3})
        seen: list[str] = []
        async for doc in client.subscribe("jobs:job", {"id": job_id}):
            seen.append(doc["state"]["kind"])
            if doc["state"]["kind"] in ("success", "failed"):
                break
        states = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]  # lease renewals repeat one
        assert states == ["pending", "inProgress", "success"], seen


async def test_a_dev_load_that_left_crons_py_out_keeps_the_cron_table(tmp_path: Path, namespace: str) -> None:
    """A dev start serves the modules that import; a crons.py that does not must not read as
    'the app has no crons' (which would delete every cron and its history)."""
    app = tmp_path / "app"
    shutil.copytree(SCHED_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "functions" / "crons.py").write_text(
        'from server import Crons\n\ncrons = Crons()\ncrons.interval("tick", seconds=3600, fn="jobs:noop")\n')
    async with open_runtime(app, namespace) as rt:
        scheduler = Scheduler(rt, dataclasses.replace(FAST))  # not started: only its cron sync
        await scheduler._sync_app_crons()
        before = await _system_docs(rt, jobs.CRONS)
        assert [c["name"] for c in before] == ["tick"]
        (app / "functions" / "crons.py").write_text("raise RuntimeError('half-edited')\n")
        await rt.load(partial=True)
        assert "functions/crons.py" in rt.app.load_errors
        await scheduler._sync_app_crons()
        assert await _system_docs(rt, jobs.CRONS) == before
        (app / "functions" / "crons.py").write_text("from server import Crons\n\ncrons = Crons()\n")
        await rt.load(partial=True)  # fixed, and now without crons: they go
        await scheduler._sync_app_crons()
        assert await _system_docs(rt, jobs.CRONS) == []
