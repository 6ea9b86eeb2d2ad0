"""One function execution's view of the database: a PostgreSQL transaction plus what it read
and wrote.

Every read records the index key range it covered (the read set) and every write records the
old and new index keys of the document it touched (the write set); the reactivity layer compares
the two. Ranges are half-open byte ranges [lo, hi) over the keys of `server.core.keys`.

A query or mutation may call another one in its transaction (ctx.run_query / ctx.run_mutation):
`nested_call` makes the called function's statements the only ones issued until it returns, so
that a nested mutation's savepoint holds its own writes and nothing of its caller's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from server.core import sql
from server.core.database import Catalog, connection_failure
from server.errors import ConnectionLost, LimitExceeded, TransactionConflict

# Convex's limits on one transaction (get-convex/convex-backend crates/common/src/knobs.rs:
# TRANSACTION_MAX_READ_SIZE_ROWS, _READ_SIZE_BYTES, _NUM_USER_WRITES, _USER_WRITE_SIZE_BYTES).
MAX_DOCS_READ = 32_000
MAX_BYTES_READ = 1 << 24
MAX_DOCS_WRITTEN = 16_000
ROWS_SEEN = 64  # rows a writable transaction keeps for its own writes (rows_seen)
MAX_BYTES_WRITTEN = 1 << 24
# What PostgreSQL tells apart as "this transaction lost a conflict; run it again". A unique
# violation can only come from two runs of one idempotent mutation racing (ids are random):
# retrying finds the stored result of the winner.
CONFLICTS: tuple[type[BaseException], ...] = (
    TransactionConflict, asyncpg.SerializationError, asyncpg.DeadlockDetectedError, asyncpg.UniqueViolationError,
)


Sender = Callable[..., Awaitable[Any]]  # Transaction._send: (method, query, *args) -> its result


@dataclass(frozen=True, slots=True)
class ReadRange:
    table: str
    index: str
    lo: bytes
    hi: bytes  # exclusive


# A document's keys in each index of its table: one key per index, or several (a search index
# holds a document under each of its terms).
WriteKeys = dict[str, bytes | list[bytes]]


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@dataclass
class Write:
    table: str
    id: str
    old_keys: WriteKeys | None  # None: the document did not exist
    new_keys: WriteKeys | None  # None: the document was deleted

    def to_json(self) -> dict[str, Any]:
        def enc(k: WriteKeys | None) -> dict[str, str | list[str]] | None:
            if k is None:
                return None
            return {n: _b64(v) if isinstance(v, bytes) else [_b64(x) for x in v] for n, v in k.items()}

        return {"table": self.table, "id": self.id, "old": enc(self.old_keys), "new": enc(self.new_keys)}


class NeedsSnapshot(BaseException):
    """A query run with a one-statement budget wants a second statement: run it again in a
    snapshot transaction. A BaseException, so that `except Exception` in function code does not
    swallow it (and Transaction.needs_snapshot is set anyway)."""


class _Call:
    """A nested call open on a transaction; `done` once it returned."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = asyncio.Event()


# The nested call whose code runs in this context (None: the transaction's own function); the
# tasks a function starts inherit it.
_running: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("ripple_nested_call", default=None)


