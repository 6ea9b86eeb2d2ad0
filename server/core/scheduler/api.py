"""`ctx.scheduler`: `run_after`, `run_at` and `cancel` for mutations and actions.

In a mutation the job is written in the mutation's own transaction: it exists only if the
mutation commits. In an action each call is its own small transaction, committed at once.
The limits below apply per function execution and are the only place they are defined.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson

from server.core.documents import DatabaseWriter
from server.core.metrics import Metrics
from server.core.registry import FunctionDef, Registry
from server.core.scheduler import table
from server.core.transaction import Transaction
from server.core.values import to_convex_json
from server.errors import LimitExceeded, RippleUsageError

T = TypeVar("T")
# Runs `body` in a transaction of its own with a system writer, committed at once (the runtime's
# Runtime.system_transaction).
SystemTransaction = Callable[[Callable[[DatabaseWriter, Transaction], Awaitable[T]]], Awaitable[T]]

MAX_SCHEDULES_PER_CALL = 1000
MAX_SCHEDULED_ARGS_BYTES_PER_CALL = 8 * 1024 * 1024

# The scheduled job whose run is executing in this context (set by the scheduler loop; inherited
# by the mutations and actions a scheduled action calls). What runs under it records it as parent.
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("ripple_job", default=None)

FunctionRef = FunctionDef | str


DEFAULT_HORIZON_S = 5 * 365 * 86_400.0  # how far ahead a job may be scheduled (SchedulerConfig.horizon_seconds)
_YEAR_S = 365.25 * 86_400


def _span(seconds: float) -> str:
    return f"{seconds / _YEAR_S:,.0f} years" if seconds >= 2 * _YEAR_S else f"{seconds / 86_400:,.1f} days"


def _delay_ms(seconds: object, horizon_s: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise RippleUsageError(f"run_after: the delay must be a number of seconds, not {seconds!r}")
    if seconds < 0:
        raise RippleUsageError(f"run_after: the delay must not be negative (got {seconds!r})")
    if horizon_s and seconds > horizon_s:
        hint = f"; the delay is in seconds, not milliseconds (did you mean {seconds / 1000:g}?)" if seconds / 1000 <= horizon_s else ""
        raise RippleUsageError(
            f"run_after: a delay of {seconds:g} s ({_span(seconds)}) is beyond the scheduling horizon of "
            f"{_span(horizon_s)} (RIPPLE_SCHEDULER_HORIZON_SECONDS){hint}"
        )
    return time.time() * 1000.0 + float(seconds) * 1000.0


def _when_ms(when: object, horizon_s: float) -> float:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise RippleUsageError(
                "run_at: a naive datetime has no time zone; pass an aware one "
                "(e.g. datetime.now(timezone.utc) + timedelta(hours=1)) or epoch seconds"
            )
        seconds = when.timestamp()
    elif isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise RippleUsageError(
            f"run_at: `when` must be epoch seconds (float) or an aware datetime, not {when!r}"
        )
    else:
        seconds = float(when)
    ahead = seconds - time.time()
    if horizon_s and ahead > horizon_s:
        hint = (f"; `when` is epoch seconds, and this looks like milliseconds (did you mean {seconds / 1000:.3f}?)"
                if not isinstance(when, dt.datetime) and seconds / 1000 - time.time() <= horizon_s else "")
        raise RippleUsageError(
            f"run_at: {when!r} is {_span(ahead)} from now, beyond the scheduling horizon of "
            f"{_span(horizon_s)} (RIPPLE_SCHEDULER_HORIZON_SECONDS){hint}"
        )
    return seconds * 1000.0


class _Scheduler:
    def __init__(self, registry: Registry, channel: str, metrics: Metrics, horizon_s: float) -> None:
        self._registry = registry
        self._horizon_s = horizon_s  # 0: no horizon
        self._channel = channel  # the jobs NOTIFY channel (sql.jobs_channel)
        self._metrics = metrics
        self._count = 0
        self._args_bytes = 0

    def _prepare(self, ref: object, args: object) -> tuple[str, dict[str, Any]]:
        """Resolve the function, check the arguments, and charge this call's budget."""
        registry = self._registry
        if not isinstance(ref, (FunctionDef, str)):
            raise RippleUsageError(f"schedule a function reference or a 'module:function' path, not {ref!r}")
        fn = registry.resolve(registry.path_of(ref), allow_internal=True)
        if fn.kind == "query":
            raise RippleUsageError(f"{fn.path} is a query; only mutations and actions can be scheduled")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise RippleUsageError(f"arguments scheduled for {fn.path} must be a dict, not {type(args).__name__}")
        fn.validate_args(args)
        size = len(orjson.dumps(to_convex_json(dict(args))))
        if self._count + 1 > MAX_SCHEDULES_PER_CALL:
            raise LimitExceeded(
                f"too many functions scheduled by one function call ({MAX_SCHEDULES_PER_CALL} at most)"
            )
        if self._args_bytes + size > MAX_SCHEDULED_ARGS_BYTES_PER_CALL:
            raise LimitExceeded(
                f"arguments of functions scheduled by one function call exceed "
                f"{MAX_SCHEDULED_ARGS_BYTES_PER_CALL // (1024 * 1024)} MiB in total"
            )
        self._count += 1
        self._args_bytes += size
        assert fn.path is not None
        return fn.path, dict(args)

    async def run_after(self, seconds: float, fn: FunctionRef, args: Mapping[str, Any] | None = None) -> str:
        """Run `fn(args)` `seconds` from now (0: as soon as possible). Returns the job id."""
        return await self._schedule(_delay_ms(seconds, self._horizon_s), fn, args)

    async def run_at(self, when: float | dt.datetime, fn: FunctionRef, args: Mapping[str, Any] | None = None) -> str:
        """Run `fn(args)` at `when` (epoch seconds or an aware datetime; past: at once)."""
        return await self._schedule(_when_ms(when, self._horizon_s), fn, args)

    async def _schedule(self, due_ms: float, ref: object, args: object) -> str:
        raise NotImplementedError

    async def _parent_may_be_canceled(self, parent: str) -> bool:
        return True

    async def _insert(self, writer: DatabaseWriter, due_ms: float, path: str, args: dict[str, Any]) -> str:
        parent = current_job.get()
        parent_canceled = False
        if parent is not None and await self._parent_may_be_canceled(parent):
            doc = await writer.get(parent)
            parent_canceled = doc is not None and doc["state"]["kind"] == table.CANCELED
        return await table.insert_job(writer, path, args, due_ms, parent_id=parent, canceled=parent_canceled)


