"""The per-process scheduler loop: runs due scheduled functions and cron ticks.

Every server process runs one. Its parts:

* workers (RIPPLE_SCHEDULER_CONCURRENCY of them): each claims the earliest due pending job with
  one `FOR UPDATE SKIP LOCKED` statement in a SERIALIZABLE transaction and
  - a mutation: runs it in that same transaction (a savepoint around the user code) and marks
    the job success, or failed with the error if it raised; one commit, so it runs exactly once;
  - an action: marks it inProgress with a lease (owner process + expiry) and commits, runs it
    outside any transaction, then records success or failed; a lease that expires (the process
    died) ends the job failed, never re-run: at most once.
* a listener on a dedicated connection: a NOTIFY on the jobs channel carries the due time of a
  newly scheduled job; due now wakes one idle worker, later arms the timer.
* a clock: fires the timer for the next future job, ticks crons, and polls as a safety net (every
  RIPPLE_SCHEDULER_POLL_SECONDS, or RIPPLE_SCHEDULER_FALLBACK_POLL_SECONDS while the listener is
  down).
* maintenance: renews the leases of this process's running actions, fails expired leases of any
  process, prunes finished jobs older than the retention.
See docs/scheduler.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.core import crons, jobs, logs, sql
from server.core.backoff import conflict_retry_delays, reconnect_delays
from server.core.database import Database, decode_doc
from server.core.documents import DatabaseWriter, Transaction
from server.core.executor import Auth, FunctionFailure, MutationCtx, Runtime
from server.core.registry import FunctionDef
from server.core.scheduling import MutationScheduler, current_job
from server.errors import RippleUsageError, TransactionConflict

log = logging.getLogger("ripple.scheduler")

LOST_ACTION_ERROR = "the server running this action stopped before it finished; actions are not retried"
SHUTDOWN_ACTION_ERROR = "the server shut down before this action finished; actions are not retried"
PEEK_SPREAD = 4
RECOVER_BATCH = 100
PRUNE_BATCH = 500


def _env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass
class SchedulerSettings:
    enabled: bool = True
    concurrency: int = 10  # jobs running at once in this process
    poll_seconds: float = 5.0  # safety poll while the listener is connected
    fallback_poll_seconds: float = 1.0  # poll while it is not
    lease_seconds: float = 30.0  # a running action's lease; renewed every third of it
    retention_seconds: float = 7 * 24 * 3600.0  # finished jobs are deleted after this
    shutdown_seconds: float = 10.0  # on shutdown, how long running jobs may take to finish

    @classmethod
    def from_env(cls) -> SchedulerSettings:
        return cls(
            enabled=os.environ.get("RIPPLE_SCHEDULER", "on").lower() not in ("0", "off", "false", "no"),
            concurrency=max(1, int(_env("RIPPLE_SCHEDULER_CONCURRENCY", 10))),
            poll_seconds=_env("RIPPLE_SCHEDULER_POLL_SECONDS", 5.0),
            fallback_poll_seconds=_env("RIPPLE_SCHEDULER_FALLBACK_POLL_SECONDS", 1.0),
            lease_seconds=_env("RIPPLE_SCHEDULER_LEASE_SECONDS", 30.0),
            retention_seconds=_env("RIPPLE_SCHEDULER_RETENTION_SECONDS", 7 * 24 * 3600.0),
            shutdown_seconds=_env("RIPPLE_SCHEDULER_SHUTDOWN_SECONDS", 10.0),
        )

    @property
    def maintenance_seconds(self) -> float:
        return max(0.05, min(self.lease_seconds / 3.0, 10.0))


class Doorbell:
    """Wakes idle workers one at a time. A ring with nobody waiting is kept (up to `cap`), so a
    wake-up that arrives while every worker is busy is not lost."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._permits = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def ring(self, times: int = 1) -> None:
        for _ in range(times):
            while self._waiters and self._waiters[0].done():
                self._waiters.popleft()
            if self._waiters:
                self._waiters.popleft().set_result(None)
            else:
                self._permits = min(self._permits + 1, self._cap)

    async def wait(self) -> None:
        if self._permits:
            self._permits -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()


def _set_event(event: asyncio.Event, *_: object) -> None:
    event.set()