@dataclass
class Transaction:
    """One function execution's view of the database."""

    conn: asyncpg.Connection
    catalog: Catalog
    writable: bool
    reads: list[ReadRange] = field(default_factory=list)
    writes: dict[str, Write] = field(default_factory=dict)
    docs_read: int = 0
    bytes_read: int = 0
    docs_written: int = 0  # writes, as Convex counts them: a document written twice counts twice
    recorded: int = 0  # record_write calls, never reset (a group member's own writes: group_commit.py)
    bytes_written: int = 0
    # An import (server/core/snapshot.py) writes a whole snapshot in one transaction, and a
    # --replace reads (to delete) every document of a table: no read or write limit.
    unlimited: bool = False
    conflicted: bool = False
    lost: bool = False  # the connection failed: nothing of this transaction can commit any more
    ts: int | None = None  # the commit's ts, when committing found it (commit.py)
    # Reactive pagination (Convex "journal"): a re-run of a subscribed query ends its first
    # paginate() at the cursor the previous run ended at, so pages never gap or overlap.
    journal_in: str | None = None
    journal_out: str | None = None
    paginated: bool = False
    _last_creation_time: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A query first runs on a connection outside any transaction, allowed one statement (which
    # is its own consistent snapshot). A second statement aborts that run (NeedsSnapshot) and
    # the caller runs the query again in a snapshot transaction. None: no limit.
    statement_budget: int | None = None
    needs_snapshot: bool = False
    # Run once the transaction committed, never if it did not (Committer.transaction): work
    # outside the database that must follow a commit, such as removing a deleted file's bytes.
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # Rows of user tables a writable transaction read (by id or through an index) and has not
    # written since, by id, as PostgreSQL returned them: (creation_time, stored fields). A
    # patch, replace or delete of a document the function just read needs no second SELECT
    # (documents.py). At most ROWS_SEEN; emptied when a savepoint rolls back.
    rows_seen: dict[str, tuple[float, Any]] = field(default_factory=dict)
    _calls: list[_Call] = field(default_factory=list)  # open nested calls, innermost last
    _savepoints: int = 0  # open savepoint blocks
    _unsent: list[str] = field(default_factory=list)  # savepoint statements for the next message (savepoint())
    _deferred: list[Callable[[Sender], Awaitable[None]]] = field(default_factory=list)  # defer()
    _flushes: int = 0  # how many times what waited for the next statement was sent (_catch_up)
    unfinished: Exception | None = None  # a deferred write failed: the transaction must not commit

    async def execute(self, method: str, query: str, *args: Any) -> Any:
        if self._calls:
            await self._turn()
        if self.statement_budget is not None:
            if self.statement_budget <= 0:
                self.needs_snapshot = True  # noticed even if function code swallows the exception
                raise NeedsSnapshot()
            self.statement_budget -= 1
        async with self._lock:  # one statement at a time, even under asyncio.gather
            if self._deferred or self._unsent:
                await self._catch_up()
            return await self._send(method, query, *args)

    async def _send(self, method: str, query: str, *args: Any) -> Any:
        try:
            return await getattr(self.conn, method)(query, *args)
        except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
            self.conflicted = True
            raise TransactionConflict("transaction conflict; it will be retried") from exc
        except asyncpg.InFailedSQLTransactionError as exc:
            self.conflicted = True
            raise TransactionConflict("transaction aborted earlier") from exc
        except Exception as exc:
            if not connection_failure(exc):
                raise
            self.lost = True  # noticed even if function code swallows the exception
            raise ConnectionLost("the database connection was lost; the transaction will be run again") from exc

    async def _catch_up(self) -> None:
        """Send what waits for the next statement, in order: deferred writes (`defer`), then the
        savepoint statements not sent yet, these in one message. A deferred write that fails
        for any reason but a conflict or a lost connection (which end the transaction anyway)
        leaves it unable to commit (`unfinished`): the write is part of what it promised."""
        self._flushes += 1
        while self._deferred:
            try:
                await self._deferred.pop(0)(self._send)
            except Exception as exc:
                self.unfinished = exc
                raise
        if self._unsent:
            text = "; ".join(self._unsent)
            self._unsent.clear()
            await self._send("execute", text)

    def defer(self, write: Callable[[Sender], Awaitable[None]]) -> None:
        """Run `write(send)` just before the next statement of this transaction, or before it
        commits (`before_commit`), whichever comes first; `send(method, query, *args)` issues
        a statement. For writes that may wait and travel together (a scheduler batch marks
        its jobs done in one statement, scheduler/batch.py); statements issued after they
        were deferred still see them, as if they had been written at once."""
        self._deferred.append(write)

    async def before_commit(self) -> None:
        """Send the deferred writes; savepoint statements not sent yet are dropped (nothing
        can roll back to a savepoint any more)."""
        async with self._lock:
            self._unsent.clear()
            await self._catch_up()

    async def _turn(self) -> None:
        """Wait while a nested call other than the one running here is the innermost open one:
        its caller's other tasks (`asyncio.gather(ctx.run_mutation(a), ctx.db.insert(...))`)
        issue their statements once it returned, as its sibling calls do."""
        mine = _running.get()
        while self._calls and self._calls[-1] is not mine:
            await self._calls[-1].done.wait()

    @contextlib.asynccontextmanager
    async def nested_call(self) -> AsyncIterator[None]:
        """A query or mutation called inside this transaction: until the block ends only its
        code (and the tasks it starts) issues statements, and a reactive paginate() in it uses
        a journal of its own (the caller's is kept for the caller). Its reads join the read set."""
        await self._turn()
        call = _Call()
        self._calls.append(call)
        token = _running.set(call)
        journal = self.journal_in, self.journal_out, self.paginated
        self.journal_in, self.journal_out, self.paginated = None, None, False
        try:
            yield
        finally:
            self.journal_in, self.journal_out, self.paginated = journal
            _running.reset(token)
            self._calls.remove(call)
            call.done.set()

    @contextlib.asynccontextmanager
    async def savepoint(self, *, release: bool = False) -> AsyncIterator[None]:
        """Writes in the block are undone, in PostgreSQL and in the write set (and its
        after-commit hooks dropped), if it raises
        (a conflict excepted: that aborts the whole transaction). Reads stay in the read set:
        what the block read decided what the caller saw, its failure included. Blocks nest.
        `release`: end the savepoint after the block (else what follows still runs inside it),
        for a caller that opens many in turn (a scheduler batch: no nesting one per job).

        SAVEPOINT and RELEASE are not sent on their own: they wait (`_unsent`) and travel in
        one message just before the next statement. A block that issues no statement costs no
        round trip (nothing to undo in PostgreSQL if it raises), and a batch's RELEASE of one
        job and SAVEPOINT of the next are one round trip. ROLLBACK TO is sent at once."""
        saved = dict(self.writes)  # record_write replaces entries, never changes them
        hooks = len(self.after_commit)
        level, flushes, deferred = self._savepoints, self._flushes, len(self._deferred)
        self._unsent.append(sql.savepoint(level))
        start = len(self._unsent) - 1
        self._savepoints += 1
        try:
            yield
        except Exception:
            if not (self.conflicted or self.lost):
                self.writes = saved
                # A row read inside the block may be one it wrote; and a read under way in
                # another task (asyncio.gather) may note its row until the rollback is sent.
                self.rows_seen.clear()
                del self.after_commit[hooks:]
                del self._deferred[deferred if flushes == self._flushes else 0:]
                if flushes == self._flushes:
                    del self._unsent[start:]  # never sent: PostgreSQL has nothing to undo
                else:
                    self._unsent.clear()  # deeper savepoints' statements: the rollback undoes them
                    await self.execute("execute", sql.rollback_to_savepoint(level))
                    self.rows_seen.clear()
                    if release:
                        self._unsent.append(sql.release_savepoint(level))
            raise
        else:
            if flushes == self._flushes:
                # The block sent nothing: its savepoint (and any deeper) need never exist;
                # nothing rolls back to one whose block ended (a later block opens its own).
                del self._unsent[start:]
            elif release:
                self._unsent.append(sql.release_savepoint(level))
        finally:
            self._savepoints = level

    def next_execution(self) -> None:
        """Another top-level function runs next in this transaction (a scheduler batch,
        scheduler/batch.py): Convex's read and write limits are per execution, so the counts
        start again; so does reactive pagination's journal."""
        self.docs_read = self.bytes_read = self.docs_written = self.bytes_written = 0
        self.journal_in = self.journal_out = None
        self.paginated = False

    def count_read(self, n: int, nbytes: int = 0) -> None:
        """`n` documents of `nbytes` in all read; past a limit, this and every later read fails."""
        self.docs_read += n
        self.bytes_read += nbytes
        if self.unlimited:
            return
        if self.docs_read > MAX_DOCS_READ:
            raise LimitExceeded(
                f"too many documents read in one function: {self.docs_read}, over the limit of "
                f"{MAX_DOCS_READ}; use an index range or paginate"
            )
        if self.bytes_read > MAX_BYTES_READ:
            raise LimitExceeded(
                f"too many bytes read in one function: {self.bytes_read}, over the limit of "
                f"{MAX_BYTES_READ} (16 MiB); use an index range or paginate"
            )

    def count_write(self, nbytes: int) -> None:
        """Before a write of a document of `nbytes` (0: a delete) to a user table; past a limit,
        this and every later write fails, so nothing of it reaches PostgreSQL."""
        self.docs_written += 1
        self.bytes_written += nbytes
        if self.unlimited:
            return
        if self.docs_written > MAX_DOCS_WRITTEN:
            raise LimitExceeded(
                f"too many writes in one mutation: {self.docs_written}, over the limit of {MAX_DOCS_WRITTEN}"
            )
        if self.bytes_written > MAX_BYTES_WRITTEN:
            raise LimitExceeded(
                f"too many bytes written in one mutation: {self.bytes_written}, over the limit of "
                f"{MAX_BYTES_WRITTEN} (16 MiB)"
            )

    def saw_row(self, table: str, doc_id: str, creation_time: float, doc: Any) -> None:
        """A row of `table` as a statement of this transaction just returned it (rows_seen)."""
        if self.writable and len(self.rows_seen) < ROWS_SEEN and not table.startswith("_"):
            self.rows_seen[doc_id] = (creation_time, doc)

    def record_write(self, table: str, doc_id: str, old: WriteKeys | None, new: WriteKeys | None) -> None:
        """Add a document's index keys before and after to the write set; a document written
        twice keeps the keys it had before the transaction as its old ones."""
        prior = self.writes.get(doc_id)
        self.recorded += 1
        self.rows_seen.pop(doc_id, None)
        # A new entry, never a change to one: savepoint() keeps a shallow copy of the write set.
        self.writes[doc_id] = Write(table, doc_id, old if prior is None else prior.old_keys, new)

    def next_creation_time(self) -> float:
        now = time.time() * 1000.0
        if now <= self._last_creation_time:
            now = self._last_creation_time + 0.001
        self._last_creation_time = now
        return now
