"""Several due scheduled mutations in one transaction: one claim, one commit.

Why: a no-op scheduled mutation used to cost a transaction of its own, and most of that cost
was the transaction's fixed part: BEGIN, the claim's round trip, the commit tail (the global
commit lock, a ts, a change-log row, NOTIFY) and COMMIT with its WAL flush. A batch pays it
once for up to `SchedulerConfig.batch_size` jobs (docs/scheduler.md, "Batches").

A batch is one SERIALIZABLE transaction that
1. claims all its candidates with one statement (sql.CLAIM_JOBS_AT: FOR UPDATE SKIP LOCKED of
   the very row versions the peek read, by ctid; a TID scan takes no index predicate locks);
2. runs each claimed job's mutation in turn, under a savepoint of its own: a mutation that
   raises is rolled back to it (its writes and write-set entries go) and its job is recorded
   `failed` with the error, while its batch-mates keep theirs;
3. records each job's final state in the same transaction and commits. The final states wait
   (`Marks`, Transaction.defer) and are written together in one statement just before the next
   statement any job issues, or before the commit: one round trip per batch, not per job.
Exactly once holds as for a lone job: a job's writes and its final state are in one commit, and
a rollback leaves every job of the batch pending. Jobs run one after another, each seeing the
writes of the ones before it, and their final states: a serial order, as if each had committed
alone (tests/test_scheduler_batch.py checks it with jobs that count the finished ones).

What aborts the whole transaction is not retried as a batch here. A serialization conflict
comes back as `Conflicted`, and runs.JobRunner then runs the batch's jobs one by one on the
per-job path (which retries each with backoff), so one job that keeps conflicting cannot hold
its batch-mates back. A lost connection is retried as a whole by the caller's
Runtime.retry_transaction (a COMMIT whose answer was lost is resolved first, commit.py).

A batch stops starting jobs once it has run for `BATCH_SECONDS`: the ones it did not start are
released at its commit, still pending, and handed back (`Outcome.unstarted`), so a slow
mutation delays few others. The batch size is capped at 16 (server/config.py): a batch reads
one job row per job, and past `max_pred_locks_per_relation` (32 by default) rows of one table
SERIALIZABLE records a read of the whole table, after which other batches' job updates are
conflicts (an in-process drain of 4,000 no-op jobs: 47 batches split with 32, none with 16). Savepoints are
released after each job, so they never nest; a job that issues no statement opens none (its
SAVEPOINT waits for a first statement, Transaction.savepoint). Those that were opened take a
subtransaction id when they or the final states written inside them write: at most one per job,
16 per batch (PostgreSQL's snapshots slow down past 64 in one transaction).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg

from server.core import log_stream
from server.core.documents import DatabaseWriter, StagedRow, write_staged
from server.core.logs import LogBuffer
from server.core.registry import FunctionDef
from server.core.runtime import Runtime
from server.core.scheduler import table
from server.core.scheduler.api import MutationScheduler, current_job
from server.core.scheduler.table import Candidate
from server.core.transaction import CONFLICTS, Sender, Transaction
from server.errors import FunctionFailure, RippleUsageError

BATCH_SECONDS = 0.2


@dataclass
class Run:
    """One job of a batch: what ran and how it ended (valid once the batch committed)."""

    candidate: Candidate
    fn: FunctionDef
    buffer: LogBuffer
    state: table.StateKind = table.SUCCESS
    scheduler: MutationScheduler | None = None


@dataclass
class Outcome:
    ran: list[Run] = field(default_factory=list)  # committed, each success or failed
    unstarted: list[Candidate] = field(default_factory=list)  # claimed, not run, released: still pending
    misses: int = 0  # candidates another worker or process had taken


class Conflicted(Exception):
    """The batch lost a serialization conflict: nothing of it committed."""


def caller_of(job: dict[str, object]) -> str:
    """Who the log stream says started a job's execution."""
    return "cron" if job.get("cronName") else "scheduler"


async def run_batch(runtime: Runtime, conn: asyncpg.Connection, batch: list[tuple[Candidate, FunctionDef]]) -> Outcome:
    """Claim `batch` (scheduled mutations) and run what was claimed in one transaction on
    `conn`. Raises Conflicted on a conflict, ConnectionLost (and friends) as any transaction."""
    outcome = Outcome()
    try:
        async with runtime.transaction(conn, "serializable") as tx:
            claimed = await table.claim_many(tx, [c for c, _ in batch])
            mine = [(c, fn) for c, fn in batch if c.job["_id"] in claimed]
            outcome.misses = len(batch) - len(mine)
            deadline = time.monotonic() + BATCH_SECONDS
            marks = Marks(tx)
            for candidate, fn in mine:
                if outcome.ran and time.monotonic() > deadline:
                    outcome.unstarted.append(candidate)
                    continue
                outcome.ran.append(await _run_one(runtime, tx, candidate, fn, marks))
    except CONFLICTS as exc:
        raise Conflicted(f"a batch of {len(batch)} scheduled mutations conflicted") from exc
    return outcome


class Marks:
    """The final states of a batch's jobs, written together in one statement (write_staged)
    just before the next statement any job of the batch issues, or before the commit
    (Transaction.defer): a job later in the batch reads the earlier ones done, as if each had
    been written at once, and a batch of jobs that issue no statement of their own writes them
    all in one round trip."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.rows: list[StagedRow] = []

    def add(self, candidate: Candidate, fields: dict[str, object]) -> None:
        writer = DatabaseWriter(self.tx, system=True)
        row = writer.staged_patch_locked(candidate.job, candidate.ctid, fields, candidate.keys)
        if not self.rows:
            self.tx.defer(self._write)
        self.rows.append(row)

    async def _write(self, send: Sender) -> None:
        rows, self.rows = self.rows, []
        await write_staged(send, rows)


async def _run_one(runtime: Runtime, tx: Transaction, candidate: Candidate, fn: FunctionDef, marks: Marks) -> Run:
    """One job of the batch, under its own savepoint, then its final state (not under the
    savepoint: a failure is recorded, not undone)."""
    job, job_id = candidate.job, candidate.job["_id"]
    run = Run(candidate, fn, runtime.log_buffer(fn))
    tx.next_execution()
    started = table.now_ms()
    error: str | None = None
    tokens = current_job.set(job_id), log_stream.caller.set(caller_of(job))
    try:
        kwargs = fn.validate_args(job["args"][0])
        async with tx.savepoint(release=True):
            _, _, run.scheduler = await runtime.execute_mutation(tx, fn, kwargs, None, running_job=job_id,
                                                                 buffer=run.buffer)
    except (RippleUsageError, FunctionFailure) as exc:
        error = exc.message if isinstance(exc, FunctionFailure) else str(exc)
        if not run.buffer.attempts:  # its arguments no longer validate: a failed run all the same
            run.buffer.begin()
            run.buffer.error = error
    finally:
        log_stream.caller.reset(tokens[1])
        current_job.reset(tokens[0])
    run.state = table.SUCCESS if error is None else table.FAILED
    marks.add(candidate, table.final_fields(run.state, error, startedTime=started))
    return run
