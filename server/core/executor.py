"""Running functions: argument validation, contexts, transactions with retries, logs, errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from server.config import Config
from server.core import crons as _crons  # noqa: F401  (registers the _cron_jobs system table)
from server.core import jobs, logs, sandbox, sql
from server.core.backoff import conflict_retry_delays
from server.core.database import Catalog, Database, rollback
from server.core.documents import (
    DatabaseReader,
    DatabaseWriter,
    NeedsSnapshot,
    ReadRange,
    Transaction,
)
from server.core.loader import App, load_app
from server.core.metrics import Metrics, standard_metrics
from server.core.readsets import overlaps
from server.core.registry import FunctionDef, Kind
from server.core.scheduling import ActionScheduler, MutationScheduler
from server.core.values import from_convex_json, to_convex_json
from server.errors import (
    ConvexError,
    StaleTimestamp,
    TooManyConflicts,
    TransactionConflict,
    ValueValidationError,
)

log = logging.getLogger("ripple.functions")

# A unique violation can only come from two runs of one idempotent mutation racing: retrying
# finds the stored result of the winner.
_CONFLICTS = (*jobs.CONFLICTS, asyncpg.UniqueViolationError)
MAX_TS_LOOKBACK_COMMITS = 10_000


@dataclass
class Outcome:
    value: Any
    log_lines: list[str]
    ts: int | None = None  # commit ts of a writing mutation (unless not asked for), or the ts read at


@dataclass
class QueryRun:
    """One query execution: its result (or failure), what it read, and its pagination journal."""

    value: Any
    log_lines: list[str]
    reads: list[ReadRange]
    journal: str | None
    failure: FunctionFailure | None
    broken: bool = False  # the transaction it ran in can no longer be used
    needs_snapshot: bool = False  # a one-statement run wanted more: run it again in a snapshot


class FunctionFailure(Exception):
    """A function ran and failed. `message` is what clients may see; `data` is ConvexError data."""

    def __init__(self, message: str, log_lines: list[str], data: Any = None, has_data: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.log_lines = log_lines
        self.data = data
        self.has_data = has_data


class Identity(dict[str, Any]):
    """A verified user identity (claims in Convex's camelCase form), or absent (None)."""

    @property
    def subject(self) -> str:
        return str(self["subject"])

    @property
    def issuer(self) -> str:
        return str(self["issuer"])

    @property
    def token_identifier(self) -> str:
        return str(self["tokenIdentifier"])


class Auth:
    def __init__(self, identity: Identity | None) -> None:
        self._identity = identity

    async def get_user_identity(self) -> Identity | None:
        return self._identity


class QueryCtx:
    def __init__(self, db: DatabaseReader, auth: Auth) -> None:
        self.db = db
        self.auth = auth


class MutationCtx(QueryCtx):
    db: DatabaseWriter

    def __init__(self, db: DatabaseWriter, auth: Auth, scheduler: MutationScheduler) -> None:
        super().__init__(db, auth)
        self.scheduler = scheduler


class ActionCtx:
    """Actions run outside transactions and may do network I/O; they reach the database through
    queries and mutations."""

    def __init__(self, runtime: Runtime, identity: Identity | None, logs_: logs.LogBuffer) -> None:
        self._runtime = runtime
        self._identity = identity
        self._logs = logs_
        self.auth = Auth(identity)
        self.scheduler = ActionScheduler(runtime)

    async def _nested(self, kind: Kind, ref: FunctionDef | str, args: dict[str, Any] | None) -> Any:
        path = self._runtime.app.registry.path_of(ref)
        try:
            outcome = await self._runtime.call(kind, path, args or {}, self._identity, allow_internal=True, commit_ts=False)
        except FunctionFailure as failure:
            self._logs.extend(failure.log_lines)
            if failure.has_data:
                raise ConvexError(failure.data) from None
            raise RuntimeError(failure.message) from None
        self._logs.extend(outcome.log_lines)
        return outcome.value

    async def run_query(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("query", ref, args)

    async def run_mutation(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("mutation", ref, args)

    async def run_action(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("action", ref, args)


class Runtime:
    """One loaded app over one database."""

    def __init__(self, config: Config, db: Database, metrics: Metrics | None = None) -> None:
        self.config = config
        self.db = db
        self.metrics = metrics or standard_metrics()
        self._app: App | None = None
        self._catalog: Catalog | None = None
        self.on_reload: list[Callable[[], None]] = []
        logs.install()
        sandbox.install()

    @property
    def app(self) -> App:
        assert self._app is not None, "Runtime.load() was not called"
        return self._app

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None, "Runtime.load() was not called"
        return self._catalog

    @property
    def ready(self) -> bool:
        return self._app is not None

    async def load(self, directory: Path | None = None, *, partial: bool = False) -> None:
        """Import the app and apply its schema; on any failure the previous version stays.
        `partial`: serve the function modules that import (see loader.load_app)."""
        app = load_app(directory or self.config.app_dir, partial=partial)
        catalog = await self.db.apply_schema(app.schema)
        self._app, self._catalog = app, catalog
        for callback in self.on_reload:
            callback()

    # -- entry point --------------------------------------------------------------------------

    async def call(
        self,
        kind: Kind,
        path: str,
        args: Any,
        identity: Identity | None = None,
        *,
        allow_internal: bool = False,
        at_ts: int | None = None,
        idempotency_key: tuple[str, int] | None = None,
        commit_ts: bool = True,
    ) -> Outcome:
        """Resolve, validate and run a function. Raises RippleUsageError for caller mistakes
        (unknown function, bad arguments) and FunctionFailure when the function itself fails.

        `idempotency_key` (session id, request id) makes a mutation run at most once: a repeat
        with the same key returns the stored result of the first successful run."""
        fn = self.app.registry.resolve(path, allow_internal=allow_internal, kind=kind)
        kwargs = fn.validate_args(args)
        if kind == "query":
            return await self._run_query(fn, kwargs, identity, at_ts)
        if kind == "mutation":
            return await self._run_mutation(fn, kwargs, identity, idempotency_key=idempotency_key, commit_ts=commit_ts)
        return await self._run_action(fn, kwargs, identity)

    async def latest_ts(self) -> int:
        async with self.db.acquire() as conn:
            return int(await conn.fetchval(sql.LATEST_TS))

    # -- kinds --------------------------------------------------------------------------------

    async def invoke(self, fn: FunctionDef, ctx: Any, kwargs: dict[str, Any], buffer: logs.LogBuffer, timeout: float) -> Any:
        log_token = logs.current.set(buffer)
        kind_token = sandbox.running_kind.set(fn.kind)
        try:
            async with asyncio.timeout(timeout):
                value = await fn.handler(ctx, **kwargs)
        except TimeoutError:
            raise TimeoutError(f"{fn.path} ran longer than {timeout:g} s") from None
        finally:
            sandbox.running_kind.reset(kind_token)
            logs.current.reset(log_token)
        value = fn.validate_return(value)
        to_convex_json(value)  # a result that cannot be sent is the function's error
        return value

    async def execute_query(
        self, conn: Any, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None, journal: str | None = None,
        *, single_statement: bool = False,
    ) -> QueryRun:
        """Run a query inside the caller's (read-only, snapshot) transaction on `conn`; report
        its result or failure together with what it read, for reactivity. With
        `single_statement`, `conn` is outside any transaction and the run is abandoned (result
        `needs_snapshot`) if the query issues more than one statement."""
        buffer = logs.LogBuffer()
        tx = Transaction(conn, self.catalog, writable=False, journal_in=journal,
                         statement_budget=1 if single_statement else None)
        try:
            value = await self.invoke(fn, QueryCtx(DatabaseReader(tx), Auth(identity)), kwargs, buffer, self.config.query_timeout)
        except NeedsSnapshot:
            return QueryRun(None, [], [], None, None, needs_snapshot=True)
        except Exception as exc:
            if tx.needs_snapshot:
                return QueryRun(None, [], [], None, None, needs_snapshot=True)
            self.metrics.inc("ripple_query_executions_total")
            failure = self.failure(fn, exc, buffer)
            failure.__cause__ = exc
            return QueryRun(None, failure.log_lines, tx.reads, tx.journal_out, failure, broken=tx.conflicted)
        if tx.needs_snapshot:
            return QueryRun(None, [], [], None, None, needs_snapshot=True)
        self.metrics.inc("ripple_query_executions_total")
        return QueryRun(value, buffer.finish(), tx.reads, tx.journal_out, None)

    async def _run_query(self, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None, at_ts: int | None) -> Outcome:
        if at_ts is None:
            # Most queries issue one statement (a get, one index range): run it on its own, with
            # no BEGIN and COMMIT round trips; a query that needs more runs again below.
            async with self.db.acquire() as conn:
                run = await self.execute_query(conn, fn, kwargs, identity, single_statement=True)
            if not run.needs_snapshot:
                if run.failure is not None:
                    raise run.failure
                return Outcome(run.value, run.log_lines, None)
        async with self.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot_ts = int(await conn.fetchval(sql.LATEST_TS)) if at_ts is not None else None
            run = await self.execute_query(conn, fn, kwargs, identity)
            if run.failure is not None:
                raise run.failure
            if at_ts is not None and snapshot_ts is not None:
                await self._check_unchanged_since(conn, run.reads, at_ts, snapshot_ts)
        return Outcome(run.value, run.log_lines, at_ts)

    async def _check_unchanged_since(self, conn: Any, reads: list[ReadRange], at_ts: int, snapshot_ts: int) -> None:
        """A query at an older ts is answered from the current snapshot when no commit since
        then wrote into what the query read; otherwise the caller must retry at a newer ts."""
        if at_ts >= snapshot_ts:
            return
        rows = await conn.fetch(
            "SELECT writes FROM _ripple_commits WHERE ts > $1 AND ts <= $2 ORDER BY ts LIMIT $3",
            at_ts, snapshot_ts, MAX_TS_LOOKBACK_COMMITS + 1,
        )
        pruned_through = await conn.fetchval(sql.PRUNED_THROUGH)
        too_far = len(rows) > MAX_TS_LOOKBACK_COMMITS or (pruned_through is not None and at_ts < int(pruned_through))
        if too_far or overlaps(reads, (w for r in rows for w in r["writes"])):
            raise StaleTimestamp(
                f"timestamp {at_ts} is too old: documents this query reads changed since; "
                "fetch a new timestamp from /api/query_ts"
            )

    async def _run_mutation(
        self, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None,
        idempotency_key: tuple[str, int] | None = None, commit_ts: bool = True,
    ) -> Outcome:
        delays = conflict_retry_delays()
        for _ in range(self.config.max_mutation_attempts):
            buffer = logs.LogBuffer()
            tx: Transaction | None = None
            try:
                async with self.db.acquire() as conn:
                    if idempotency_key is not None:
                        done = await conn.fetchrow(sql.GET_MUTATION_RESULT, *idempotency_key)
                        if done is not None:  # a resend of a mutation that already committed
                            return Outcome(from_convex_json(done["value"][0]), list(done["log_lines"]), int(done["ts"]))
                    async with self.transaction(conn, "serializable") as tx:
                        ctx = MutationCtx(DatabaseWriter(tx), Auth(identity), MutationScheduler(tx, self))
                        value = await self.invoke(fn, ctx, kwargs, buffer, self.config.mutation_timeout)
                        if tx.conflicted:
                            raise TransactionConflict("conflict observed during the mutation")
                        if idempotency_key is not None:
                            await conn.execute(sql.PUT_MUTATION_RESULT, *idempotency_key, [to_convex_json(value)], buffer.lines)
                    ts = None
                    if (commit_ts and tx.writes) or idempotency_key is not None:
                        ts = await self._ts_after_commit(conn, bool(tx.writes))
            except Exception as exc:
                if isinstance(exc, _CONFLICTS) or (tx is not None and tx.conflicted):
                    self.metrics.inc("ripple_mutation_retries_total")
                    await asyncio.sleep(next(delays))
                    continue
                self.metrics.inc("ripple_mutations_total", outcome="error")
                raise self.failure(fn, exc, buffer) from exc
            ctx.scheduler.committed()
            self.metrics.inc("ripple_mutations_total", outcome="success")
            return Outcome(value, buffer.finish(), ts)
        self.metrics.inc("ripple_mutations_total", outcome="error")
        conflict = TooManyConflicts(f"{fn.path} kept conflicting with concurrent writes ({self.config.max_mutation_attempts} attempts)")
        raise self.failure(fn, conflict, logs.LogBuffer())

    @contextlib.asynccontextmanager
    async def transaction(self, conn: asyncpg.Connection, isolation: str) -> AsyncIterator[Transaction]:
        """A writable transaction on `conn` (mutations, scheduler and system writes) that commits
        on leaving the block. The commit tail (which takes the global commit lock) and COMMIT
        travel in one message (sql.commit_with_tail), so PostgreSQL releases the lock without
        waiting for this process: a busy event loop here never holds up other writers. Rolled
        back if the block raises; a transaction that observed a conflict raises one."""
        await conn.execute(sql.BEGIN[isolation])
        tx = Transaction(conn, self.catalog, writable=True)
        try:
            yield tx
            if tx.conflicted:
                raise TransactionConflict("conflict observed in the transaction")
            if tx.writes:
                writes = orjson.dumps([w.to_json() for w in tx.writes.values()]).decode()
                await conn.execute(sql.commit_with_tail(writes, self.db.commit_lock, self.db.channel))
            else:
                await conn.execute(sql.COMMIT)
        except BaseException:
            await rollback(conn)
            raise

    async def _ts_after_commit(self, conn: asyncpg.Connection, wrote: bool) -> int:
        """A ts covering a committed mutation: its own (currval of the ts sequence on its
        connection) or, when it wrote nothing, the latest. Costs a round trip, so only callers
        that report a ts (the sync protocol's MutationResponse) ask. The mutation has committed:
        if its connection fails now, the latest ts read on another one covers it too, rather
        than reporting a committed mutation as failed."""
        try:
            return int(await conn.fetchval(sql.LAST_COMMIT_TS if wrote else sql.LATEST_TS))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("reading a commit ts failed (%s); using the latest ts instead", exc)
            return await self.latest_ts()

    async def _run_action(self, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None) -> Outcome:
        buffer = logs.LogBuffer()
        ctx = ActionCtx(self, identity, buffer)
        try:
            value = await self.invoke(fn, ctx, kwargs, buffer, self.config.action_timeout)
        except Exception as exc:
            self.metrics.inc("ripple_actions_total", outcome="error")
            raise self.failure(fn, exc, buffer) from exc
        self.metrics.inc("ripple_actions_total", outcome="success")
        return Outcome(value, buffer.finish())

    # -- errors -------------------------------------------------------------------------------

    def failure(self, fn: FunctionDef, error: BaseException, buffer: logs.LogBuffer) -> FunctionFailure:
        exc = error
        lines = buffer.finish()
        self.metrics.inc("ripple_function_errors_total", kind=fn.kind)
        if isinstance(exc, ConvexError):
            try:
                data = to_convex_json(exc.data)
            except ValueValidationError as bad:
                exc = ValueValidationError(f"ConvexError data is not a Convex value: {bad}")
            else:
                text = exc.data if isinstance(exc.data, str) else orjson.dumps(data).decode()
                return FunctionFailure(f"Uncaught ConvexError: {text}", lines, data=data, has_data=True)
        request_id = secrets.token_hex(8)
        log.error("%s failed [request %s]", fn.path, request_id, exc_info=exc)
        if self.config.dev:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            app_dir = self.app.directory  # a path prefix match, not a string one: /srv/app2 is not in /srv/app
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).is_relative_to(app_dir)]
            where = "".join(traceback.format_list(frames[-5:]))
            return FunctionFailure(f"[Request ID: {request_id}] Uncaught {detail}\n{where}".rstrip(), lines)
        return FunctionFailure(f"[Request ID: {request_id}] Server Error", lines)