class MutationScheduler(_Scheduler):
    """`ctx.scheduler` in a mutation: jobs commit or roll back with the mutation."""

    def __init__(self, tx: Transaction, registry: Registry, channel: str, metrics: Metrics,
                 running_job: str | None = None, horizon_s: float = DEFAULT_HORIZON_S) -> None:
        super().__init__(registry, channel, metrics, horizon_s)
        self._tx = tx
        self._running_job = running_job  # the scheduled job this transaction runs, if any
        self._writer = DatabaseWriter(tx, system=True)
        self._notified_ms: float | None = None
        self._canceled = 0

    async def _parent_may_be_canceled(self, parent: str) -> bool:
        # The scheduled job this transaction runs is row-locked by its claim, so it cannot be
        # canceled meanwhile. Not reading it keeps the transaction free of SSI predicate locks on
        # the job table's index pages (which would make concurrent job runs conflict).
        return parent != self._running_job

    async def _schedule(self, due_ms: float, ref: object, args: object) -> str:
        path, plain = self._prepare(ref, args)
        job_id = await self._insert(self._writer, due_ms, path, plain)
        if self._notified_ms is None or due_ms < self._notified_ms:
            await table.notify_due(self._tx, self._channel, due_ms)
            self._notified_ms = due_ms
        return job_id

    async def cancel(self, job_id: str) -> None:
        """Cancel a scheduled function (no-op once it finished); see docs/scheduler.md."""
        self._canceled += await table.cancel(self._writer, job_id)

    def nested(self) -> MutationScheduler:
        """`ctx.scheduler` of a mutation this one calls (ctx.run_mutation): its jobs are written
        in this transaction under the nested call's savepoint, so they roll back with its writes
        if it fails; `adopt` it once it returned."""
        return MutationScheduler(self._tx, self._registry, self._channel, self._metrics, self._running_job,
                                 self._horizon_s)

    def adopt(self, nested: MutationScheduler) -> None:
        """A nested mutation returned: what it scheduled and canceled now commits with this one."""
        self._canceled += nested._canceled
        if nested._notified_ms is not None and (self._notified_ms is None or nested._notified_ms < self._notified_ms):
            self._notified_ms = nested._notified_ms

    def committed(self) -> None:
        """Called once the mutation committed."""
        if self._canceled:
            self._metrics.inc("ripple_scheduled_jobs_total", self._canceled, state="canceled")


class ActionScheduler(_Scheduler):
    """`ctx.scheduler` in an action: each call commits on its own, at once."""

    def __init__(self, registry: Registry, channel: str, metrics: Metrics, transact: SystemTransaction[Any],
                 horizon_s: float = DEFAULT_HORIZON_S) -> None:
        super().__init__(registry, channel, metrics, horizon_s)
        self._transact = transact

    async def _schedule(self, due_ms: float, ref: object, args: object) -> str:
        path, plain = self._prepare(ref, args)

        async def body(writer: DatabaseWriter, tx: Transaction) -> str:
            job_id = await self._insert(writer, due_ms, path, plain)
            await table.notify_due(tx, self._channel, due_ms)
            return job_id

        job_id: str = await self._transact(body)
        return job_id

    async def cancel(self, job_id: str) -> None:
        """Cancel a scheduled function (no-op once it finished); see docs/scheduler.md."""
        table.check_job_id(job_id)

        async def body(writer: DatabaseWriter, tx: Transaction) -> int:
            return await table.cancel(writer, job_id)

        changed: int = await self._transact(body)
        if changed:
            self._metrics.inc("ripple_scheduled_jobs_total", changed, state="canceled")
