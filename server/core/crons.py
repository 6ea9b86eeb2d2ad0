"""Crons: recurring scheduled functions declared in `functions/crons.py`.

    from server import Crons
    from functions import reports

    crons = Crons()
    crons.interval("flush", minutes=5, fn=reports.flush)
    crons.cron("digest", "0 8 * * 1-5", fn="reports:digest", args={"kind": "daily"})
    crons.daily("cleanup", hour_utc=3, minute_utc=0, fn=reports.cleanup)

Each cron is a document of the `_cron_jobs` system table holding its next run time. A process
whose scheduler finds a cron due row-locks it (FOR UPDATE SKIP LOCKED), schedules the run into
`_scheduled_functions` and advances `nextRun`, in one transaction: one run per tick, whichever
process gets there. If the previous run of that cron has not finished, the tick is skipped and
counted on the cron's document (`skippedRuns`, `lastSkipped`), logged and measured.
Times are UTC.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field

from server.core import jobs, keys, sql
from server.core.documents import DatabaseWriter, Transaction
from server.core.loader import App
from server.core.registry import FunctionDef
from server.core.schema import Table
from server.core.system_tables import SystemDocument, register_system_table
from server.core.values import to_convex_json
from server.errors import RippleUsageError

if TYPE_CHECKING:
    from server.core.executor import Runtime

log = logging.getLogger("ripple.crons")

TABLE = "_cron_jobs"
TABLE_NUMBER = 10002
DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MAX_DUE_PER_TICK = 100


class IntervalSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["interval"]
    seconds: float


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


register_system_table(
    TABLE, TABLE_NUMBER, Table(CronJob, indexes={"by_name": ["name"], "by_next_run": ["nextRun"]})
)


# -- schedules ------------------------------------------------------------------------------------

def next_run(schedule: Mapping[str, Any], now_ms: float, previous_ms: float | None = None) -> float:
    """The first tick strictly after `now_ms`. Intervals keep their grid from the previous tick
    (missed ticks are not made up: one run, then the grid continues); a new interval cron first
    runs one interval after it was registered."""
    if schedule["kind"] == "interval":
        step = float(schedule["seconds"]) * 1000.0
        if previous_ms is None:
            return now_ms + step
        behind = max(0.0, now_ms - previous_ms)
        return previous_ms + (math.floor(behind / step) + 1) * step
    start = dt.datetime.fromtimestamp(max(now_ms, previous_ms or 0.0) / 1000.0, dt.UTC)
    return float(croniter(schedule["expression"], start).get_next(float)) * 1000.0


def _check_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RippleUsageError(f"{what} must be an integer from {lo} to {hi}, not {value!r}")
    return value


@dataclass(frozen=True)
class CronDef:
    name: str
    schedule: dict[str, Any]
    fn: FunctionDef | str
    args: dict[str, Any]


class Crons:
    """The crons of an app: define `crons = Crons()` in `functions/crons.py`."""

    def __init__(self) -> None:
        self.jobs: dict[str, CronDef] = {}

    def _add(self, name: str, schedule: dict[str, Any], fn: FunctionDef | str, args: Mapping[str, Any] | None) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise RippleUsageError(f"a cron needs a non-empty name (up to 200 characters), not {name!r}")
        if name in self.jobs:
            raise RippleUsageError(f"two crons are named {name!r}")
        if not isinstance(fn, (FunctionDef, str)):
            raise RippleUsageError(f"cron {name!r}: fn must be a function reference or a 'module:function' path")
        if args is not None and not isinstance(args, Mapping):
            raise RippleUsageError(f"cron {name!r}: args must be a dict")
        plain = dict(args or {})
        to_convex_json(plain, f"cron {name} args")
        self.jobs[name] = CronDef(name, schedule, fn, plain)

    def interval(self, name: str, *, seconds: float = 0, minutes: float = 0, hours: float = 0,
                 fn: FunctionDef | str, args: Mapping[str, Any] | None = None) -> None:
        """Run `fn` every `hours + minutes + seconds`."""
        total = float(seconds) + 60.0 * float(minutes) + 3600.0 * float(hours)
        if not math.isfinite(total) or total <= 0:
            raise RippleUsageError(f"cron {name!r}: the interval must be positive (got {total:g} s)")
        self._add(name, {"kind": "interval", "seconds": total}, fn, args)

    def cron(self, name: str, expression: str, *, fn: FunctionDef | str, args: Mapping[str, Any] | None = None) -> None:
        """Run `fn` on a 5-field cron expression (minute hour day-of-month month day-of-week, UTC)."""
        if not isinstance(expression, str) or len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise RippleUsageError(
                f"cron {name!r}: {expression!r} is not a 5-field cron expression "
                "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')"
            )
        self._add(name, {"kind": "cron", "expression": " ".join(expression.split())}, fn, args)

    def hourly(self, name: str, *, minute_utc: int, fn: FunctionDef | str, args: Mapping[str, Any] | None = None) -> None:
        minute = _check_int("minute_utc", minute_utc, 0, 59)
        self.cron(name, f"{minute} * * * *", fn=fn, args=args)

    def daily(self, name: str, *, hour_utc: int, minute_utc: int, fn: FunctionDef | str,
              args: Mapping[str, Any] | None = None) -> None:
        minute, hour = _check_int("minute_utc", minute_utc, 0, 59), _check_int("hour_utc", hour_utc, 0, 23)
        self.cron(name, f"{minute} {hour} * * *", fn=fn, args=args)

    def weekly(self, name: str, *, day_of_week: str, hour_utc: int, minute_utc: int, fn: FunctionDef | str,
               args: Mapping[str, Any] | None = None) -> None:
        if not isinstance(day_of_week, str) or day_of_week.lower() not in DAYS:
            raise RippleUsageError(f"day_of_week must be one of {', '.join(DAYS)}, not {day_of_week!r}")
        minute, hour = _check_int("minute_utc", minute_utc, 0, 59), _check_int("hour_utc", hour_utc, 0, 23)
        self.cron(name, f"{minute} {hour} * * {DAYS.index(day_of_week.lower())}", fn=fn, args=args)

    def monthly(self, name: str, *, day: int, hour_utc: int, minute_utc: int, fn: FunctionDef | str,
                args: Mapping[str, Any] | None = None) -> None:
        minute, hour = _check_int("minute_utc", minute_utc, 0, 59), _check_int("hour_utc", hour_utc, 0, 23)
        self.cron(name, f"{minute} {hour} {_check_int('day', day, 1, 31)} * *", fn=fn, args=args)


def app_crons(app: App) -> Crons:
    """The `crons` defined in the app's `functions/crons.py` (none: an empty set)."""
    module = app.modules.get("crons")
    found = getattr(module, "crons", None) if module is not None else None
    if module is not None and not isinstance(found, Crons):
        raise RippleUsageError("functions/crons.py must define `crons = Crons()` (from server import Crons)")
    return found if isinstance(found, Crons) else Crons()


