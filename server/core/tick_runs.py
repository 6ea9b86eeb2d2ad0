"""A live-query tick's re-runs (subscriptions.py): at the tick's snapshot, one subscriber's query
after another in turn, over up to `live_query_parallelism` connections that share the snapshot.

The tick's own connection always works, and at first alone. After a batch of its runs that
spent most of its time waiting (its loop idle for over WAITED of the batch's duration: not on a
CPU, nor waiting for one, so PostgreSQL or what the queries await is the limit, not Python; only
batches of JUDGED seconds or more are judged, as a short one is mostly its statements' round trips), when enough runs are
left for more connections (RUNS_PER_HELPER each) and the pool has connections to spare
(SPARE_FOR_OTHERS stay for mutations and HTTP calls), the tick's transaction exports its
snapshot (pg_export_snapshot()) and *helper* connections import it (SET TRANSACTION SNAPSHOT)
as they open: every result of the tick is computed at the tick's snapshot_ts, whichever
connection ran it. Queries that keep the loop busy get no helpers: more connections would
share the one core the loop runs on, and split the batches into more statements. Runs are taken from one
queue in round-robin order (one subscriber's query, then the next subscriber's, ...), so a
client with many queries gets one turn in each round across all the connections, not one
connection to itself.

Each connection takes its runs in batches and runs a batch's queries at once, their document
reads sent together (batched_reads.py: one statement per kind of read, exact rows and read
sets). A batch starts at FIRST_BATCH runs and doubles while batches end within BATCH_TIME per
connection sharing the event loop (at most BATCH_RUNS, or the connection's share of the tick),
and is cut back when it takes over twice that: queries heavy on CPU go one or a few at a time.
A batch has a slice of LIVE_SLICE seconds per connection sharing the loop; its runs still going
after it take that connection's snapshot over and finish apart (the manager's `run_apart`; the
first holds the snapshot until all of them ended), and that connection takes no more turns.
The others go on until the queue is empty or TICK_BUDGET is spent; what is left waits for the
next tick. A helper's transaction holds its imported snapshot by itself: once it is open, the
tick's transaction may end (or finish apart) first. A helper
that cannot open (no connection within HELPER_WAIT, the export already gone) is done without;
one that fails while running (its connection lost) is closed and its query runs again at the
next tick; the tick's own connection failing fails the tick, which is retried, as before.
A tick cancelled (the manager stopping) cancels every run and closes every helper connection it
did not hand over, discarding it: a cancelled statement's connection is never reused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Protocol

from server.core import sql
from server.core.batched_reads import BatchedReads
from server.core.database import Snapshot, connection_failure, discard
from server.core.runtime import QueryRun, Runtime
from server.core.shared_queries import (
    CacheSlot,
    SharedQuery,
    cache_slot,
    cached_run,
    keep_run,
    round_robin,
)
from server.wire import QueryResult

log = logging.getLogger("ripple.subscriptions")

LIVE_SLICE = 0.1  # seconds a run may take inside a tick before it finishes apart
TICK_BUDGET = 0.25  # seconds of runs a tick starts; the rest wait for the next tick
RUNS_PER_HELPER = 2  # a tick takes a helper connection only with this many runs left per connection
SPARE_FOR_OTHERS = 2  # pooled connections that helpers leave to mutations and HTTP calls
BATCH_RUNS = 64  # runs a connection takes at once at most, their reads sent together
FIRST_BATCH = 2  # ... at first in a tick; doubled while batches end within BATCH_TIME, cut past twice that
BATCH_TIME = 0.025  # seconds of one connection's batch, times the connections sharing the event loop
WAITED = 0.5  # a batch whose loop was idle (_ThreadClock) for over this share of its duration mostly waited
JUDGED = 0.005  # seconds a batch must take to be judged so: a short one is mostly its statements' round trips
HELPER_WAIT = 0.05  # seconds a helper waits for a pooled connection before the tick goes on without it

Outcome = QueryRun | QueryResult
Results = list[tuple[SharedQuery, Outcome]]


class TickHost(Protocol):
    """What the tick's runs need of the subscription manager."""

    runtime: Runtime

    def trigger(self) -> None: ...

    async def execute(self, conn: Any, sq: SharedQuery) -> Outcome: ...

    def note_run(self, sq: SharedQuery, outcome: Outcome | None) -> None: ...

    def run_apart(self, sq: SharedQuery, snapshot: Snapshot | None, started: tuple[asyncio.Future[Any], int] | None) -> None: ...


