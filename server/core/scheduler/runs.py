"""Running one claimed job, and the upkeep of jobs' leases and retention.

* a mutation runs in the transaction that claims it (Runtime.execute_mutation under a
  savepoint), which also records its final state: exactly once; a conflict or a lost connection
  rolls back claim and run together and Runtime.retry_transaction tries again (a COMMIT whose
  answer was lost is resolved first; had it committed, the new claim finds the job done);
* an action is claimed (inProgress, under this process's lease) and committed, then run outside
  any transaction; its end is recorded only if the lease is still ours: at most once;
* maintenance: renew this process's leases, fail actions whose lease expired (their process
  died), delete finished jobs past the retention.
The loop that finds due jobs and wakes workers is loop.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from server.config import SchedulerConfig
from server.core import log_stream, sql
from server.core.database import Database, usable
from server.core.documents import DatabaseWriter
from server.core.logs import LogBuffer
from server.core.registry import FunctionDef
from server.core.runtime import Runtime
from server.core.scheduler import batch, table
from server.core.scheduler.api import current_job
from server.core.scheduler.table import Candidate
from server.core.transaction import Transaction
from server.errors import DatabaseUnavailable, FunctionFailure, RippleUsageError

log = logging.getLogger("ripple.scheduler")

LOST_ACTION_ERROR = "the server running this action stopped before it finished; actions are not retried"
SHUTDOWN_ACTION_ERROR = "the server shut down before this action finished; actions are not retried"
RECOVER_BATCH = 100
PRUNE_BATCH = 500


class HeldConnection:
    """A worker keeps one pooled connection while it has jobs to run (no acquire and reset per
    job) and gives it back when it goes idle. A connection that was lost is replaced."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._conn is not None and not usable(self._conn):
            await self.release()
        if self._conn is None:
            self._conn = await self._db.checkout()
        return self._conn

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._db.checkin(conn)


