"""A writing transaction from BEGIN to COMMIT, what a lost database connection means for it, and
the one retry policy (Runtime.transaction and Runtime.retry_transaction delegate here).

`transaction` runs one writable transaction on a pooled connection: BEGIN, the caller's
statements, then the commit tail and COMMIT in one message (sql.commit_with_tail), which also
logs a marker, a random 63-bit number, with the transaction's change-log row.

When the connection fails (database.connection_failure):

* before COMMIT was sent, nothing committed: ConnectionLost, and `retry` runs the whole
  transaction again on a fresh connection;
* while COMMIT was in flight, PostgreSQL may have committed and its answer been lost. `_resolve`
  finds out. It ends the backend that ran the transaction (pg_terminate_backend, by pid and
  start) and waits until it is gone, so that the transaction is over for good (a COMMIT still
  on its way can no longer land), then looks the marker up. Found: it committed, and the block
  ends as if COMMIT had answered (with the commit's ts in `tx.ts`). Not found: ConnectionLost,
  retried. A transaction that wrote no documents logs no marker and has nothing to find: it is
  run again (harmless without writes; a keyed mutation's retry finds its stored result). While
  the database stays unreachable, resolving is retried for `database_retry_seconds`, then
  given up: OutcomeUnknown, which callers report as such, never as a failure.

`retry` retries conflicts (full-jitter backoff, up to `max_mutation_attempts` attempts) and lost
connections (reconnect backoff, for up to `database_retry_seconds` from the first loss; then
DatabaseUnavailable: nothing committed). `ts_after_commit` reads a committed mutation's ts
without ever failing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import orjson

from server.config import Config
from server.core import sql
from server.core.backoff import conflict_retry_delays, reconnect_delays
from server.core.database import Backend, Catalog, Database, connection_failure, discard, rollback
from server.core.metrics import Metrics
from server.core.transaction import CONFLICTS, Transaction
from server.errors import (
    ConnectionLost,
    DatabaseUnavailable,
    RippleError,
    TooManyConflicts,
    TransactionConflict,
)

log = logging.getLogger("ripple.database")

T = TypeVar("T")
END_BACKEND_WAIT_MS = 1000  # per try; the resolution keeps trying until its budget runs out


class OutcomeUnknown(RippleError):
    """Internal: COMMIT was in flight when the connection was lost, and whether it committed
    could not be established before the budget ran out."""


def described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def reconnects() -> Iterator[float]:
    """Waits between tries after a lost connection: the first after 5-10 ms (another pooled
    connection is most likely fine), doubling to 1 s."""
    return reconnect_delays(first=0.01, cap=1.0)


class Committer:
    def __init__(self, db: Database, metrics: Metrics, config: Config) -> None:
        self.db = db
        self.metrics = metrics
        self.config = config

    @contextlib.asynccontextmanager
    async def transaction(self, conn: asyncpg.Connection, catalog: Catalog, isolation: str) -> AsyncIterator[Transaction]:
        backend = self.db.backend_of(conn)
        try:
            await conn.execute(sql.BEGIN[isolation])
        except BaseException as exc:
            discard(conn)  # cancelled, BEGIN may have run: a connection never goes back in a transaction
            if connection_failure(exc):
                raise ConnectionLost(f"the database connection was lost at BEGIN ({described(exc)})") from exc
            raise
        tx = Transaction(conn, catalog, writable=True)
        try:
            yield tx
            if not (tx.lost or tx.conflicted):
                await tx.before_commit()  # deferred writes (Transaction.defer)
            if tx.unfinished is not None:
                raise RuntimeError("a deferred write of this transaction failed") from tx.unfinished
            if tx.lost:
                raise ConnectionLost("the database connection was lost during the transaction")
            if tx.conflicted:
                raise TransactionConflict("conflict observed in the transaction")
        except Exception as exc:
            if tx.lost or connection_failure(exc):
                discard(conn)
            else:
                await rollback(conn)
            raise
        except BaseException:  # cancelled (the caller is gone): a statement may still be running
            discard(conn)
            raise
        await self._commit(conn, tx, backend)
        for hook in tx.after_commit:
            try:
                hook()
            except Exception:  # committed: nothing may fail the block now
                log.exception("an after-commit hook failed")

    async def _commit(self, conn: asyncpg.Connection, tx: Transaction, backend: Backend | None) -> None:
        marker = None
        try:
            if tx.writes:
                marker = secrets.randbits(63)
                writes = orjson.dumps([w.to_json() for w in tx.writes.values()]).decode()
                await conn.execute(sql.commit_with_tail(writes, self.db.commit_lock, self.db.channel, marker))
            else:
                await conn.execute(sql.COMMIT)
        except Exception as exc:
            if not connection_failure(exc):  # PostgreSQL answered: it did not commit
                await rollback(conn)
                raise
            discard(conn)
            tx.ts = await self._resolve(backend, marker, exc)
        except BaseException:  # cancelled while COMMIT was in flight: the caller is gone
            discard(conn)
            raise

    async def _resolve(self, backend: Backend | None, marker: int | None, cause: Exception) -> int:
        """COMMIT was sent and its answer never came: the commit's ts if it committed; else
        ConnectionLost (run it again), or OutcomeUnknown."""
        deadline = time.monotonic() + self.config.database_retry_seconds
        delays = reconnects()
        while True:
            try:
                over, ts = await self._look(backend, marker)
            except Exception as exc:
                if not connection_failure(exc):
                    log.exception("resolving an interrupted COMMIT failed")
                over, ts = False, None
            if ts is not None or over or time.monotonic() > deadline:
                break
            await asyncio.sleep(next(delays))
        lost = f"the database connection was lost while COMMIT was in flight ({described(cause)})"
        if ts is not None:
            self.metrics.inc("ripple_commit_resolutions_total", outcome="committed")
            log.warning("%s; it committed (ts %d)", lost, ts)
            return ts
        if not over:
            self.metrics.inc("ripple_commit_resolutions_total", outcome="unknown")
            log.error("%s; the database stayed unreachable, whether it committed is unknown", lost)
            raise OutcomeUnknown(lost) from cause
        outcome = "not_committed" if marker is not None else "no_writes"
        self.metrics.inc("ripple_commit_resolutions_total", outcome=outcome)
        log.warning("%s; %s: running it again", lost, "it did not commit" if marker else "it wrote no documents")
        raise ConnectionLost(f"{lost}; it did not commit") from cause

    async def _look(self, backend: Backend | None, marker: int | None) -> tuple[bool, int | None]:
        """(the backend is gone, the ts of the marker's commit). A found marker proves a commit;
        its absence means something only once the backend is gone."""
        async with self.db.acquire() as conn:
            over = False
            if backend is not None:
                ended = await conn.fetch(sql.END_BACKEND, backend.pid, backend.started, END_BACKEND_WAIT_MS)
                over = not ended or bool(ended[0][0])
            ts = None if marker is None else await conn.fetchval(sql.COMMITTED_WITH_MARKER, marker)
        return over, ts

    async def ts_after_commit(self, conn: asyncpg.Connection, wrote: bool) -> int | None:
        """A ts covering a committed mutation: its own (currval of the ts sequence on its
        connection) or, when it wrote nothing, the latest. Costs a round trip, so only callers
        that report a ts (the sync protocol's MutationResponse) ask. The mutation has committed:
        whatever fails now must not report it failed (or run it again). If its connection fails,
        the latest ts read on another one covers it too; if that fails too, None (the sync
        protocol then answers with the latest ts its live queries reached)."""
        try:
            return int(await conn.fetchval(sql.LAST_COMMIT_TS if wrote else sql.LATEST_TS))
        except Exception as exc:
            log.warning("reading a commit ts failed (%s); using the latest ts instead", described(exc))
        try:
            async with self.db.acquire() as other:
                return int(await other.fetchval(sql.LATEST_TS))
        except Exception as exc:
            log.warning("reading the latest ts failed too (%s); answering without one", described(exc))
            return None

    async def retry(self, attempt: Callable[[], Awaitable[T]], what: str, *, retries_metrics: tuple[str, ...] = (),
                    writes: bool = True, paced: Callable[[], bool] | None = None) -> T:
        """Run `attempt` (one whole transaction, or a query) until it neither loses a conflict
        nor its connection; TooManyConflicts after `max_mutation_attempts` conflicts,
        DatabaseUnavailable once the database was unreachable for `database_retry_seconds`.
        After a conflict, `paced()` true means the next attempt waits its turn in a hot-key
        queue (hot_keys.py), which paces it better than a blind sleep: it runs at once."""
        conflicts = conflict_retry_delays()
        waits: Iterator[float] | None = None
        lost_since = 0.0
        conflicted = 0
        while True:
            try:
                return await attempt()
            except CONFLICTS:
                conflicted += 1
                if conflicted >= self.config.max_mutation_attempts:
                    raise TooManyConflicts(f"{what} kept conflicting with concurrent writes ({conflicted} attempts)") from None
                for name in retries_metrics:
                    self.metrics.inc(name)
                if paced is None or not paced():
                    await asyncio.sleep(next(conflicts))
            except OutcomeUnknown as exc:
                budget = self.config.database_retry_seconds
                raise DatabaseUnavailable(
                    f"{what}: the database connection was lost while it was committing and the database could not "
                    f"be reached for {budget:g} s to find out whether it did; whether it committed is unknown",
                    committed=None) from exc
            except Exception as exc:
                if not connection_failure(exc):
                    raise
                now = time.monotonic()
                if waits is None:
                    waits, lost_since = reconnects(), now
                budget = self.config.database_retry_seconds
                if now - lost_since >= budget:
                    log.error("%s gave up: the database was unreachable for %g s (%s)", what, budget, described(exc))
                    raise DatabaseUnavailable(
                        f"{what} did not commit: the database could not be reached for {budget:g} s; "
                        "nothing was written and it can be sent again" if writes else
                        f"{what} could not run: the database could not be reached for {budget:g} s",
                        committed=False) from exc
                self.metrics.inc("ripple_connection_retries_total")
                log.warning("%s lost its database connection (%s); running it again", what, described(exc))
                await asyncio.sleep(next(waits))


COMMIT_LOG_RETENTION_S = 3600.0  # live queries further behind re-run everything
MUTATION_RESULT_RETENTION_S = 86_400.0  # a client resending a mutation later than this runs it again


async def prune_commit_records(db: Database) -> None:
    """Delete change-log rows and stored mutation results past their retention."""
    cutoff_ns = int((time.time() - COMMIT_LOG_RETENTION_S) * 1e9)
    async with db.acquire() as conn:
        await conn.execute(sql.PRUNE_COMMITS, cutoff_ns)
        await conn.execute(sql.PRUNE_MUTATION_RESULTS, MUTATION_RESULT_RETENTION_S)
