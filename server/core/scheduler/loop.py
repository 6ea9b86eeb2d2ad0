"""The per-process scheduler loop: runs due scheduled functions and cron ticks.

Every server process runs one. Its parts:

* workers (`concurrency` of them): each takes a due pending job found by a plain read (a
  hint) and hands it to the JobRunner (runs.py), which claims it with one
  `FOR UPDATE SKIP LOCKED` statement and runs it: a mutation exactly once, in its claim's
  transaction; an action at most once, under a lease.
* a listener (server/core/listener.py) on the jobs channel: a NOTIFY carries the due time of a
  newly scheduled job; due now wakes one idle worker, later arms the timer.
* a clock: fires the timer for the next future job, ticks crons, and polls as a safety net (every
  `poll_seconds`, or `fallback_poll_seconds` while the listener is down).
* maintenance (runs.py): renews the leases of this process's running actions, fails expired
  leases of any process, prunes finished jobs older than the retention.
Settings: server/config.py (SchedulerConfig). See docs/scheduler.md.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import secrets
import socket
from collections import deque

from server.config import SchedulerConfig
from server.core import sql
from server.core.backoff import reconnect_delays
from server.core.documents import DatabaseWriter
from server.core.listener import Listener
from server.core.registry import FunctionDef
from server.core.runtime import Runtime
from server.core.scheduler import table
from server.core.scheduler.crons import Crons, app_crons
from server.core.scheduler.doorbell import Doorbell
from server.core.scheduler.runs import HeldConnection, JobRunner
from server.core.scheduler.table import Candidate
from server.core.supervise import Supervised
from server.core.transaction import Transaction
from server.errors import RippleUsageError

log = logging.getLogger("ripple.scheduler")
CRONS_FILE = "functions/crons.py"

PEEK_SPREAD = 4
PER_HEAP_PAGE = 2  # see _take_mutations


class Scheduler:
    """Runs scheduled functions and crons in this process; see the module docstring."""

    def __init__(self, runtime: Runtime, settings: SchedulerConfig | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or runtime.config.scheduler
        self.runner = JobRunner(runtime, self.settings, f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
        self._doorbell = Doorbell(self.settings.concurrency)
        self._poke = asyncio.Event()  # the clock has a new deadline to consider
        self._timer_ms: float | None = None  # earliest known future job
        self._cron_ms: float | None = None  # earliest cron tick
        self._crons_dirty = False
        self._refreshing = False
        self._refresh_again = False
        self._peeked_through = 0.0  # the due time up to which the latest peek looked
        self._stopping = False
        self._busy = 0
        self._queue: deque[Candidate] = deque()
        self._in_flight: set[str] = set()
        self._done_while_peeking: set[str] | None = None  # None: no peek in flight
        self._peek_lock = asyncio.Lock()
        self._backlog = False  # the last peek found a full window of due jobs
        self._workers: list[Supervised] = []
        self._services: list[Supervised] = []
        db = runtime.db
        self.listener = Listener(db.url, runtime.jobs_channel, self._on_wake, loops=runtime.loops)
        metrics = runtime.metrics
        metrics.describe("ripple_scheduler_running_jobs", "gauge", "Scheduled jobs running in this process")
        metrics.describe("ripple_scheduler_listener_connected", "gauge", "1 while the scheduler's LISTEN connection is up")
        metrics.describe("ripple_scheduler_conflicts_total", "counter", "Scheduled-mutation runs retried after a conflict")
        metrics.describe("ripple_scheduler_batch_splits_total", "counter",
                         "Batches of scheduled mutations that conflicted and were run again job by job")
        metrics.describe("ripple_scheduler_claim_misses_total", "counter", "Claims that found their job taken by another process")
        metrics.describe("ripple_scheduler_lost_actions_total", "counter", "Actions failed because their lease expired")
        metrics.describe("ripple_scheduler_pruned_total", "counter", "Finished jobs deleted after the retention")
        metrics.describe("ripple_cron_runs_total", "counter", "Cron ticks by cron and outcome (scheduled, skipped)")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Sync the app's crons (a bad cron definition fails start-up) and start the loops."""
        await self._sync_app_crons()
        self._cron_ms = await self._next_cron_ms()
        self.runtime.on_reload.append(self._on_reload)
        self.runtime.metrics.gauge("ripple_scheduler_running_jobs", lambda: float(self._busy))
        self.runtime.metrics.gauge("ripple_scheduler_listener_connected", lambda: float(self.listener.healthy))
        self.listener.start()
        self._services = [self.runtime.supervise("scheduler clock", self._clock),
                          self.runtime.supervise("scheduler maintenance", self._maintenance)]
        self._workers = [self.runtime.supervise(f"scheduler worker {n}", self._worker)
                         for n in range(self.settings.concurrency)]
        for loop in (*self._services, *self._workers):
            loop.start()
        self._doorbell.ring()  # whatever is already due

    async def stop(self) -> None:
        """Stop claiming; give running jobs `shutdown_seconds` to finish. A mutation cut short
        rolls back (its job stays pending for another process); an action cut short is failed."""
        self._stopping = True
        if self._on_reload in self.runtime.on_reload:
            self.runtime.on_reload.remove(self._on_reload)
        for worker in self._workers:
            worker.finish()  # a worker returns once it sees _stopping: let running jobs end
        await self.listener.stop()
        for loop in self._services:
            await loop.stop()
        self._doorbell.ring(len(self._workers))
        tasks = [w.task for w in self._workers if w.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.shutdown_seconds)
        for worker in self._workers:
            await worker.stop()  # the late ones are cancelled
        self._workers, self._services = [], []

    def _on_reload(self) -> None:
        self._crons_dirty = True
        self._poke.set()

    # -- crons -----------------------------------------------------------------------------------

    async def _sync_app_crons(self) -> None:
        app = self.runtime.app
        if CRONS_FILE in app.load_errors:  # a dev start that left crons.py out: keep the table as is
            log.warning("crons not updated: %s did not load", CRONS_FILE)
            return
        await self.sync_crons(app_crons(app.modules))

    async def sync_crons(self, crons: Crons) -> None:
        """Make `_cron_jobs` match the app's crons (READ COMMITTED: see table.sync_crons)."""
        desired = table.desired_crons(self.runtime.app.registry, crons)
        lock = sql.lock_key(self.runtime.db.namespace, "crons")

        async def body(writer: DatabaseWriter, tx: Transaction) -> None:
            await table.sync_crons(writer, tx, desired, lock)

        await self.runtime.system_transaction(body, isolation="read_committed")

    async def tick_crons(self) -> list[table.TickOutcome]:
        """Schedule the run of every due cron (or skip it if its previous run is still going)."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> list[table.TickOutcome]:
            return await table.tick_crons(writer, tx, self.runtime.jobs_channel)

        outcomes = await self.runtime.system_transaction(body, isolation="read_committed")
        for o in outcomes:
            if o.scheduled_job is None:
                log.warning("cron %r: run skipped because its previous run %s is still %s",
                            o.cron, o.previous_job, o.previous_state)
            outcome = "skipped" if o.scheduled_job is None else "scheduled"
            self.runtime.metrics.inc("ripple_cron_runs_total", cron=o.cron, outcome=outcome)
        return outcomes

    async def _next_cron_ms(self) -> float | None:
        async with self.runtime.db.acquire() as conn:
            return await table.next_cron_due_ms(conn)

    # -- waking ----------------------------------------------------------------------------------

    def _on_wake(self, payload: str | None) -> None:
        if payload is None:  # the listener (re)connected or lost its connection
            if self.listener.healthy:
                self._doorbell.ring()  # anything scheduled while we were away is due now or timed
            self._poke.set()
            return
        try:
            due_ms = float(payload)
        except ValueError:
            due_ms = 0.0
        if due_ms <= table.now_ms() + 1.0:
            self._doorbell.ring()
        else:
            self._arm(due_ms)

    def _arm(self, due_ms: float) -> None:
        if self._timer_ms is None or due_ms < self._timer_ms:
            self._timer_ms = due_ms
            self._poke.set()

    async def _clock(self) -> None:
        last_poll = table.now_ms()
        while True:
            now = table.now_ms()
            poll = self.settings.poll_seconds if self.listener.healthy else self.settings.fallback_poll_seconds
            deadline = min(x for x in (last_poll + poll * 1000.0, self._timer_ms, self._cron_ms) if x is not None)
            if deadline > now:
                try:
                    async with asyncio.timeout((deadline - now) / 1000.0):
                        await self._poke.wait()
                except TimeoutError:
                    pass
            self._poke.clear()
            now = table.now_ms()
            if self._timer_ms is not None and self._timer_ms <= now:
                self._timer_ms = None
                self._doorbell.ring()
            if now >= last_poll + poll * 1000.0:
                last_poll = now
                self._doorbell.ring()
                self._cron_ms = await self._next_cron_ms()
            if self._crons_dirty:
                self._crons_dirty = False
                try:
                    await self._sync_app_crons()
                except RippleUsageError as exc:
                    log.error("crons not updated after reload: %s", exc)
                self._cron_ms = await self._next_cron_ms()
            if self._cron_ms is not None and self._cron_ms <= now:
                await self.tick_crons()
                self._cron_ms = await self._next_cron_ms()

    async def _refresh_timer(self) -> None:
        """After finding nothing due: arm the timer for the earliest job later than what the last
        peek covered. Not "later than now": a job that fell due between that peek and this read
        would be in neither range and wait for the next poll (seen: seconds late). If it is due
        already, the timer fires at once and a worker peeks again.

        One read at a time. A caller arriving while a read is in flight makes it read again
        afterwards: the read in flight may predate the commit that made the caller look (a
        job scheduled while the listener was still connecting, say), and skipping the second
        look would leave that job to the next poll."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        try:
            while True:
                self._refresh_again = False
                async with self.runtime.db.acquire() as conn:
                    row = await conn.fetchrow(sql.FIRST_JOB_IN_RANGE, *table.future_range(self._peeked_through))
                if row is not None:
                    self._arm(float(row["doc"]["scheduledTime"]))
                if not self._refresh_again:
                    break
        finally:
            self._refreshing = False

    # -- workers ---------------------------------------------------------------------------------

    async def _worker(self) -> None:
        errors = reconnect_delays(0.1, 5.0)
        conn = HeldConnection(self.runtime.db)
        try:
            while not self._stopping:
                try:
                    candidate = await self._next_candidate()
                    if candidate is None:
                        await conn.release()  # idle workers hold no pooled connection
                        await self._refresh_timer()
                        await self._doorbell.wait()
                        continue
                    await self._run(candidate, conn)
                    errors = reconnect_delays(0.1, 5.0)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    await conn.release()
                    delay = next(errors)
                    log.exception("scheduler worker failed; retrying in %.1f s", delay)
                    await asyncio.sleep(delay)
        finally:
            await conn.release()

    async def _run(self, first: Candidate, conn: HeldConnection) -> None:
        """Run `first`: alone if it is an action (or names no runnable mutation), else in a batch
        with more due mutations from the queue (batch.py), this worker's share of it."""
        fn = self.runner.mutation_of(first)
        if fn is None:
            self._busy += 1
            try:
                await self.runner.run(first, conn)
            finally:
                self._busy -= 1
                self._done(first.job["_id"])
            return
        jobs = [(first, fn), *self._take_mutations(first)]
        self._busy += len(jobs)
        try:
            while jobs:
                unstarted = {c.job["_id"] for c in await self.runner.run_batch(jobs, conn)}
                for candidate, _ in jobs:
                    if candidate.job["_id"] not in unstarted:
                        self._done(candidate.job["_id"])
                        self._busy -= 1
                jobs = [(c, f) for c, f in jobs if c.job["_id"] in unstarted]
        finally:
            for candidate, _ in jobs:
                self._done(candidate.job["_id"])
            self._busy -= len(jobs)

    def _done(self, job_id: str) -> None:
        """A worker is through with a job (run, or released for others). A peek in flight may
        have read it still pending: that peek must not queue it (see _peek)."""
        self._in_flight.discard(job_id)
        if self._done_while_peeking is not None:
            self._done_while_peeking.add(job_id)

    def _take_mutations(self, first: Candidate) -> list[tuple[Candidate, FunctionDef]]:
        """Due mutations from the queue to join `first` in a batch: up to `batch_size` in all, no more than
        an even share of the queue among the workers (so a short queue is spread over several
        workers, whose transactions overlap) unless the last peek found a full window (a backlog:
        the queue is short only until the next peek, and small batches would pay a transaction's
        fixed cost for a few jobs: a drain of 3,000 no-op jobs ran 105 batches of one job and 99
        of 16 with the even share, 11 and 174 without), and at most PER_HEAP_PAGE from one heap page.
        The last because SERIALIZABLE records what a transaction read per row only up to
        PostgreSQL's `max_pred_locks_per_page` (2) rows of one page; past that it locks the
        whole page, and another batch finishing any job on that page is then a conflict
        (an in-process drain of 3,000 no-op jobs: 65 batches split before this rule, none after)."""
        share = self.settings.batch_size if self._backlog else -(-(len(self._queue) + 1) // self.settings.concurrency)
        room = min(self.settings.batch_size, max(1, share)) - 1
        taken: list[tuple[Candidate, FunctionDef]] = []
        pages: collections.Counter[int] = collections.Counter([first.ctid[0]])
        left: deque[Candidate] = deque()
        while len(taken) < room and self._queue:
            candidate = self._queue.popleft()
            if candidate.job["_id"] in self._in_flight:
                continue
            fn = self.runner.mutation_of(candidate)
            if fn is None:
                self._queue.appendleft(candidate)
                break
            page = candidate.ctid[0]
            if pages[page] >= PER_HEAP_PAGE:
                left.append(candidate)
                continue
            pages[page] += 1
            self._in_flight.add(candidate.job["_id"])
            taken.append((candidate, fn))
        self._queue.extendleft(reversed(left))
        return taken

    async def _next_candidate(self) -> Candidate | None:
        """A due job no other worker of this process is on. Candidates come from a plain read
        (no locks) and are only a hint: the claim decides."""
        for _ in range(3):
            while self._queue:
                candidate = self._queue.popleft()
                if candidate.job["_id"] not in self._in_flight:
                    self._in_flight.add(candidate.job["_id"])
                    return candidate
            async with self._peek_lock:
                if not self._queue:
                    fresh = await self._peek()
                    if not fresh:
                        return None
                    self._queue.extend(fresh)
                    self._doorbell.ring(min(len(fresh), self.settings.concurrency) - 1)
        return None

    async def _peek(self) -> list[Candidate]:
        """Read a window of due jobs. With a backlog, every process reads at a random offset into
        its head (up to PEEK_SPREAD windows deep), so processes mostly work on different jobs
        rather than all reaching for the same earliest ones: due jobs start roughly, not
        strictly, in due order. The window is shuffled for the same reason."""
        window = 2 * self.settings.concurrency * self.settings.batch_size
        offset = random.randrange(PEEK_SPREAD * window) if self._backlog else 0
        self._peeked_through = table.now_ms()
        self._done_while_peeking = done = set[str]()
        try:
            async with self.runtime.db.acquire() as conn:
                found = await table.peek_due(conn, window, offset)
                if not found and offset:
                    found = await table.peek_due(conn, window, 0)
        finally:
            self._done_while_peeking = None
        self._backlog = len(found) == window
        # Not a job in flight here, nor one finished while the peek ran: the peek may have read
        # it before its commit, and a claim of that stale row version would read a version a
        # concurrent transaction replaced (an SSI rw-conflict that can abort a whole batch).
        fresh = [c for c in found if c.job["_id"] not in self._in_flight and c.job["_id"] not in done]
        random.shuffle(fresh)
        return fresh

    # -- maintenance -----------------------------------------------------------------------------

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintenance_seconds)
            await self.runner.renew_leases()
            await self.runner.fail_lost_actions()
            await self.runner.prune()
