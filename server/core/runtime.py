"""Longer than 400 lines because every way a function runs is here, in one place: a client's
call, a call inside a caller's transaction (live queries, scheduled jobs, ctx.run_query and
ctx.run_mutation) and the retries around them.

The Runtime: one loaded app over one database, and the one way functions are run.

`call` resolves a function, validates its arguments and runs it by kind:

* a query runs on one snapshot (first outside any transaction, allowed one statement; again in
  a REPEATABLE READ snapshot if it needs more);
* a mutation runs in a SERIALIZABLE transaction (`transaction`: the commit tail and COMMIT in
  one message), retried on conflicts and lost connections by `retry_transaction`, the one retry
  policy for every writing transaction (mutations, scheduled mutations, the runtime's own
  system writes); a COMMIT cut off by a lost connection is resolved, not guessed (commit.py);
* an action runs outside any transaction with an ActionCtx;
* a query's or mutation's ctx.run_query / ctx.run_mutation runs the called function inside the
  caller's transaction (`call_inside`; a mutation under a savepoint).

`execute_query` and `execute_mutation` run a function inside a transaction someone else owns:
the live-query tick (one snapshot for many queries) and the scheduler (a job's claim and its
mutation commit together). A failure becomes a `FunctionFailure` whose message `redact` made
safe for clients.

Every execution that ends is an entry of the log stream (`log_stream`, core/log_stream.py, which
lists the one place per kind that records it).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson

from server.config import Config
from server.core import dashboard, env_store, log_stream, logs, sandbox, sql, watchdog
from server.core.auth.keys import KeyStore
from server.core.auth.verify import Verifier, app_verifier
from server.core.commit import Committer
from server.core.contexts import (
    ActionCtx,
    Auth,
    Identity,
    InnerCall,
    MutationCtx,
    Outcome,
    QueryCtx,
    StoredCall,
    caller_key,
)
from server.core.database import Catalog, Database
from server.core.deadlines import Deadline
from server.core.documents import DatabaseReader, DatabaseWriter
from server.core.env import Change, Env, EnvValues, built_in_values
from server.core.group_commit import Done, GroupCommit
from server.core.hot_keys import HotKeys, Ticket
from server.core.loader import App, load_app
from server.core.metrics import Metrics, standard_metrics
from server.core.query_cache import Cached, CacheKey, QueryCache, cache_key
from server.core.readsets import check_unchanged_since
from server.core.registry import FunctionDef, Kind
from server.core.scheduler.api import ActionScheduler, MutationScheduler
from server.core.schema_apply import apply_schema
from server.core.search import vector_query
from server.core.storage.api import StorageActionWriter, StorageReader, StorageWriter
from server.core.storage.files import Files, blob_store
from server.core.supervise import Supervised
from server.core.transaction import CONFLICTS, NeedsSnapshot, ReadRange, Transaction
from server.core.values import digest, from_convex_json, to_convex_json, to_wire_json
from server.errors import (
    ConnectionLost,
    ConvexError,
    FunctionFailure,
    LimitExceeded,
    TooManyConflicts,
    TransactionConflict,
    ValueValidationError,
    contained,
    redact,
)

T = TypeVar("T")
KIND_LABELS = {"query": "Q", "mutation": "M", "action": "A"}
MAX_CALL_DEPTH = 8  # ctx.run_query / run_mutation levels inside one transaction (Convex's MAX_REACTOR_CALL_DEPTH)


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
    stream_lines: list[str] = field(default_factory=list)  # its log stream entry's (all, dev mode or not)

    def outcome(self, ts: int | None) -> Outcome:
        """What the caller gets; a run whose connection was lost is run again (ConnectionLost)."""
        if self.broken:
            raise ConnectionLost("the database connection was lost while the query ran")
        if self.failure is not None:
            raise self.failure
        return Outcome(self.value, self.log_lines, ts)


def _key_of(fn: FunctionDef, args: Any, identity: Identity | None) -> CacheKey | None:
    """The query cache's key of a call, or None when its arguments are no Convex value (an UNSET
    in an array): such a call runs uncached, and its validation says what is wrong."""
    try:
        return cache_key(str(fn.path), args, identity)
    except ValueValidationError:
        return None


def _call_id(fn: FunctionDef, args: Any, identity: Identity | None) -> tuple[str, str, str] | None:
    """Who a mutation call is, for the hot-key queues: function, arguments and caller (None when
    its arguments have no digest: it is not remembered)."""
    try:
        return str(fn.path), digest(args), identity.token_identifier if identity is not None else ""
    except ValueValidationError:
        return None


class Runtime:
    """One loaded app over one database."""

    def __init__(self, config: Config, db: Database, metrics: Metrics | None = None) -> None:
        self.config = config
        self.db = db
        self.metrics = metrics or standard_metrics()
        self.committer = Committer(db, self.metrics, config)
        self.jobs_channel = sql.jobs_channel(db.namespace)
        self._app: App | None = None
        self._catalog: Catalog | None = None
        self.files = Files(db, blob_store(config), config, self.system_transaction)
        self.auth_keys = KeyStore(config.auth)  # providers' keys, kept across reloads
        self.verifier = Verifier((), self.auth_keys, config.auth)
        # Every environment variable, kept current (refresh_env, commits_seen), and the built-in ones.
        self.env_values = EnvValues(built_in_values(config.base_url))
        self.on_reload: list[Callable[[], None]] = []
        self.loops: list[Supervised] = []  # every background loop of this process, for health
        self.log_stream = log_stream.LogStream(config.log_stream_entries, config.log_stream_bytes)
        self.metrics.gauge("ripple_log_readers", lambda: float(self.log_stream.waiting))
        # Results of queries at the latest ts; the live-query tick keeps it fresh (query_cache.py).
        self.query_cache = QueryCache(config.query_cache_bytes, self.metrics, self.latest_ts)
        # This process's queues for mutations that conflict over the same keys (hot_keys.py).
        self.hot_keys = HotKeys(self.metrics, enabled=config.hot_key_queue)
        # ... whose queued calls on the same keys commit together (group_commit.py).
        self.group_commit = GroupCommit(db, self.hot_keys, self.metrics, lambda conn: self.transaction(conn, "serializable"),
                                        self.committer.ts_after_commit, config.group_commit_seconds) if config.group_commit else None
        logs.install()
        sandbox.install()

    def supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> Supervised:
        """A background loop of this process, kept alive and reported by health (supervise.py)."""
        return Supervised(name, body, self.metrics, self.loops)

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
        dashboard.register(app)
        verifier = app_verifier(app, self.auth_keys, self.config.auth, partial=partial)
        catalog = await apply_schema(self.db, app.schema)
        app.registry.bind_tables(catalog.names)
        self._app, self._catalog, self.verifier = app, catalog, verifier
        self.query_cache.clear()  # results of the old code (and schema)
        await self.refresh_env()
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
        before_commit: Callable[[], None] | None = None,
        looked_up: bool = False,
    ) -> Outcome:
        """Resolve, validate and run a function. Raises RippleUsageError for caller mistakes
        (unknown function, bad arguments) and FunctionFailure when the function itself fails.

        `idempotency_key` (session id, request id) makes a mutation run at most once per caller
        (`caller_key(identity, allow_internal)`): a repeat of the same call with the same key
        returns the stored result of the first successful run; a repeat calling another function
        or with other arguments raises IdempotencyKeyReused.

        `before_commit` (mutations): called just before each attempt's COMMIT is sent, after which
        live-query results may hold the mutation's writes (the websocket holds its Transitions
        back from then until the MutationResponse, server/sync/protocol.py).

        `looked_up` (a query at the latest ts): the query cache was asked for this very call and
        could not answer (the HTTP fast path, server/api/cached_responses.py, counted the miss):
        it is run and stored without asking again."""
        fn = self.app.registry.resolve(path, allow_internal=allow_internal, kind=kind)
        if kind == "query" and at_ts is None and self.query_cache.enabled and (cache := _key_of(fn, args, identity)):
            if looked_up:
                return await self._run_query(fn, fn.validate_args(args), identity, at_ts, cache, looked_up=True)
            # A hit needs no validation: the same arguments passed it when the result was stored.
            return await self._run_query(fn, args, identity, at_ts, cache)
        kwargs = fn.validate_args(args)
        if kind == "query":
            return await self._run_query(fn, kwargs, identity, at_ts)
        if kind == "mutation":
            key = None if idempotency_key is None else StoredCall(
                *idempotency_key, caller_key(identity, allow_internal), str(fn.path), digest(args))
            return await self._run_mutation(fn, args, kwargs, identity, key, commit_ts, before_commit)
        return await self._run_action(fn, kwargs, identity)

    async def _nested_call(self, kind: Kind, ref: FunctionDef | str, args: dict[str, Any], identity: Identity | None) -> Outcome:
        """An action's run_query / run_mutation / run_action."""
        path = self.app.registry.path_of(ref)
        token = log_stream.caller.set("action")
        try:
            return await self.call(kind, path, args, identity, allow_internal=True, commit_ts=False)
        finally:
            log_stream.caller.reset(token)

    def inner_calls(self, tx: Transaction, identity: Identity | None, depth: int,
                    scheduler: MutationScheduler | None) -> InnerCall:
        """ctx.run_query / ctx.run_mutation of a function running `depth` calls deep in `tx`."""
        return functools.partial(self.call_inside, tx, identity, depth, scheduler)

    async def call_inside(self, tx: Transaction, identity: Identity | None, depth: int,
                          scheduler: MutationScheduler | None, kind: Kind, ref: FunctionDef | str,
                          args: dict[str, Any]) -> Outcome:
        """Run a query or mutation inside its caller's transaction, as Convex does: arguments and
        result validated as for a client's call, internal functions allowed, reads joining the
        caller's read set; a mutation under a savepoint (its writes and jobs undone if it fails).
        The caller's time limits keep running; the called function's own start with it."""
        registry = self.app.registry
        fn = registry.resolve(registry.path_of(ref), allow_internal=True, kind=kind)
        kwargs = fn.validate_args(args)
        if depth >= MAX_CALL_DEPTH:
            raise LimitExceeded(f"ctx.run_{kind}({fn.path}): functions call functions at most {MAX_CALL_DEPTH} levels "
                                "deep in one transaction; is this an endless recursion?")
        async with tx.nested_call():
            if kind == "query":
                run = await self.query_in(tx, fn, kwargs, identity, depth + 1)
                if run.needs_snapshot:
                    raise NeedsSnapshot()
                return run.outcome(None)
            assert scheduler is not None, "only a mutation runs mutations"
            async with tx.savepoint():
                value, lines, nested = await self.execute_mutation(tx, fn, kwargs, identity, parent=scheduler, depth=depth + 1)
            scheduler.adopt(nested)
            return Outcome(value, lines)

    async def latest_ts(self) -> int:
        async with self.db.acquire() as conn:
            return int(await conn.fetchval(sql.LATEST_TS))

    # -- running user code --------------------------------------------------------------------

    def log_buffer(self, fn: FunctionDef, depth: int = 0) -> logs.LogBuffer:
        """Where a run's print() lines go: the server log and the log stream always, the client
        in dev mode; a call `depth` > 0 deep in a transaction hands all of them to its caller."""
        return self.app_log_buffer(f"{KIND_LABELS[fn.kind]} {fn.path}", keep=self.config.dev or depth > 0)

    def app_log_buffer(self, label: str, keep: bool) -> logs.LogBuffer:
        """The log lines of a run of app code labelled `label`, with the values of environment
        variables masked (docs/env.md, Secrets hygiene)."""
        return logs.LogBuffer(label, keep=keep, mask=self.env_values.mask)

    def redact(self, exc: BaseException, what: str, buffer: logs.LogBuffer | None = None) -> str:
        """errors.redact for a failure of app code: its frames shown in dev mode, the values of
        environment variables masked in the log and the message. `buffer`: the failed
        execution's, which keeps the message and its request id for the log stream."""
        if buffer is None:
            return redact(exc, what, dev=self.config.dev, app_dir=self.app.directory, mask=self.env_values.mask)
        buffer.request_id = secrets.token_hex(8)
        buffer.error = redact(exc, what, dev=self.config.dev, app_dir=self.app.directory, mask=self.env_values.mask,
                              request_id=buffer.request_id)
        return buffer.error

    async def invoke(
        self, fn: FunctionDef, ctx: Any, kwargs: dict[str, Any], buffer: logs.LogBuffer, timeout: float,
        blocking_limit: float | None = None,
    ) -> Any:
        """Run the function's code. Whatever it raises comes out as an Exception (see
        `contained`): a function cannot stop the server or the loop that called it. It fails with
        FunctionTimedOut after `timeout` seconds, or once it holds the event loop without awaiting
        for `blocking_limit` seconds (default Config.blocking_limit; see watchdog.py)."""
        call = self.invocation(fn.kind, fn.path, timeout, blocking_limit)
        value = await self.guarded(call, fn.handler(ctx, **kwargs), buffer, fn.validate_return)
        to_convex_json(value)  # a result that cannot be sent is the function's error
        return value

    def invocation(self, kind: str, path: object, timeout: float, blocking_limit: float | None = None) -> watchdog.Invocation:
        """A call of app code about to start: its limits (see `invoke`), its deadline from now."""
        limit = self.config.blocking_limit if blocking_limit is None else blocking_limit
        return watchdog.Invocation(kind, path, limit, timeout, self.app.directory)

    async def guarded(self, call: watchdog.Invocation, body: Awaitable[Any], buffer: logs.LogBuffer,
                      finish: Callable[[Any], T]) -> T:
        """`finish(await body)`, `body` being app code of `call` (all of it, or one part: an HTTP
        action's handler, then its response), within the call's deadline and blocking limit, its
        log lines going to `buffer`; what it raises comes out as `invoke` says."""
        tokens = logs.current.set(buffer), sandbox.running_kind.set(call.kind), watchdog.current.set(call)
        try:
            async with Deadline(call.deadline) as clock:
                return await watchdog.run(call, body, finish)
        except (TimeoutError, watchdog.Runaway) as exc:
            if isinstance(exc, TimeoutError) and not clock.expired():  # the function's own
                raise
            self.metrics.inc("ripple_function_timeouts_total", kind=call.kind)
            raise watchdog.timed_out(call, exc) from None
        except (Exception, NeedsSnapshot):
            raise
        except BaseException as exc:
            if (error := contained(exc, str(call.path))) is exc:
                raise
            raise error from exc
        finally:
            watchdog.current.reset(tokens[2])
            sandbox.running_kind.reset(tokens[1])
            logs.current.reset(tokens[0])

    def failure(self, fn: FunctionDef, error: BaseException, buffer: logs.LogBuffer) -> FunctionFailure:
        """A function's failure as clients may see it: ConvexError data as is, anything else
        redacted (server/errors.py, `redact`)."""
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
                buffer.error = f"Uncaught ConvexError: {text}"
                return FunctionFailure(buffer.error, lines, data=to_wire_json(exc.data), has_data=True)
        message = self.redact(exc, str(fn.path), buffer)
        return FunctionFailure(message, lines)

    # -- queries ------------------------------------------------------------------------------

    async def execute_query(
        self, conn: Any, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None, journal: str | None = None,
        *, single_statement: bool = False,
    ) -> QueryRun:
        """Run a query inside the caller's (read-only, snapshot) transaction on `conn`; report
        its result or failure together with what it read, for reactivity. With
        `single_statement`, `conn` is outside any transaction and the run is abandoned (result
        `needs_snapshot`) if the query issues more than one statement."""
        tx = Transaction(conn, self.catalog, writable=False, journal_in=journal,
                         statement_budget=1 if single_statement else None)
        return await self.query_in(tx, fn, kwargs, identity, 0)

    async def query_in(self, tx: Transaction, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None,
                       depth: int) -> QueryRun:
        """`execute_query` in `tx`, `depth` calls deep (ctx.run_query: `call_inside`). A run at the
        top that is final (not run again in a snapshot or on a new connection) is the query's
        one entry in the log stream."""
        buffer = self.log_buffer(fn, depth)
        try:
            ctx = QueryCtx(DatabaseReader(tx), Auth(identity), self.inner_calls(tx, identity, depth, None), buffer,
                           StorageReader(tx, self.files), self.env_in(tx))
            value = await self.invoke(fn, ctx, kwargs, buffer, self.config.query_timeout)
        except NeedsSnapshot:
            return QueryRun(None, [], [], None, None, needs_snapshot=True)
        except Exception as exc:
            if tx.needs_snapshot:
                return QueryRun(None, [], [], None, None, needs_snapshot=True)
            if tx.lost:  # not the query's failure: its caller runs it again
                return QueryRun(None, [], [], None, None, broken=True)
            self.metrics.inc("ripple_query_executions_total")
            failure = self.failure(fn, exc, buffer)
            failure.__cause__ = exc
            if depth == 0 and not tx.conflicted:
                self.log_stream.record("query", str(fn.path), buffer)
            return QueryRun(None, failure.log_lines, tx.reads, tx.journal_out, failure, broken=tx.conflicted)
        if tx.needs_snapshot or tx.lost:  # noticed even when function code swallowed the error
            return QueryRun(None, [], [], None, None, needs_snapshot=tx.needs_snapshot, broken=tx.lost)
        self.metrics.inc("ripple_query_executions_total")
        if depth == 0:
            self.log_stream.record("query", str(fn.path), buffer)
        return QueryRun(value, buffer.finish(), tx.reads, tx.journal_out, None, stream_lines=buffer.lines)

    def record_cached(self, path: str, hit: Cached) -> None:
        """A query of `path` answered from the query cache: its log stream entry, `cached`, with
        the lines of the run that computed the result."""
        self.log_stream.record_cached("query", path, list(hit.stream_lines))

    async def _run_query(self, fn: FunctionDef, kwargs: Any, identity: Identity | None, at_ts: int | None,
                         key: CacheKey | None = None, *, looked_up: bool = False) -> Outcome:
        """A client's or an action's query. With a cache `key` (a call at the latest ts), `kwargs`
        are the arguments as sent, validated only when the query cache cannot answer (a result
        no commit since touched), and the run is stored. `looked_up`: the cache was asked
        already and missed (`call`); `kwargs` are validated."""
        cache = self.query_cache
        if key is not None and not looked_up:
            hit = await cache.lookup(key)
            if hit is not None:
                self.record_cached(key[0], hit)
                return Outcome(hit.value(), list(hit.log_lines), None, key)
            kwargs = fn.validate_args(kwargs)
        begun = cache.begin() if key is not None else None

        async def attempt() -> QueryRun:
            if at_ts is None:
                # Most queries issue one statement (a get, one index range): run it on its own,
                # with no BEGIN and COMMIT round trips; a query that needs more runs again below.
                async with self.db.acquire() as conn:
                    run = await self.execute_query(conn, fn, kwargs, identity, single_statement=True)
                if not run.needs_snapshot:
                    run.outcome(None)  # raises its failure, or ConnectionLost to run it again
                    return run
            async with self.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot_ts = int(await conn.fetchval(sql.LATEST_TS)) if at_ts is not None else None
                run = await self.execute_query(conn, fn, kwargs, identity)
                if run.failure is None and at_ts is not None and snapshot_ts is not None:
                    await check_unchanged_since(conn, run.reads, at_ts, snapshot_ts)
            run.outcome(at_ts)
            return run

        run = await self.retry_transaction(attempt, str(fn.path), writes=False)
        if key is not None and begun is not None:
            cache.store(key, begun, run.value, run.log_lines, run.stream_lines, run.reads)
        return Outcome(run.value, run.log_lines, at_ts, key)

    # -- mutations and writing transactions ---------------------------------------------------

    async def execute_mutation(
        self, tx: Transaction, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None,
        *, running_job: str | None = None, parent: MutationScheduler | None = None, depth: int = 0,
        buffer: logs.LogBuffer | None = None,
    ) -> tuple[Any, list[str], MutationScheduler]:
        """Run a mutation inside the caller's writable transaction. Returns its value, log lines
        and scheduler (call `scheduler.committed()` once the transaction committed). Raises
        TransactionConflict on a conflict (even one the function swallowed), FunctionFailure
        when the function fails. `running_job`: the scheduled job this transaction runs;
        `parent`, `depth`: the scheduler and depth of the mutation that called this one;
        `buffer`: the execution's, across its attempts (`retried_mutation`)."""
        if buffer is None:
            buffer = self.log_buffer(fn, depth)
        buffer.begin()
        scheduler = parent.nested() if parent is not None else MutationScheduler(
            tx, self.app.registry, self.jobs_channel, self.metrics, running_job, self.config.scheduler.horizon_seconds)
        ctx = MutationCtx(DatabaseWriter(tx), Auth(identity), scheduler, self.inner_calls(tx, identity, depth, scheduler),
                          buffer, StorageWriter(tx, self.files), self.env_in(tx))
        try:
            value = await self.invoke(fn, ctx, kwargs, buffer, self.config.mutation_timeout)
        except Exception as exc:
            if tx.lost:
                raise ConnectionLost(f"{fn.path} lost its database connection; it will be run again") from exc
            if isinstance(exc, CONFLICTS) or tx.conflicted:
                raise TransactionConflict(f"{fn.path} conflicted; it will be retried") from exc
            raise self.failure(fn, exc, buffer) from exc
        if tx.lost:
            raise ConnectionLost(f"{fn.path} lost its database connection; it will be run again")
        if tx.conflicted:
            raise TransactionConflict(f"{fn.path} observed a conflict; it will be retried")
        return value, buffer.finish(), scheduler

    async def _run_mutation(
        self, fn: FunctionDef, args: Any, kwargs: dict[str, Any], identity: Identity | None,
        key: StoredCall | None, commit_ts: bool, before_commit: Callable[[], None] | None = None,
    ) -> Outcome:
        # Its way through the hot-key queues (hot_keys.py): who it is counts only once a key is hot.
        ticket = Ticket(lambda: _call_id(fn, args, identity))

        async def attempt(buffer: logs.LogBuffer) -> tuple[Outcome, MutationScheduler | None]:
            if self.group_commit is not None and (keys := self.hot_keys.queue_keys(ticket)):
                return await self._grouped(ticket, keys, fn, kwargs, identity, key, commit_ts, before_commit, buffer)
            async with self.hot_keys.turn(ticket), self.db.acquire() as conn:
                if key is not None:
                    done = await conn.fetchrow(sql.GET_MUTATION_RESULT, key.session_id, key.request_id, key.caller)
                    if done is not None:  # a resend of a mutation that already committed
                        key.check_resend(done["function"], done["args_hash"])
                        return Outcome(from_convex_json(done["value"][0]), list(done["log_lines"]), int(done["ts"])), None
                async with self.transaction(conn, "serializable") as tx:
                    ticket.watch(tx)
                    value, lines, scheduler = await self.execute_mutation(tx, fn, kwargs, identity, buffer=buffer)
                    if key is not None:
                        await tx.execute("execute", sql.PUT_MUTATION_RESULT, *astuple(key), [to_convex_json(value)], lines)
                    if before_commit is not None:
                        before_commit()  # COMMIT follows when the block ends
                # Committed: nothing from here on may fail the call (or run it again).
                self.hot_keys.done(ticket)  # the next in its queues may begin
                ts = tx.ts
                if ts is None and ((commit_ts and tx.writes) or key is not None):
                    ts = await self.committer.ts_after_commit(conn, bool(tx.writes))
            return Outcome(value, lines, ts), scheduler

        try:
            outcome, scheduler = await self.retried_mutation(fn, attempt, str(fn.path), ("ripple_mutation_retries_total",),
                                                             paced=lambda: ticket.queued)
        except FunctionFailure:
            self.metrics.inc("ripple_mutations_total", outcome="error")
            raise
        finally:
            self.hot_keys.done(ticket)  # a last conflict kept its locks for an attempt that never came
        if scheduler is not None:  # None: the stored result of an earlier run
            scheduler.committed()
            self.metrics.inc("ripple_mutations_total", outcome="success")
        return outcome

    async def _grouped(
        self, ticket: Ticket, keys: tuple[str, ...], fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None,
        key: StoredCall | None, commit_ts: bool, before_commit: Callable[[], None] | None, buffer: logs.LogBuffer,
    ) -> tuple[Outcome, MutationScheduler | None]:
        """One attempt of `_run_mutation` as a member of the group of its hot `keys`, committed
        with the others queued on them (group_commit.py). Its stored result, when it has one,
        is read in the group's transaction: a resend in the same group finds it too."""
        assert self.group_commit is not None

        async def body(tx: Transaction) -> Done:
            if key is not None:
                done = await tx.execute("fetchrow", sql.GET_STORED_RESULT, key.session_id, key.request_id, key.caller)
                if done is not None:  # a resend of a mutation that already ran
                    key.check_resend(done["function"], done["args_hash"])
                    return Done(from_convex_json(done["value"][0]), list(done["log_lines"]), None, True)
            recorded = tx.recorded
            value, lines, scheduler = await self.execute_mutation(tx, fn, kwargs, identity, buffer=buffer)
            if key is not None:
                await tx.execute("execute", sql.PUT_MUTATION_RESULT, *astuple(key), [to_convex_json(value)], lines)
            if before_commit is not None:
                before_commit()  # the group's COMMIT follows its last member
            return Done(value, lines, scheduler, key is not None or (commit_ts and tx.recorded > recorded))

        self.hot_keys.done(ticket)  # group members take no turn of their own: their group's leader does
        try:
            done, ts = await self.group_commit.run(keys, body)
        except CONFLICTS:
            ticket.keys = keys  # its next attempt joins the next group: no backoff sleep
            raise
        return Outcome(done.value, done.log_lines, ts if done.wants_ts else None), done.scheduler

    async def retried_mutation(self, fn: FunctionDef, attempt: Callable[[logs.LogBuffer], Awaitable[T]], what: str,
                               retries_metrics: tuple[str, ...], paced: Callable[[], bool] | None = None) -> T:
        """A top-level mutation (a client's, an action's or a scheduled one) run to its end:
        `attempt` is one transaction that runs it with `execute_mutation(..., buffer=)`, tried
        again by `retry_transaction`; TooManyConflicts comes out as the mutation's failure. Its
        one entry in the log stream has the lines of its last attempt and the time of all of
        them; a call that ran nothing (the stored result of a resent mutation, a job another
        worker claimed) has none. `paced`: see `retry_transaction`."""
        buffer = self.log_buffer(fn)
        ended: BaseException | None = None
        try:
            return await self.retry_transaction(lambda: attempt(buffer), what, retries_metrics=retries_metrics, paced=paced)
        except TooManyConflicts as exc:
            ended = self.failure(fn, exc, buffer)
            raise ended from None
        except BaseException as exc:
            ended = exc
            raise
        finally:
            if buffer.attempts:
                self.log_stream.record("mutation", str(fn.path), buffer, ended)

    async def retry_transaction(self, attempt: Callable[[], Awaitable[T]], what: str, *,
                                retries_metrics: tuple[str, ...] = (), writes: bool = True,
                                paced: Callable[[], bool] | None = None) -> T:
        """Run `attempt` (one whole transaction, or a query when not `writes`) until it neither
        loses a conflict (full-jitter backoff; TooManyConflicts after `max_mutation_attempts`)
        nor its database connection before COMMIT (reconnect backoff; DatabaseUnavailable after
        `database_retry_seconds`). An attempt raises a connection failure only before its COMMIT
        was sent: `transaction` resolves a COMMIT cut off in flight (commit.py). `paced()` true
        after a conflict: the next attempt waits its turn in a hot-key queue, no backoff sleep."""
        return await self.committer.retry(attempt, what, retries_metrics=retries_metrics, writes=writes, paced=paced)

    def transaction(self, conn: asyncpg.Connection, isolation: str) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """A writable transaction on `conn` (mutations, scheduler and system writes) that commits
        on leaving the block. The commit tail (which takes the global commit lock) and COMMIT
        travel in one message (sql.commit_with_tail), so PostgreSQL releases the lock without
        waiting for this process: a busy event loop here never holds up other writers. Rolled
        back if the block raises; a transaction that observed a conflict raises one; a lost
        connection raises ConnectionLost, or, during COMMIT, is resolved (commit.py)."""
        return self.committer.transaction(conn, self.catalog, isolation)

    async def system_transaction(
        self, body: Callable[[DatabaseWriter, Transaction], Awaitable[T]], *, isolation: str = "serializable",
    ) -> T:
        """Run `body` with a system writer (it may write system tables) in one transaction of its
        own, retried on conflicts like a mutation."""

        async def attempt() -> T:
            async with self.db.acquire() as conn, self.transaction(conn, isolation) as tx:
                return await body(DatabaseWriter(tx, system=True), tx)

        return await self.retry_transaction(attempt, "a system transaction")

    # -- environment variables (docs/env.md) -------------------------------------------------

    def env_in(self, tx: Transaction) -> Env:
        """ctx.env of a query or mutation: each read joins `tx`'s read set, so a live query
        re-runs when a variable it read changes. The values are this process's copy, not
        `tx`'s snapshot: a mutation's read is no serializable predicate."""
        return Env(self.env_values, lambda name: tx.reads.append(env_store.read_range(name)))

    async def refresh_env(self) -> dict[str, str]:
        """Read every variable (and the ts they are current at) from the database into this
        process's copy; returns them."""
        async with self.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            ts = int(await conn.fetchval(sql.LATEST_TS))
            return await self._read_env(conn, ts)

    async def commits_seen(self, conn: asyncpg.Connection, ts: int, commits: list[Any] | None) -> None:
        """The live-query tick read these change-log rows (None: too many to look at) in
        `conn`'s snapshot, whose latest commit is `ts`, and is about to re-run the queries they
        touched: if they changed variables, this process's copy moves to the snapshot first,
        so the queries that read a variable see its new value."""
        if commits is None or env_store.touched(commits):
            await self._read_env(conn, ts)

    async def _read_env(self, conn: asyncpg.Connection, ts: int) -> dict[str, str]:
        values = await env_store.load(DatabaseReader(Transaction(conn, self.catalog, writable=False), system=True))
        self.env_values.replace(values, ts)
        return values

    async def update_env(self, changes: list[Change]) -> None:
        """An admin's batch of changes, all or nothing (EnvVarError names what was refused);
        this process sees it at once, the others when their live-query tick reads the commit."""
        await self.system_transaction(lambda db, tx: env_store.apply(db, changes))
        await self.refresh_env()

    # -- identity -----------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Identity:
        """The identity a client's token proves (a JWT from a provider of functions/auth_config.py);
        AuthFailed, with a reason safe to show the client, when it proves none (server/core/auth/)."""
        return await self.verifier.verify(token)

    # -- actions ------------------------------------------------------------------------------

    def action_context(self, identity: Identity | None, buffer: logs.LogBuffer) -> ActionCtx:
        """The ctx of an action, or of an HTTP action, run for `identity`."""
        scheduler = ActionScheduler(self.app.registry, self.jobs_channel, self.metrics, self.system_transaction,
                                    self.config.scheduler.horizon_seconds)
        return ActionCtx(self._nested_call, identity, buffer, scheduler, StorageActionWriter(self.files, lambda: self.catalog),
                         Env(self.env_values), self.vector_search)

    async def vector_search(self, table: Any, index: Any, vector: Any, limit: Any = None,
                            filter_fn: Any = None) -> list[dict[str, Any]]:
        """An action's ctx.vector_search, in a read-only snapshot of its own (search/vector_query.py)."""
        search = vector_query.prepare(self.catalog, table, index, vector, limit, filter_fn)
        snapshot = await self.db.snapshot()
        try:
            results, path = await vector_query.run(
                snapshot.conn, search, self.config.vector_search == "exact", self.config.vector_ef_search)
        finally:
            await snapshot.close()
        self.metrics.inc("ripple_vector_searches_total", path=path)
        return results

    async def _run_action(self, fn: FunctionDef, kwargs: dict[str, Any], identity: Identity | None) -> Outcome:
        """An action's run; its end is its entry in the log stream."""
        buffer = self.log_buffer(fn)
        ctx = self.action_context(identity, buffer)
        try:
            value = await self.invoke(fn, ctx, kwargs, buffer, self.config.action_timeout)
        except Exception as exc:
            self.metrics.inc("ripple_actions_total", outcome="error")
            failure = self.failure(fn, exc, buffer)
            self.log_stream.record("action", str(fn.path), buffer)
            raise failure from exc
        except BaseException as exc:  # cancelled: the client left, the server stops
            self.log_stream.record("action", str(fn.path), buffer, exc)
            raise
        self.metrics.inc("ripple_actions_total", outcome="success")
        self.log_stream.record("action", str(fn.path), buffer)
        return Outcome(value, buffer.finish())