class JobRunner:
    """Runs the jobs this process's workers claim; `owner` names this process in leases."""

    def __init__(self, runtime: Runtime, settings: SchedulerConfig, owner: str) -> None:
        self.runtime = runtime
        self.settings = settings
        self.owner = owner
        self.running_actions: set[str] = set()

    def mutation_of(self, candidate: Candidate) -> FunctionDef | None:
        """The mutation a job runs, if it is one that can join a batch (an action, or a job
        naming no runnable function, runs alone through `run`)."""
        try:
            fn = self.runtime.app.registry.resolve(candidate.job["name"], allow_internal=True)
        except RippleUsageError:
            return None
        return fn if fn.kind == "mutation" else None

    async def run_batch(self, jobs: list[tuple[Candidate, FunctionDef]], conn: HeldConnection) -> list[Candidate]:
        """Run scheduled mutations claimed and committed together (batch.py). Returns the
        claimed jobs the batch did not start (its time ran out): still pending, for the caller
        to run next. A batch that conflicts is run again job by job (each retried on its own)."""
        if len(jobs) == 1:
            await self.run(jobs[0][0], conn)
            return []
        try:
            outcome = await self.runtime.retry_transaction(
                lambda: self._attempt_batch(jobs, conn), f"a batch of {len(jobs)} scheduled mutations")
        except batch.Conflicted:
            self.runtime.metrics.inc("ripple_scheduler_batch_splits_total")
            for candidate, _ in jobs:
                await self.run(candidate, conn)
            return []
        metrics = self.runtime.metrics
        if outcome.misses:
            metrics.inc("ripple_scheduler_claim_misses_total", outcome.misses)
        for run in outcome.ran:
            if run.scheduler is not None:
                run.scheduler.committed()
            metrics.inc("ripple_mutations_total", outcome="success" if run.state == table.SUCCESS else "error")
            metrics.inc("ripple_scheduled_jobs_total", state=run.state)
            token = log_stream.caller.set(batch.caller_of(run.candidate.job))
            self.runtime.log_stream.record("mutation", str(run.fn.path), run.buffer)
            log_stream.caller.reset(token)
        return outcome.unstarted

    async def _attempt_batch(self, jobs: list[tuple[Candidate, FunctionDef]], conn: HeldConnection) -> batch.Outcome:
        return await batch.run_batch(self.runtime, await conn.get(), jobs)

    async def run(self, candidate: Candidate, conn: HeldConnection) -> None:
        job = candidate.job
        token = log_stream.caller.set(batch.caller_of(job))
        try:
            await self._run(candidate, conn)
        finally:
            log_stream.caller.reset(token)

    async def _run(self, candidate: Candidate, conn: HeldConnection) -> None:
        job = candidate.job
        try:
            fn = self.runtime.app.registry.resolve(job["name"], allow_internal=True)
            if fn.kind == "query":
                raise RippleUsageError(f"{fn.path} is a query; only mutations and actions can be scheduled")
        except RippleUsageError as exc:
            if await self._fail_unrunnable(candidate, str(exc)):
                self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=table.FAILED)
            return
        if fn.kind == "action":
            await conn.release()  # an action may run for minutes: hold no pooled connection
            claimed = await self._claim_action(candidate)
            if claimed is not None:
                await self._run_action(claimed, fn)
            return
        try:
            state = await self.runtime.retried_mutation(
                fn, lambda buffer: self._run_mutation_job(conn, candidate, fn, buffer), f"scheduled job {job['_id']} ({job['name']})",
                ("ripple_scheduler_conflicts_total", "ripple_mutation_retries_total"),
            )
        except DatabaseUnavailable:
            raise
        except FunctionFailure as failure:  # it kept conflicting (Runtime.retried_mutation): nothing committed
            if await self._finish_if(job["_id"], (table.PENDING,), table.FAILED, failure.message):
                self.runtime.metrics.inc("ripple_mutations_total", outcome="error")
            return
        if state is not None:
            self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=state)

    async def _run_mutation_job(self, held: HeldConnection, candidate: Candidate, fn: FunctionDef,
                                buffer: LogBuffer) -> str | None:
        """Claim a scheduled mutation and run it in the same SERIALIZABLE transaction, which also
        records the job's final state: it commits exactly once. The mutation runs under a
        savepoint, so if it fails its writes roll back and the failure commits. Returns the
        final state; None: another worker or process had the job."""
        runtime = self.runtime
        job, job_id = candidate.job, candidate.job["_id"]
        scheduler = None
        async with runtime.transaction(await held.get(), "serializable") as tx:
            if not await table.claim(tx, job_id, candidate.ctid):
                runtime.metrics.inc("ripple_scheduler_claim_misses_total")
                return None
            started = table.now_ms()
            error: str | None = None
            token = current_job.set(job_id)
            try:
                kwargs = fn.validate_args(job["args"][0])
                async with tx.savepoint():
                    _, _, scheduler = await runtime.execute_mutation(tx, fn, kwargs, None, running_job=job_id, buffer=buffer)
            except (RippleUsageError, FunctionFailure) as exc:
                error = exc.message if isinstance(exc, FunctionFailure) else str(exc)
                if not buffer.attempts:  # its arguments no longer validate: a failed run all the same
                    buffer.begin()
                    buffer.error = error
            finally:
                current_job.reset(token)
            final = table.final_fields(table.SUCCESS if error is None else table.FAILED, error, startedTime=started)
            await DatabaseWriter(tx, system=True).patch_locked(job, candidate.ctid, final)
        if scheduler is not None:
            scheduler.committed()
        runtime.metrics.inc("ripple_mutations_total", outcome="success" if error is None else "error")
        return table.SUCCESS if error is None else table.FAILED

    async def _claim_action(self, candidate: Candidate) -> dict[str, Any] | None:
        """Claim a scheduled action: mark it inProgress under this process's lease and commit."""
        lease_ms = self.settings.lease_seconds * 1000.0

        async def body(writer: DatabaseWriter, tx: Transaction) -> dict[str, Any] | None:
            if not await table.claim(tx, candidate.job["_id"], candidate.ctid):
                self.runtime.metrics.inc("ripple_scheduler_claim_misses_total")
                return None
            now = table.now_ms()
            fields = {"state": {"kind": table.IN_PROGRESS}, "startedTime": now,
                      "lease": {"owner": self.owner, "expiresAt": now + lease_ms}}
            await writer.patch_locked(candidate.job, candidate.ctid, fields)
            return {**candidate.job, **fields}

        return await self.runtime.system_transaction(body, isolation="read_committed")

    async def _fail_unrunnable(self, candidate: Candidate, error: str) -> bool:
        async def body(writer: DatabaseWriter, tx: Transaction) -> bool:
            if not await table.claim(tx, candidate.job["_id"], candidate.ctid):
                return False
            await writer.patch_locked(candidate.job, candidate.ctid, table.final_fields(table.FAILED, error))
            return True

        return await self.runtime.system_transaction(body, isolation="read_committed")

    async def _run_action(self, job: dict[str, Any], fn: FunctionDef) -> None:
        job_id = job["_id"]
        self.running_actions.add(job_id)
        token = current_job.set(job_id)
        state: table.StateKind = table.SUCCESS
        error: str | None = None
        try:
            await self.runtime.call("action", job["name"], job["args"][0], None, allow_internal=True)
        except FunctionFailure as failure:
            state, error = table.FAILED, failure.message
        except RippleUsageError as exc:
            state, error = table.FAILED, str(exc)
        except Exception:
            log.exception("scheduled action %s (%s) could not be run", job_id, job["name"])
            state, error = table.FAILED, "internal error running the scheduled action"
        except asyncio.CancelledError:
            await self._finish_if(job_id, (table.IN_PROGRESS,), table.FAILED, SHUTDOWN_ACTION_ERROR, owner=self.owner)
            raise
        finally:
            current_job.reset(token)
            self.running_actions.discard(job_id)
        if not await self._finish_if(job_id, (table.IN_PROGRESS,), state, error, owner=self.owner):
            log.info("scheduled action %s (%s) finished, but its job was canceled or failed meanwhile",
                     job_id, job["name"])

    async def _finish_if(self, job_id: str, states: tuple[str, ...], kind: table.StateKind, error: str | None,
                         owner: str | None = None) -> bool:
        """Move a job to a final state if it is still in one of `states` (and, for a running
        action, still under our lease). Returns whether it did."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> bool:
            locked = await table.fetch_locked(tx, sql.LOCK_JOBS, [job_id])
            if not locked or locked[0]["state"]["kind"] not in states:
                return False
            if owner is not None and (locked[0].get("lease") or {}).get("owner") != owner:
                return False
            await table.finish(writer, locked[0], kind, error)
            return True

        done = await self.runtime.system_transaction(body, isolation="read_committed")
        if done:
            self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=kind)
        return done

    # -- maintenance -----------------------------------------------------------------------------

    async def renew_leases(self) -> None:
        ids = sorted(self.running_actions)
        if not ids:
            return
        expires = table.now_ms() + self.settings.lease_seconds * 1000.0

        async def body(writer: DatabaseWriter, tx: Transaction) -> None:
            for job in await table.fetch_locked(tx, sql.LOCK_JOBS, ids):
                lease = job.get("lease") or {}
                if job["state"]["kind"] == table.IN_PROGRESS and lease.get("owner") == self.owner:
                    await writer.patch(job["_id"], {"lease": {"owner": self.owner, "expiresAt": expires}})

        await self.runtime.system_transaction(body, isolation="read_committed")

    async def fail_lost_actions(self) -> int:
        """Fail running actions whose lease expired: their process died (or hung) mid-run."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> list[dict[str, Any]]:
            now = table.now_ms()
            lost = []
            running = table.state_range(table.IN_PROGRESS)
            for job in await table.fetch_locked(tx, sql.LOCK_JOBS_IN_STATE_RANGE, *running, RECOVER_BATCH):
                lease = job.get("lease") or {}
                if lease.get("expiresAt", 0.0) < now and job["_id"] not in self.running_actions:
                    await table.finish(writer, job, table.FAILED, LOST_ACTION_ERROR)
                    lost.append(job)
            return lost

        lost = await self.runtime.system_transaction(body, isolation="read_committed")
        for job in lost:
            log.error("scheduled action %s (%s) lost: its lease held by %s expired; marked failed, not re-run",
                      job["_id"], job["name"], (job.get("lease") or {}).get("owner"))
            self.runtime.metrics.inc("ripple_scheduler_lost_actions_total")
            self.runtime.metrics.inc("ripple_scheduled_jobs_total", state=table.FAILED)
        return len(lost)

    async def prune(self) -> int:
        """Delete finished jobs older than the retention, in batches."""
        cutoff = table.now_ms() - self.settings.retention_seconds * 1000.0
        total = 0
        while True:
            async def body(writer: DatabaseWriter, tx: Transaction) -> int:
                rows = await table.fetch_locked(tx, sql.LOCK_JOBS_COMPLETED_BEFORE, *table.completed_before_range(cutoff), PRUNE_BATCH)
                for job in rows:
                    await writer.delete(job["_id"])
                return len(rows)

            n = await self.runtime.system_transaction(body, isolation="read_committed")
            total += n
            if n < PRUNE_BATCH:
                break
        if total:
            self.runtime.metrics.inc("ripple_scheduler_pruned_total", total)
            log.info("pruned %d finished scheduled jobs older than %g s", total, self.settings.retention_seconds)
        return total
