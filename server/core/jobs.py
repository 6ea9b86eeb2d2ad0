"""The `_scheduled_functions` system table and the state changes of a scheduled job.

A job document has Convex's shape

    {name: "module:fn", args: [argsObject], scheduledTime: ms,
     state: {kind: "pending" | "inProgress" | "success" | "failed" | "canceled", error?: str},
     completedTime?: ms}

plus Ripple's own fields, all optional (docs/scheduler.md):

    startedTime  ms when a process began running it
    parentId     the job whose run scheduled this one (cancelling a running action reaches them)
    cronName     the cron that scheduled it
    lease        {owner, expiresAt}: the process running this action, until when (renewed)

Every change goes through a `DatabaseWriter(system=True)` inside a transaction that ends with the
commit tail, so job documents are validated, indexed and in the change log like any document.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from server.core import keys, sql
from server.core.backoff import conflict_retry_delays
from server.core.database import decode_doc
from server.core.documents import DatabaseWriter, Transaction, Write
from server.core.ids import table_number_of
from server.core.schema import Table
from server.core.system_tables import SystemDocument, register_system_table
from server.core.values import to_convex_json
from server.errors import InvalidIdError, TransactionConflict

if TYPE_CHECKING:
    from server.core.executor import Runtime

TABLE = "_scheduled_functions"
TABLE_NUMBER = 10001

StateKind = Literal["pending", "inProgress", "success", "failed", "canceled"]
PENDING: Final = "pending"
IN_PROGRESS: Final = "inProgress"
SUCCESS: Final = "success"
FAILED: Final = "failed"
CANCELED: Final = "canceled"

_CLOSED = ConfigDict(extra="forbid")


class Pending(BaseModel):
    model_config = _CLOSED
    kind: Literal["pending"]


class InProgress(BaseModel):
    model_config = _CLOSED
    kind: Literal["inProgress"]


class Success(BaseModel):
    model_config = _CLOSED
    kind: Literal["success"]


class Failed(BaseModel):
    model_config = _CLOSED
    kind: Literal["failed"]
    error: str


class Canceled(BaseModel):
    model_config = _CLOSED
    kind: Literal["canceled"]


class Lease(BaseModel):
    model_config = _CLOSED
    owner: str
    expiresAt: float


class ScheduledFunction(SystemDocument):
    OMIT_WHEN_NONE = ("completedTime", "startedTime", "parentId", "cronName", "lease")

    name: str
    args: list[dict[str, Any]] = Field(min_length=1, max_length=1)
    scheduledTime: float
    state: Annotated[Pending | InProgress | Success | Failed | Canceled, Field(discriminator="kind")]
    completedTime: float | None = None
    startedTime: float | None = None
    parentId: str | None = None
    cronName: str | None = None
    lease: Lease | None = None


register_system_table(
    TABLE,
    TABLE_NUMBER,
    Table(
        ScheduledFunction,
        indexes={
            "by_state": ["state.kind", "scheduledTime"],
            "by_parent": ["parentId"],
            "by_completed_time": ["completedTime"],
        },
    ),
)


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
    if number != TABLE_NUMBER or not isinstance(job_id, str):
        raise InvalidIdError(f"{job_id!r} is not the id of a scheduled function")
    return job_id


# -- rows found and locked by the scheduler's own statements --------------------------------------

async def fetch_locked(tx: Transaction, statement: str, *args: Any) -> list[dict[str, Any]]:
    rows = await tx.execute("fetch", statement, *args)
    return [decode_doc(r["id"], r["creation_time"], r["doc"]) for r in rows]


@functools.cache
def _update_at_ctid(tsql: sql.TableSql) -> str:
    return sql.update_at_ctid(tsql)


def _claimed_update(tx: Transaction, job: dict[str, Any], ctid: Any, fields: dict[str, Any]) -> list[Any]:
    """Validate the patched job and record the write in the transaction's write set exactly as
    DatabaseWriter.patch does; returns the arguments of the ctid-addressed UPDATE."""
    info = tx.catalog.table(TABLE)
    job_id = job["_id"]
    merged = {k: v for k, v in job.items() if k not in ("_id", "_creationTime")}
    merged.update(fields)
    stored = info.table.validate(merged, doc_id=job_id)
    full = {"_id": job_id, "_creationTime": job["_creationTime"], **stored}
    new_keys = {name: keys.index_key(full, f) for name, f in info.index_fields.items()}
    prior = tx.writes.get(job_id)
    if prior is not None:
        prior.new_keys = new_keys
    else:
        old_keys = {name: keys.index_key(job, f) for name, f in info.index_fields.items()}
        tx.writes[job_id] = Write(TABLE, job_id, old_keys, new_keys)
    return [job_id, ctid, to_convex_json(stored), *new_keys.values()]


async def write_claimed(tx: Transaction, job: dict[str, Any], ctid: Any, fields: dict[str, Any]) -> None:
    """Patch a job row this transaction holds locked, addressing it by `ctid`: no index lookup,
    hence no SSI predicate lock on shared index pages (see sql.py)."""
    args = _claimed_update(tx, job, ctid, fields)
    status = await tx.execute("execute", _update_at_ctid(tx.catalog.table(TABLE).sql), *args)
    if status != "UPDATE 1":
        raise RuntimeError(f"scheduled job {job['_id']} moved while locked ({status})")


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
    return await writer.insert(TABLE, doc)


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
    on (see scheduling.parent_canceled). Finished or gone: nothing happens. Returns how many jobs
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
    children = writer.query(TABLE).with_index("by_parent", lambda q: q.eq("parentId", parent_id))
    return [c["_id"] for c in await children.collect() if c["state"]["kind"] in (PENDING, IN_PROGRESS)]


async def notify_due(tx: Transaction, channel: str, due_ms: float) -> None:
    """Tell sleeping scheduler loops (all processes) that a job is due at `due_ms`; delivered at
    commit, and not at all if the transaction rolls back."""
    await tx.execute("execute", sql.NOTIFY, channel, repr(float(due_ms)))  # exact: a timer must not fire early


# -- runtime-owned transactions -------------------------------------------------------------------

T = TypeVar("T")
CONFLICTS = (TransactionConflict, asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


async def system_transaction(
    runtime: Runtime,
    body: Callable[[DatabaseWriter, Transaction], Awaitable[T]],
    *,
    isolation: str = "serializable",
    attempts: int = 20,
) -> T:
    """Run `body` with a system writer in one transaction ending with the commit tail (change
    log + NOTIFY of the commit channel); retried on serialization conflicts."""
    delays = conflict_retry_delays()
    for attempt in range(attempts):
        try:
            async with runtime.db.acquire() as conn, runtime.transaction(conn, isolation) as tx:
                result = await body(DatabaseWriter(tx, system=True), tx)
            return result
        except CONFLICTS:
            if attempt + 1 == attempts:
                raise
            await asyncio.sleep(next(delays))
    raise AssertionError("unreachable")
