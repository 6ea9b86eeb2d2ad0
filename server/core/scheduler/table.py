"""The scheduler's two system tables: the state changes of `_scheduled_functions` jobs and of
`_cron_jobs` crons (their models: server/core/system_tables.py).

A job document has Convex's shape

    {name: "module:fn", args: [argsObject], scheduledTime: ms,
     state: {kind: "pending" | "inProgress" | "success" | "failed" | "canceled", error?: str},
     completedTime?: ms}

plus Ripple's own optional fields (startedTime, parentId, cronName, lease; docs/scheduler.md).

Each cron is a `_cron_jobs` document holding its next run time. A process whose scheduler finds
a cron due row-locks it (FOR UPDATE SKIP LOCKED), schedules the run into `_scheduled_functions`
and advances `nextRun`, in one transaction: one run per tick, whichever process gets there. If
the previous run of that cron has not finished, the tick is skipped and counted on the cron's
document (`skippedRuns`, `lastSkipped`).

Everything here runs inside a transaction its caller owns (Runtime.transaction or
Runtime.system_transaction), through a `DatabaseWriter(system=True)`, so every change is
validated, indexed and in the change log like any document write.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import asyncpg

from server.core import keys, sql
from server.core.database import decode_doc
from server.core.documents import DatabaseWriter
from server.core.ids import table_number_of
from server.core.registry import Registry
from server.core.scheduler.crons import Crons, next_run
from server.core.system_tables import CRON_JOBS, SCHEDULED_FUNCTIONS
from server.core.transaction import Transaction
from server.errors import InvalidIdError, RippleUsageError

JOBS = SCHEDULED_FUNCTIONS.name
CRONS = CRON_JOBS.name
MAX_DUE_CRONS_PER_TICK = 100

StateKind = Literal["pending", "inProgress", "success", "failed", "canceled"]
PENDING: Final = "pending"
IN_PROGRESS: Final = "inProgress"
SUCCESS: Final = "success"
FAILED: Final = "failed"
CANCELED: Final = "canceled"


def now_ms() -> float:
    return time.time() * 1000.0


# -- index ranges (half-open byte ranges over server.core.keys encodings) ------------------------

def due_range(at_ms: float) -> tuple[bytes, bytes]:
    """Pending jobs with scheduledTime <= at_ms, earliest first."""
    return keys.encode_values([PENDING]), keys.encode_values([PENDING, at_ms]) + keys.AFTER_PREFIX


def future_range(after_ms: float) -> tuple[bytes, bytes]:
    """Pending jobs with scheduledTime > after_ms."""
    prefix = keys.encode_values([PENDING])
    return keys.encode_values([PENDING, after_ms]) + keys.AFTER_PREFIX, prefix + keys.AFTER_PREFIX


def state_range(kind: StateKind) -> tuple[bytes, bytes]:
    prefix = keys.encode_values([kind])
    return prefix, prefix + keys.AFTER_PREFIX


def completed_before_range(cutoff_ms: float) -> tuple[bytes, bytes]:
    """Jobs with a completedTime below the cutoff (pending and running jobs have none)."""
    return keys.encode_values([-math.inf]), keys.encode_values([cutoff_ms])


def check_job_id(job_id: object) -> str:
    try:
        number = table_number_of(job_id)
    except InvalidIdError:
        number = None
    if number != SCHEDULED_FUNCTIONS.number or not isinstance(job_id, str):
        raise InvalidIdError(f"{job_id!r} is not the id of a scheduled function")
    return job_id


# -- rows found and locked by the scheduler's own statements --------------------------------------

@dataclass
class Candidate:
    """A due job as a peek read it (unlocked: a hint), with the physical address (ctid) of that
    row version; a claim locks exactly that version, so the document run is the one read.
    `keys`: the index keys stored with that version (None: not read), by index name."""

    job: dict[str, Any]
    ctid: Any
    keys: dict[str, bytes] | None = None


async def fetch_locked(tx: Transaction, statement: str, *args: Any) -> list[dict[str, Any]]:
    rows = await tx.execute("fetch", statement, *args)
    return [decode_doc(r["id"], r["creation_time"], r["doc"]) for r in rows]


async def claim(tx: Transaction, job_id: str, ctid: Any) -> bool:
    """The one atomic claim: lock the row version at `ctid` (the one a peek read) if it is
    still that job, pending, due and free."""
    lo, hi = due_range(now_ms())
    return await tx.execute("fetchval", sql.CLAIM_JOB_AT, ctid, job_id, lo, hi) is not None


async def claim_many(tx: Transaction, candidates: list[Candidate]) -> set[str]:
    """`claim` for several jobs in one statement; returns the ids it locked. A row whose ctid
    now holds another job than the one peeked there is locked too (until the transaction ends)
    but not returned: it is not run, its current document was not read."""
    lo, hi = due_range(now_ms())
    rows = await tx.execute("fetch", sql.CLAIM_JOBS_AT, [c.ctid for c in candidates], lo, hi)
    peeked = {c.job["_id"]: c.ctid for c in candidates}
    return {r["id"] for r in rows if peeked.get(r["id"]) == r["ctid"]}


async def peek_due(conn: asyncpg.Connection, limit: int, offset: int) -> list[Candidate]:
    """Due pending jobs, earliest first, unlocked (a hint; the claim decides), with the ctid of
    the row version read and its stored index keys."""
    lo, hi = due_range(now_ms())
    rows = await conn.fetch(sql.PEEK_DUE_JOBS, lo, hi, limit, offset)
    return [Candidate(decode_doc(r["id"], r["creation_time"], r["doc"]), r["ctid"],
                      {column[2:]: r[column] for column in sql.JOB_KEY_COLUMNS}) for r in rows]


# -- state changes --------------------------------------------------------------------------------

async def insert_job(
    writer: DatabaseWriter,
    name: str,
    args: dict[str, Any],
    scheduled_ms: float,
    *,
    parent_id: str | None = None,
    cron_name: str | None = None,
    canceled: bool = False,
) -> str:
    doc: dict[str, Any] = {
        "name": name,
        "args": [args],
        "scheduledTime": scheduled_ms,
        "state": {"kind": CANCELED if canceled else PENDING},
        "parentId": parent_id,
        "cronName": cron_name,
    }
    if canceled:
        doc["completedTime"] = now_ms()
    return await writer.insert(JOBS, doc)


def final_fields(kind: StateKind, error: str | None = None, **fields: Any) -> dict[str, Any]:
    """The fields that move a job to a final state (plus `fields`); a running job's lease goes."""
    state: dict[str, Any] = {"kind": kind}
    if kind == FAILED:
        state["error"] = error or "failed"
    return {**fields, "state": state, "completedTime": now_ms(), "lease": None}


