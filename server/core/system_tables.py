"""System tables: document tables the runtime owns (names start with `_`), all listed here.

Functions read them through `ctx.db.system` like any table (indexes, ranges, pagination, live
queries); only the runtime writes them, through a DatabaseWriter made with `system=True`. Their
table numbers are fixed (user tables get numbers below 10000), so ids stay stable: a number is
never reused for another table.

| table                  | number | written by                  | documents           |
|------------------------|--------|-----------------------------|---------------------|
| `_scheduled_functions` | 10001  | server/core/scheduler/      | `ScheduledFunction` |
| `_cron_jobs`           | 10002  | server/core/scheduler/      | `CronJob`           |
| `_storage`             | 10003  | server/core/storage/        | `StoredFile`        |
| `_environment_variables` | 10004 | server/core/env_store.py  | `EnvironmentVariable` |

`_environment_variables` holds secrets: functions read it through `ctx.env` only, never through
`ctx.db.system` (`readable` False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from server.core.schema import Table

_CLOSED = ConfigDict(extra="forbid")


class SystemDocument(BaseModel):
    """A system table's document model. The fields named in OMIT_WHEN_NONE are left out rather
    than stored as null when they have no value, as Convex does."""

    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.OMIT_WHEN_NONE)}


# -- _scheduled_functions (docs/scheduler.md) -------------------------------------------------------

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
    """Convex's shape (name, args, scheduledTime, state, completedTime) plus Ripple's own
    optional fields: startedTime, parentId (the job whose run scheduled this one), cronName,
    lease (the process running this action, until when)."""

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


# -- _cron_jobs (docs/scheduler.md, Crons) ----------------------------------------------------------

class IntervalSchedule(BaseModel):
    model_config = _CLOSED
    kind: Literal["interval"]
    seconds: float


class CronSchedule(BaseModel):
    model_config = _CLOSED
    kind: Literal["cron"]
    expression: str


class CronJob(SystemDocument):
    OMIT_WHEN_NONE = ("lastRun", "lastJobId", "lastSkipped")

    name: str
    schedule: Annotated[IntervalSchedule | CronSchedule, Field(discriminator="kind")]
    function: str
    args: list[dict[str, Any]] = Field(min_length=1, max_length=1)
    nextRun: float
    lastRun: float | None = None
    lastJobId: str | None = None
    skippedRuns: int = 0
    lastSkipped: float | None = None


# -- _storage (docs/storage.md) -------------------------------------------------------------------

class StoredFile(SystemDocument):
    """A stored file, as Convex's `_storage` documents: its id is the storage id (and the key
    of its bytes in the blob store); `sha256` is base64, `contentType` absent when none was
    given."""

    OMIT_WHEN_NONE = ("contentType",)

    size: int
    sha256: str
    contentType: str | None = None


# -- _environment_variables (docs/env.md) ----------------------------------------------------------

class EnvironmentVariable(SystemDocument):
    """One variable, checked against Convex's rules (server/core/env.py) before it is written."""

    name: str
    value: str


# -- the list -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SystemTable:
    name: str
    number: int
    table: Table
    readable: bool = True  # through ctx.db.system


SCHEDULED_FUNCTIONS = SystemTable(
    "_scheduled_functions",
    10001,
    Table(
        ScheduledFunction,
        indexes={
            "by_state": ["state.kind", "scheduledTime"],
            "by_parent": ["parentId"],
            "by_completed_time": ["completedTime"],
        },
    ),
)
CRON_JOBS = SystemTable("_cron_jobs", 10002, Table(CronJob, indexes={"by_name": ["name"], "by_next_run": ["nextRun"]}))

STORAGE = SystemTable("_storage", 10003, Table(StoredFile))

ENVIRONMENT_VARIABLES = SystemTable(
    "_environment_variables", 10004, Table(EnvironmentVariable, indexes={"by_name": ["name"]}), readable=False)

SYSTEM_TABLES: tuple[SystemTable, ...] = (SCHEDULED_FUNCTIONS, CRON_JOBS, STORAGE, ENVIRONMENT_VARIABLES)
UNREADABLE = frozenset(t.name for t in SYSTEM_TABLES if not t.readable)


def _check(tables: tuple[SystemTable, ...]) -> None:
    names, numbers = [t.name for t in tables], [t.number for t in tables]
    if len(set(names)) != len(names) or len(set(numbers)) != len(numbers):
        raise ValueError("two system tables share a name or a number")
    for t in tables:
        if t.number < 10000:
            raise ValueError(f"system table {t.name}: numbers start at 10000")
        t.table.bind(t.name, system=True)


_check(SYSTEM_TABLES)