class JobListener:
    """LISTEN on the jobs channel on a dedicated connection (never a pooled one: the pool runs
    `UNLISTEN *` on release). Reconnects with backoff; `connected` says whether it listens now."""

    def __init__(self, db: Database, on_due: Callable[[float], None], on_connect: Callable[[], None]) -> None:
        self._db = db
        self.channel = sql.jobs_channel(db.namespace)
        self._on_due, self._on_connect = on_due, on_connect
        self.connected = False
        self.backend_pid: int | None = None

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            due = float(payload)
        except ValueError:
            due = 0.0
        self._on_due(due)

    async def run(self) -> None:
        delays = reconnect_delays()
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._db.url, server_settings={"application_name": "ripple-scheduler"})
                conn.add_termination_listener(functools.partial(_set_event, lost))
                await conn.add_listener(self.channel, self._notified)
                self.connected, self.backend_pid = True, conn.get_server_pid()
                delays = reconnect_delays()
                self._on_connect()  # anything scheduled while we were away is due now or timed
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=5.0)
                    except TimeoutError:
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("scheduler listener lost its connection (%s: %s); polling until it is back",
                            type(exc).__name__, exc)
            finally:
                self.connected = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(next(delays))


@dataclass
class _Candidate:
    job: dict[str, Any]  # as read, unlocked
    ctid: Any  # the physical address of that row version; the claim locks exactly it