async def finish(
    writer: DatabaseWriter, job: dict[str, Any], kind: StateKind, error: str | None = None, **fields: Any
) -> None:
    await writer.patch(job["_id"], final_fields(kind, error, **fields))


async def cancel(writer: DatabaseWriter, job_id: str, limit: int = 10_000) -> int:
    """Cancel a job. Pending: it will not run. In progress (an action): it runs to the end, but
    what it scheduled and has not started is canceled too, and so is what it schedules from now
    on (see api.py, parent_canceled). Finished or gone: nothing happens. Returns how many jobs
    changed to canceled."""
    todo, changed = [check_job_id(job_id)], 0
    while todo and changed < limit:
        job = await writer.get(todo.pop())
        if job is None or job["state"]["kind"] not in (PENDING, IN_PROGRESS):
            continue
        was_running = job["state"]["kind"] == IN_PROGRESS
        await writer.patch(job["_id"], {"state": {"kind": CANCELED}, "completedTime": now_ms()})
        changed += 1
        if was_running:
            todo.extend(await _unfinished_children(writer, job["_id"]))
    return changed


async def _unfinished_children(writer: DatabaseWriter, parent_id: str) -> list[str]:
    children = writer.query(JOBS).with_index("by_parent", lambda q: q.eq("parentId", parent_id))
    return [c["_id"] for c in await children.collect() if c["state"]["kind"] in (PENDING, IN_PROGRESS)]