# -- the _cron_jobs table -------------------------------------------------------------------------

def _desired(runtime: Runtime, crons: Crons) -> dict[str, dict[str, Any]]:
    registry = runtime.app.registry
    out = {}
    for cron in crons.jobs.values():
        fn = registry.resolve(registry.path_of(cron.fn), allow_internal=True)
        if fn.kind == "query":
            raise RippleUsageError(f"cron {cron.name!r}: {fn.path} is a query; crons run mutations and actions")
        fn.validate_args(cron.args)
        out[cron.name] = {"schedule": cron.schedule, "function": fn.path, "args": [cron.args]}
    return out


async def sync(runtime: Runtime, crons: Crons) -> None:
    """Make `_cron_jobs` match the app's crons (insert new, update changed, delete removed).
    Processes starting together serialize on an advisory lock; READ COMMITTED lets the second
    one see what the first wrote."""
    desired = _desired(runtime, crons)

    async def body(writer: DatabaseWriter, tx: Transaction) -> None:
        await tx.execute("execute", sql.ADVISORY_XACT_LOCK, sql.lock_key(runtime.db.namespace, "crons"))
        now = jobs.now_ms()
        seen: set[str] = set()
        for doc in await writer.query(TABLE).collect():
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
                await writer.insert(TABLE, {"name": name, **want, "nextRun": next_run(want["schedule"], now)})

    await jobs.system_transaction(runtime, body, isolation="read_committed")


@dataclass
class TickOutcome:
    cron: str
    scheduled_job: str | None  # None: skipped
    previous_job: str | None
    previous_state: str | None


async def tick(runtime: Runtime) -> list[TickOutcome]:
    """Schedule the run of every due cron (or skip it if its previous run is still going)."""

    async def body(writer: DatabaseWriter, tx: Transaction) -> list[TickOutcome]:
        now = jobs.now_ms()
        hi = keys.encode_values([now]) + keys.AFTER_PREFIX
        outcomes = []
        for cron in await jobs.fetch_locked(tx, sql.LOCK_DUE_CRONS, b"", hi, MAX_DUE_PER_TICK):
            tick_ms = float(cron["nextRun"])
            previous = await writer.get(cron["lastJobId"]) if cron.get("lastJobId") else None
            previous_state = previous["state"]["kind"] if previous is not None else None
            advance = {"nextRun": next_run(cron["schedule"], now, tick_ms)}
            if previous_state in (jobs.PENDING, jobs.IN_PROGRESS):
                await writer.patch(cron["_id"], {**advance, "skippedRuns": cron.get("skippedRuns", 0) + 1,
                                                 "lastSkipped": tick_ms})
                outcomes.append(TickOutcome(cron["name"], None, cron["lastJobId"], previous_state))
                continue
            job_id = await jobs.insert_job(writer, cron["function"], cron["args"][0], tick_ms, cron_name=cron["name"])
            await writer.patch(cron["_id"], {**advance, "lastRun": tick_ms, "lastJobId": job_id})
            outcomes.append(TickOutcome(cron["name"], job_id, cron.get("lastJobId"), previous_state))
        if any(o.scheduled_job for o in outcomes):
            await jobs.notify_due(tx, sql.jobs_channel(runtime.db.namespace), now)
        return outcomes

    outcomes = await jobs.system_transaction(runtime, body, isolation="read_committed")
    for o in outcomes:
        if o.scheduled_job is None:
            log.warning("cron %r: run skipped because its previous run %s is still %s",
                        o.cron, o.previous_job, o.previous_state)
            runtime.metrics.inc("ripple_cron_runs_total", cron=o.cron, outcome="skipped")
        else:
            runtime.metrics.inc("ripple_cron_runs_total", cron=o.cron, outcome="scheduled")
    return outcomes


async def next_due_ms(runtime: Runtime) -> float | None:
    async with runtime.db.acquire() as conn:
        row = await conn.fetchrow(sql.FIRST_CRON)
    return None if row is None else float(row["doc"]["nextRun"])