class _HeldConnection:
    """A worker keeps one pooled connection while it has jobs to run (no acquire and reset per
    job) and gives it back when it goes idle."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._conn is None:
            self._conn = await self._db.acquire()
        return self._conn

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            assert self._db.pool is not None
            await self._db.pool.release(conn)


class Scheduler:
    """Runs scheduled functions and crons in this process; see the module docstring."""

    def __init__(self, runtime: Runtime, settings: SchedulerSettings | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or SchedulerSettings.from_env()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
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
        self._running_actions: set[str] = set()
        self._conflicts: dict[str, int] = {}
        self._queue: deque[_Candidate] = deque()
        self._in_flight: set[str] = set()
        self._peek_lock = asyncio.Lock()
        self._backlog = False  # the last peek found a full window of due jobs
        self._workers: list[asyncio.Task[None]] = []
        self._services: list[asyncio.Task[None]] = []
        self.listener = JobListener(runtime.db, self._on_due, self._on_listener_connect)
        metrics = runtime.metrics
        metrics.describe("ripple_scheduler_running_jobs", "gauge", "Scheduled jobs running in this process")
        metrics.describe("ripple_scheduler_listener_connected", "gauge", "1 while the scheduler's LISTEN connection is up")
        metrics.describe("ripple_scheduler_conflicts_total", "counter", "Scheduled-mutation runs retried after a conflict")
        metrics.describe("ripple_scheduler_claim_misses_total", "counter", "Claims that found their job taken by another process")
        metrics.describe("ripple_scheduler_lost_actions_total", "counter", "Actions failed because their lease expired")
        metrics.describe("ripple_scheduler_pruned_total", "counter", "Finished jobs deleted after the retention")
        metrics.describe("ripple_cron_runs_total", "counter", "Cron ticks by cron and outcome (scheduled, skipped)")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Sync the app's crons (a bad cron definition fails start-up) and start the loops."""
        await crons.sync(self.runtime, crons.app_crons(self.runtime.app))
        self._cron_ms = await crons.next_due_ms(self.runtime)
        self.runtime.on_reload.append(self._on_reload)
        self.runtime.metrics.gauge("ripple_scheduler_running_jobs", lambda: float(self._busy))
        self.runtime.metrics.gauge("ripple_scheduler_listener_connected", lambda: float(self.listener.connected))
        self._services = [
            asyncio.create_task(self._supervise("listener", self.listener.run), name="ripple-scheduler-listener"),
            asyncio.create_task(self._supervise("clock", self._clock), name="ripple-scheduler-clock"),
            asyncio.create_task(self._supervise("maintenance", self._maintenance), name="ripple-scheduler-maintenance"),
        ]
        self._workers = [
            asyncio.create_task(self._worker(), name=f"ripple-scheduler-worker-{n}")
            for n in range(self.settings.concurrency)
        ]
        self._doorbell.ring()  # whatever is already due

    async def stop(self) -> None:
        """Stop claiming; give running jobs `shutdown_seconds` to finish. A mutation cut short
        rolls back (its job stays pending for another process); an action cut short is failed."""
        self._stopping = True
        if self._on_reload in self.runtime.on_reload:
            self.runtime.on_reload.remove(self._on_reload)
        for task in self._services:
            task.cancel()
        self._doorbell.ring(len(self._workers))
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=self.settings.shutdown_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.gather(*self._services, return_exceptions=True)
        self._workers, self._services = [], []

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Keep a side loop alive: an unexpected error is logged loudly and the loop restarts."""
        delays = reconnect_delays(0.5, 30.0)
        while not self._stopping:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = next(delays)
                log.exception("scheduler %s loop failed; restarting it in %.1f s", name, delay)
                await asyncio.sleep(delay)

    def _on_reload(self) -> None:
        self._crons_dirty = True
        self._poke.set()

    # -- waking ----------------------------------------------------------------------------------

    def _on_due(self, due_ms: float) -> None:
        if due_ms <= jobs.now_ms() + 1.0:
            self._doorbell.ring()
        else:
            self._arm(due_ms)

    def _on_listener_connect(self) -> None:
        self._doorbell.ring()
        self._poke.set()

    def _arm(self, due_ms: float) -> None:
        if self._timer_ms is None or due_ms < self._timer_ms:
            self._timer_ms = due_ms
            self._poke.set()

    async def _clock(self) -> None:
        last_poll = jobs.now_ms()
        while True:
            now = jobs.now_ms()
            poll = self.settings.poll_seconds if self.listener.connected else self.settings.fallback_poll_seconds
            deadline = min(x for x in (last_poll + poll * 1000.0, self._timer_ms, self._cron_ms) if x is not None)
            if deadline > now:
                try:
                    async with asyncio.timeout((deadline - now) / 1000.0):
                        await self._poke.wait()
                except TimeoutError:
                    pass
            self._poke.clear()
            now = jobs.now_ms()
            if self._timer_ms is not None and self._timer_ms <= now:
                self._timer_ms = None
                self._doorbell.ring()
            if now >= last_poll + poll * 1000.0:
                last_poll = now
                self._doorbell.ring()
                self._cron_ms = await crons.next_due_ms(self.runtime)
            if self._crons_dirty:
                self._crons_dirty = False
                try:
                    await crons.sync(self.runtime, crons.app_crons(self.runtime.app))
                except RippleUsageError as exc:
                    log.error("crons not updated after reload: %s", exc)
                self._cron_ms = await crons.next_due_ms(self.runtime)
            if self._cron_ms is not None and self._cron_ms <= now:
                await crons.tick(self.runtime)
                self._cron_ms = await crons.next_due_ms(self.runtime)

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
                    row = await conn.fetchrow(sql.FIRST_JOB_IN_RANGE, *jobs.future_range(self._peeked_through))
                if row is not None:
                    self._arm(float(row["doc"]["scheduledTime"]))
                if not self._refresh_again:
                    break
        finally:
            self._refreshing = False

    # -- workers ---------------------------------------------------------------------------------

    async def _worker(self) -> None:
        errors = reconnect_delays(0.1, 5.0)
        conn = _HeldConnection(self.runtime.db)
        try:
            while not self._stopping:
                try:
                    candidate = await self._next_candidate()
                    if candidate is None:
                        await conn.release()  # idle workers hold no pooled connection
                        await self._refresh_timer()
                        await self._doorbell.wait()
                        continue
                    self._busy += 1
                    try:
                        await self._attempt(candidate, conn)
                    finally:
                        self._busy -= 1
                        self._in_flight.discard(candidate.job["_id"])
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

    async def _next_candidate(self) -> _Candidate | None:
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

    async def _peek(self) -> list[_Candidate]:
        """Read a window of due jobs. With a backlog, every process reads at a random offset into
        its head (up to PEEK_SPREAD windows deep), so processes mostly work on different jobs
        rather than all reaching for the same earliest ones: due jobs start roughly, not
        strictly, in due order. The window is shuffled for the same reason."""
        window = 2 * self.settings.concurrency
        offset = random.randrange(PEEK_SPREAD * window) if self._backlog else 0
        self._peeked_through = now = jobs.now_ms()
        lo, hi = jobs.due_range(now)
        async with self.runtime.db.acquire() as conn:
            rows = await conn.fetch(sql.PEEK_DUE_JOBS, lo, hi, window, offset)
            if not rows and offset:
                rows = await conn.fetch(sql.PEEK_DUE_JOBS, lo, hi, window, 0)
        self._backlog = len(rows) == window
        fresh = [
            _Candidate(decode_doc(r["id"], r["creation_time"], r["doc"]), r["ctid"])
            for r in rows if r["id"] not in self._in_flight
        ]
        random.shuffle(fresh)
        return fresh

    async def _attempt(self, candidate: _Candidate, conn: _HeldConnection) -> None:
        job = candidate.job
        try:
            fn = self.runtime.app.registry.resolve(job["name"], allow_internal=True)
            if fn.kind == "query":
                raise RippleUsageError(f"{fn.path} is a query; only mutations and actions can be scheduled")
        except RippleUsageError as exc:
            if await self._fail_unrunnable(candidate, str(exc)):
                self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=jobs.FAILED)
            return
        if fn.kind == "action":
            await conn.release()  # an action may run for minutes: hold no pooled connection
            claimed = await self._claim_action(candidate)
            if claimed is not None:
                await self._run_action(claimed, fn)
            return
        try:
            state = await self._run_mutation_job(await conn.get(), candidate, fn)
        except (TransactionConflict, *jobs.CONFLICTS):
            await self._conflicted(job["_id"])
            return
        if state is not None:
            self._conflicts.pop(job["_id"], None)
            self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=state)

    async def _conflicted(self, job_id: str) -> None:
        """A scheduled mutation lost a conflict (the rollback released it). Back off and let it
        be claimed again; after max_mutation_attempts conflicts it fails, as a mutation would."""
        metrics = self.runtime.metrics
        metrics.inc("ripple_scheduler_conflicts_total")
        metrics.inc("ripple_mutation_retries_total")
        attempts = self.runtime.config.max_mutation_attempts
        if len(self._conflicts) > 10_000:
            self._conflicts.clear()
        count = self._conflicts[job_id] = self._conflicts.get(job_id, 0) + 1
        if count < attempts:
            delays = conflict_retry_delays()
            for _ in range(count - 1):
                next(delays)
            await asyncio.sleep(next(delays))
            return
        self._conflicts.pop(job_id, None)
        error = f"kept conflicting with concurrent writes ({attempts} attempts)"
        if await self._finish_if(job_id, (jobs.PENDING,), jobs.FAILED, error):
            metrics.inc("ripple_mutations_total", outcome="error")

    async def _claim(self, tx: Transaction, candidate: _Candidate) -> dict[str, Any] | None:
        """The one atomic claim: lock this job's row if it is still pending, due and free. The
        row version at the peeked ctid is the peeked document, so that is what is returned."""
        lo, hi = jobs.due_range(jobs.now_ms())
        claimed = await tx.execute("fetchval", sql.CLAIM_JOB_AT, candidate.ctid, candidate.job["_id"], lo, hi)
        return candidate.job if claimed is not None else None

    async def _run_mutation_job(self, conn: asyncpg.Connection, candidate: _Candidate, fn: FunctionDef) -> str | None:
        """Claim a scheduled mutation and run it in the same SERIALIZABLE transaction, which also
        records the job's final state: it commits exactly once. None: another worker had it."""
        runtime = self.runtime
        job_id = candidate.job["_id"]
        async with runtime.transaction(conn, "serializable") as tx:
            job = await self._claim(tx, candidate)
            if job is None:
                self.runtime.metrics.inc("ripple_scheduler_claim_misses_total")
                return None
            started = jobs.now_ms()
            user_tx, scheduler, error = await self._run_mutation(conn, job, fn)
            if user_tx is not None:
                if user_tx.conflicted:
                    raise _JobConflict(job_id)
                tx.writes.update(user_tx.writes)  # one write set, one commit
            final = jobs.final_fields(jobs.SUCCESS if error is None else jobs.FAILED, error, startedTime=started)
            await jobs.write_claimed(tx, job, candidate.ctid, final)
        if scheduler is not None:
            scheduler.committed()
        runtime.metrics.inc("ripple_mutations_total", outcome="success" if error is None else "error")
        return jobs.SUCCESS if error is None else jobs.FAILED

    async def _run_mutation(
        self, conn: asyncpg.Connection, job: dict[str, Any], fn: FunctionDef
    ) -> tuple[Transaction | None, MutationScheduler | None, str | None]:
        """Run the user's mutation inside the claiming transaction under a savepoint. Returns its
        transaction and scheduler, and the error if it failed (its writes are then rolled back)."""
        runtime = self.runtime
        job_id = job["_id"]
        try:
            kwargs = fn.validate_args(job["args"][0])
        except RippleUsageError as exc:
            return None, None, str(exc)
        user_tx = Transaction(conn, runtime.catalog, writable=True)
        scheduler = MutationScheduler(user_tx, runtime, running_job=job_id)
        ctx = MutationCtx(DatabaseWriter(user_tx), Auth(None), scheduler)
        buffer = logs.LogBuffer()
        token = current_job.set(job_id)
        await conn.execute(sql.SAVEPOINT_JOB)  # no RELEASE needed: COMMIT keeps what it holds
        try:
            await runtime.invoke(fn, ctx, kwargs, buffer, runtime.config.mutation_timeout)
            if user_tx.conflicted:
                raise _JobConflict(job_id)
        except Exception as exc:
            if isinstance(exc, jobs.CONFLICTS) or user_tx.conflicted:
                raise _JobConflict(job_id) from exc
            await conn.execute(sql.ROLLBACK_TO_JOB)
            failure = runtime.failure(fn, exc, buffer)
            self._log_lines(job, failure.log_lines)
            return None, None, failure.message
        finally:
            current_job.reset(token)
        self._log_lines(job, buffer.finish())
        return user_tx, scheduler, None

    async def _claim_action(self, candidate: _Candidate) -> dict[str, Any] | None:
        """Claim a scheduled action: mark it inProgress under this process's lease and commit."""
        lease_ms = self.settings.lease_seconds * 1000.0

        async def body(writer: DatabaseWriter, tx: Transaction) -> dict[str, Any] | None:
            job = await self._claim(tx, candidate)
            if job is None:
                self.runtime.metrics.inc("ripple_scheduler_claim_misses_total")
                return None
            now = jobs.now_ms()
            fields = {"state": {"kind": jobs.IN_PROGRESS}, "startedTime": now,
                      "lease": {"owner": self.owner, "expiresAt": now + lease_ms}}
            await jobs.write_claimed(tx, job, candidate.ctid, fields)
            return {**job, **fields}

        return await jobs.system_transaction(self.runtime, body, isolation="read_committed")

    async def _fail_unrunnable(self, candidate: _Candidate, error: str) -> bool:
        async def body(writer: DatabaseWriter, tx: Transaction) -> bool:
            job = await self._claim(tx, candidate)
            if job is not None:
                await jobs.write_claimed(tx, job, candidate.ctid, jobs.final_fields(jobs.FAILED, error))
            return job is not None

        return await jobs.system_transaction(self.runtime, body, isolation="read_committed")

    async def _run_action(self, job: dict[str, Any], fn: FunctionDef) -> None:
        job_id = job["_id"]
        self._running_actions.add(job_id)
        token = current_job.set(job_id)
        state: jobs.StateKind = jobs.SUCCESS
        error: str | None = None
        try:
            outcome = await self.runtime.call("action", job["name"], job["args"][0], None, allow_internal=True)
            self._log_lines(job, outcome.log_lines)
        except FunctionFailure as failure:
            self._log_lines(job, failure.log_lines)
            state, error = jobs.FAILED, failure.message
        except RippleUsageError as exc:
            state, error = jobs.FAILED, str(exc)
        except Exception:
            log.exception("scheduled action %s (%s) could not be run", job_id, job["name"])
            state, error = jobs.FAILED, "internal error running the scheduled action"
        except asyncio.CancelledError:
            await self._finish_if(job_id, (jobs.IN_PROGRESS,), jobs.FAILED, SHUTDOWN_ACTION_ERROR, owner=self.owner)
            raise
        finally:
            current_job.reset(token)
            self._running_actions.discard(job_id)
        if not await self._finish_if(job_id, (jobs.IN_PROGRESS,), state, error, owner=self.owner):
            log.info("scheduled action %s (%s) finished, but its job was canceled or failed meanwhile",
                     job_id, job["name"])

    async def _finish_if(self, job_id: str, states: tuple[str, ...], kind: jobs.StateKind, error: str | None,
                         owner: str | None = None) -> bool:
        """Move a job to a final state if it is still in one of `states` (and, for a running
        action, still under our lease). Returns whether it did."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> bool:
            locked = await jobs.fetch_locked(tx, sql.LOCK_JOBS, [job_id])
            if not locked or locked[0]["state"]["kind"] not in states:
                return False
            if owner is not None and (locked[0].get("lease") or {}).get("owner") != owner:
                return False
            await jobs.finish(writer, locked[0], kind, error)
            return True

        done = await jobs.system_transaction(self.runtime, body, isolation="read_committed")
        if done:
            self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=kind)
        return done

    def _log_lines(self, job: dict[str, Any], lines: list[str]) -> None:
        for line in lines:
            log.info("%s [job %s] %s", job["name"], job["_id"], line)

    # -- maintenance -----------------------------------------------------------------------------

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintenance_seconds)
            await self.renew_leases()
            await self.fail_lost_actions()
            await self.prune()

    async def renew_leases(self) -> None:
        ids = sorted(self._running_actions)
        if not ids:
            return
        expires = jobs.now_ms() + self.settings.lease_seconds * 1000.0

        async def body(writer: DatabaseWriter, tx: Transaction) -> None:
            for job in await jobs.fetch_locked(tx, sql.LOCK_JOBS, ids):
                lease = job.get("lease") or {}
                if job["state"]["kind"] == jobs.IN_PROGRESS and lease.get("owner") == self.owner:
                    await writer.patch(job["_id"], {"lease": {"owner": self.owner, "expiresAt": expires}})

        await jobs.system_transaction(self.runtime, body, isolation="read_committed")

    async def fail_lost_actions(self) -> int:
        """Fail running actions whose lease expired: their process died (or hung) mid-run."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> list[dict[str, Any]]:
            now = jobs.now_ms()
            lost = []
            for job in await jobs.fetch_locked(tx, sql.LOCK_JOBS_IN_STATE_RANGE, *jobs.state_range(jobs.IN_PROGRESS), RECOVER_BATCH):
                lease = job.get("lease") or {}
                if lease.get("expiresAt", 0.0) < now and job["_id"] not in self._running_actions:
                    await jobs.finish(writer, job, jobs.FAILED, LOST_ACTION_ERROR)
                    lost.append(job)
            return lost

        lost = await jobs.system_transaction(self.runtime, body, isolation="read_committed")
        for job in lost:
            log.error("scheduled action %s (%s) lost: its lease held by %s expired; marked failed, not re-run",
                      job["_id"], job["name"], (job.get("lease") or {}).get("owner"))
            self.runtime.metrics.inc("ripple_scheduler_lost_actions_total")
            self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=jobs.FAILED)
        return len(lost)

    async def prune(self) -> int:
        """Delete finished jobs older than the retention, in batches."""
        cutoff = jobs.now_ms() - self.settings.retention_seconds * 1000.0
        total = 0
        while True:
            async def body(writer: DatabaseWriter, tx: Transaction) -> int:
                rows = await jobs.fetch_locked(tx, sql.LOCK_JOBS_COMPLETED_BEFORE, *jobs.completed_before_range(cutoff), PRUNE_BATCH)
                for job in rows:
                    await writer.delete(job["_id"])
                return len(rows)

            n = await jobs.system_transaction(self.runtime, body, isolation="read_committed")
            total += n
            if n < PRUNE_BATCH:
                break
        if total:
            self.runtime.metrics.inc("ripple_scheduler_pruned_total", total)
            log.info("pruned %d finished scheduled jobs older than %g s", total, self.settings.retention_seconds)
        return total


class _JobConflict(TransactionConflict):
    """A conflict while running a claimed job: the job is released by the rollback."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"scheduled job {job_id} conflicted; it will be retried")
        self.job_id = job_id