async def notify_due(tx: Transaction, channel: str, due_ms: float) -> None:
    """Tell sleeping scheduler loops (all processes) that a job is due at `due_ms`; delivered at
    commit, and not at all if the transaction rolls back."""
    await tx.execute("execute", sql.NOTIFY, channel, repr(float(due_ms)))  # exact: a timer must not fire early


# -- crons ----------------------------------------------------------------------------------------

def desired_crons(registry: Registry, crons: Crons) -> dict[str, dict[str, Any]]:
    """The `_cron_jobs` fields each of the app's crons should have; a cron naming a function
    that does not exist, a query, or bad arguments is refused here."""
    out = {}
    for cron in crons.jobs.values():
        fn = registry.resolve(registry.path_of(cron.fn), allow_internal=True)
        if fn.kind == "query":
            raise RippleUsageError(f"cron {cron.name!r}: {fn.path} is a query; crons run mutations and actions")
        fn.validate_args(cron.args)
        out[cron.name] = {"schedule": cron.schedule, "function": fn.path, "args": [cron.args]}
    return out


async def sync_crons(writer: DatabaseWriter, tx: Transaction, desired: dict[str, dict[str, Any]], lock: int) -> None:
    """Make `_cron_jobs` match `desired` (insert new, update changed, delete removed). Processes
    starting together serialize on the advisory lock `lock`; run at READ COMMITTED, the second
    one sees what the first wrote."""
    await tx.execute("execute", sql.ADVISORY_XACT_LOCK, lock)
    now = now_ms()
    seen: set[str] = set()
    for doc in await writer.query(CRONS).collect():
        want = desired.get(doc["name"])
        if want is None or doc["name"] in seen:
            await writer.delete(doc["_id"])
            continue
        seen.add(doc["name"])
        if doc["schedule"] != want["schedule"]:
            await writer.patch(doc["_id"], {**want, "nextRun": next_run(want["schedule"], now)})
        elif doc["function"] != want["function"] or doc["args"] != want["args"]:
            await writer.patch(doc["_id"], want)
    for name, want in desired.items():
        if name not in seen:
            await writer.insert(CRONS, {"name": name, **want, "nextRun": next_run(want["schedule"], now)})


@dataclass
class TickOutcome:
    cron: str
    scheduled_job: str | None  # None: skipped
    previous_job: str | None
    previous_state: str | None


async def tick_crons(writer: DatabaseWriter, tx: Transaction, channel: str) -> list[TickOutcome]:
    """Schedule the run of every due cron (or skip it if its previous run is still going)."""
    now = now_ms()
    hi = keys.encode_values([now]) + keys.AFTER_PREFIX
    outcomes = []
    for cron in await fetch_locked(tx, sql.LOCK_DUE_CRONS, b"", hi, MAX_DUE_CRONS_PER_TICK):
        tick_ms = float(cron["nextRun"])
        previous = await writer.get(cron["lastJobId"]) if cron.get("lastJobId") else None
        previous_state = previous["state"]["kind"] if previous is not None else None
        advance = {"nextRun": next_run(cron["schedule"], now, tick_ms)}
        if previous_state in (PENDING, IN_PROGRESS):
            await writer.patch(cron["_id"], {**advance, "skippedRuns": cron.get("skippedRuns", 0) + 1,
                                             "lastSkipped": tick_ms})
            outcomes.append(TickOutcome(cron["name"], None, cron["lastJobId"], previous_state))
            continue
        job_id = await insert_job(writer, cron["function"], cron["args"][0], tick_ms, cron_name=cron["name"])
        await writer.patch(cron["_id"], {**advance, "lastRun": tick_ms, "lastJobId": job_id})
        outcomes.append(TickOutcome(cron["name"], job_id, cron.get("lastJobId"), previous_state))
    if any(o.scheduled_job for o in outcomes):
        await notify_due(tx, channel, now)
    return outcomes


async def next_cron_due_ms(conn: asyncpg.Connection) -> float | None:
    row = await conn.fetchrow(sql.FIRST_CRON)
    return None if row is None else float(row["doc"]["nextRun"])