def helpers_wanted(runs: int, parallelism: int, spare: int) -> int:
    """Helper connections for a tick with `runs` runs to do: at most `parallelism` - 1, only as
    many as leave RUNS_PER_HELPER runs to every connection, and leaving SPARE_FOR_OTHERS of the
    pool's `spare` connections (idle or yet to open) to everyone else."""
    return max(0, min(parallelism - 1, runs // RUNS_PER_HELPER - 1, spare - SPARE_FOR_OTHERS))


async def run_in_tick(host: TickHost, snapshot: Snapshot, to_run: list[SharedQuery], snapshot_ts: int,
                      new_results: Results) -> None:
    """Compute `to_run` at the tick's `snapshot` (at `snapshot_ts`) into `new_results`, until the
    queue is empty or the tick's budget is spent. A run that overran its slice on `snapshot`
    leaves it `handed_over` (the caller must not close it)."""
    runtime = host.runtime
    turns: deque[tuple[SharedQuery, CacheSlot]] = deque()
    for sq in round_robin(to_run):
        if (hit := cached_run(runtime, slot := cache_slot(runtime, sq), snapshot_ts)) is not None:
            new_results.append((sq, hit))  # the query cache's result at this ts: no run
        else:
            turns.append((sq, slot))
    tick = _Turns(host, turns, snapshot_ts, new_results)
    own = asyncio.ensure_future(tick.work(snapshot, helper=False))
    try:
        await own  # helpers start only while it works: once it is done, the list is complete
        await asyncio.gather(*tick.helpers)
    except BaseException:  # a failed tick or stopping: every run ends before its connection goes back
        tasks = [own, *tick.helpers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _ThreadClock:
    """The calling thread's time on a CPU and time spent waiting for one (runnable, but other
    processes had the cores), in seconds: Linux's /proc/thread-self/schedstat, read with one
    pread of a file kept open per thread; elsewhere its CPU time and no wait. A batch's duration
    minus both is the time its loop was idle: waiting for PostgreSQL or what the queries await."""

    _files: dict[tuple[int, int], int] = {}  # (process, thread) -> the open file, -1 if none

    @classmethod
    def read(cls) -> tuple[float, float]:
        thread = (os.getpid(), threading.get_native_id())  # a forked process opens its own
        fd = cls._files.get(thread)
        if fd is None:
            try:
                fd = cls._files[thread] = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            except OSError:
                fd = cls._files[thread] = -1
        if fd >= 0:
            try:
                on_cpu, runnable, _ = os.pread(fd, 64, 0).split()
                return int(on_cpu) / 1e9, int(runnable) / 1e9
            except (OSError, ValueError):
                pass
        return time.thread_time(), 0.0


class _Turns:
    """One tick's queue of runs, taken by its connections in turn."""

    def __init__(self, host: TickHost, turns: deque[tuple[SharedQuery, CacheSlot]], ts: int, results: Results) -> None:
        self.host, self.turns, self.ts, self.results = host, turns, ts, results
        self.share = max(1, min(BATCH_RUNS, len(turns)))  # runs a connection takes at once: its share at most
        self.batch = min(FIRST_BATCH, self.share)
        self.working = 0  # connections taking turns
        self.started = asyncio.get_running_loop().time()
        self.helpers: list[asyncio.Future[None]] = []
        self.waited = False  # the last batch of the tick's own connection spent most of its time waiting

    async def _call_helpers(self, snap: Snapshot) -> None:
        """Between two batches of the tick's own connection: when the last one spent most of its
        time waiting (for PostgreSQL, or on what its queries awaited) rather than running Python,
        open helper connections at the tick's snapshot for the runs left. When the event loop was
        busy running the queries, more connections would only share its one core (and split the
        batches, their reads going out as more statements), so the tick goes on alone."""
        runtime = self.host.runtime
        if self.helpers or not self.waited:
            return
        n = helpers_wanted(len(self.turns), runtime.config.live_query_parallelism, runtime.db.spare())
        if n == 0:
            return
        exported = str(await snap.conn.fetchval(sql.EXPORT_SNAPSHOT))
        self.share = max(1, min(BATCH_RUNS, -(-len(self.turns) // (n + 1))))
        self.batch = min(self.batch, self.share)
        self.helpers = [asyncio.ensure_future(self.helper(exported)) for _ in range(n)]

    async def helper(self, exported: str) -> None:
        """Open a connection at the exported snapshot and take turns on it."""
        runtime = self.host.runtime
        try:
            snap = await runtime.db.snapshot(exported, timeout=HELPER_WAIT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no connection in time, a lost one, the export already ended
            log.debug("a live-query tick goes on without a helper connection (%s: %s)", type(exc).__name__, exc)
            return
        try:
            await self.work(snap, helper=True)
        except BaseException:
            if not snap.handed_over:
                discard(snap.conn)  # a cancelled or failed run spoils its connection
            raise
        finally:
            if not snap.handed_over:
                await snap.close()

    async def work(self, snap: Snapshot, helper: bool) -> None:
        """Take batches of runs from the queue on `snap` until it is empty, the budget is spent,
        a batch overruns its slice (its unfinished runs keep `snap`) or a helper's connection
        fails."""
        loop = asyncio.get_running_loop()
        self.working += 1
        try:
            while self.turns:
                if loop.time() - self.started > TICK_BUDGET:
                    self.host.trigger()  # the rest at the next tick
                    return
                batch = [self.turns.popleft() for _ in range(min(self.batch, len(self.turns)))]
                if not await self._batch(snap, helper, batch):
                    return
                if not helper and self.turns:
                    await self._call_helpers(snap)
        finally:
            self.working -= 1

    async def _batch(self, snap: Snapshot, helper: bool, batch: list[tuple[SharedQuery, CacheSlot]]) -> bool:
        """Run `batch` at once on `snap`, their reads sent together (batched_reads.py); False
        when `snap` takes no more turns."""
        host, runtime = self.host, self.host.runtime
        loop = asyncio.get_running_loop()
        reads = BatchedReads(snap.conn, runtime.catalog.batched)
        started, (cpu, runnable) = loop.time(), _ThreadClock.read()
        begun = [runtime.query_cache.begin() for _ in batch]
        runs = [loop.create_task(host.execute(reads, sq)) for sq, _ in batch]
        try:
            await asyncio.wait(runs, timeout=LIVE_SLICE * self.working)  # the connections' batches share the loop
        except asyncio.CancelledError:  # stopping: the runs must end before their snapshot closes
            for run in runs:
                run.cancel()
            reads.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            await reads.idle()
            raise
        if helper:
            runtime.metrics.inc("ripple_live_query_parallel_runs_total", len(batch))
        unfinished = [(sq, run) for (sq, _), run in zip(batch, runs, strict=True) if not run.done()]
        if unfinished:
            self._finish_apart(snap, reads, unfinished)
        took = loop.time() - started
        if not helper and took >= JUDGED:
            cpu_after, runnable_after = _ThreadClock.read()
            self.waited = took - (cpu_after - cpu) - (runnable_after - runnable) > WAITED * took
        meant = BATCH_TIME * self.working  # the connections' batches take turns on one event loop
        if took < meant:
            self.batch = min(self.share, max(self.batch, 2 * len(batch)))
        elif took > 2 * meant:
            self.batch = max(1, int(len(batch) * meant / took))
        for (sq, slot), run, was in zip(batch, runs, begun, strict=True):
            if not run.done():
                continue
            try:
                outcome = run.result()
            except Exception as exc:
                if helper and connection_failure(exc):
                    self._lost(sq, snap, exc)
                    return False
                raise
            sq.slow = False  # it ended within its batch's slice
            host.note_run(sq, outcome)
            if isinstance(outcome, QueryRun) and outcome.broken:
                if helper:
                    self._lost(sq, snap, None)
                    return False
                raise RuntimeError(f"snapshot transaction broke while running {sq.path}; the tick is retried")
            self.results.append((sq, outcome))
            keep_run(runtime, slot, outcome, was, self.ts)
        return not unfinished

    def _finish_apart(self, snap: Snapshot, reads: BatchedReads, unfinished: list[tuple[SharedQuery, asyncio.Task[Outcome]]]) -> None:
        """Runs of a batch still going after its slice finish apart (the manager's
        `run_apart`); the first takes `snap` over and closes it once all of them ended."""
        others = [run for _, run in unfinished]

        async def first_then_all(run: asyncio.Task[Outcome]) -> Outcome:
            try:
                return await run
            finally:
                await asyncio.wait(others)
                await reads.idle()

        for n, (sq, run) in enumerate(unfinished):
            if n == 0:
                self.host.run_apart(sq, snapshot=snap, started=(asyncio.ensure_future(first_then_all(run)), self.ts))
            else:
                self.host.run_apart(sq, snapshot=None, started=(run, self.ts))
        self.host.trigger()  # what is left and no other connection reaches runs at the next tick

    def _lost(self, sq: SharedQuery, snap: Snapshot, exc: BaseException | None) -> None:
        """A helper's connection failed running `sq`: it is closed, never reused; `sq` stays
        stale and runs at the next tick."""
        discard(snap.conn)
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "its transaction broke"
        log.warning("a live-query helper connection failed running %s (%s); it runs again", sq.path, why)
        self.host.runtime.metrics.inc("ripple_live_query_helpers_lost_total")
        self.host.trigger()
