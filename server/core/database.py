"""The PostgreSQL side: connection pool, bootstrap, and applying `schema.py` to tables and indexes.

Also what a failed connection is (`connection_failure`) and what becomes of one: a pooled
connection whose use failed that way is closed (`discard`), never handed out again, and giving a
connection back never raises over the outcome of the work done on it (`Database.acquire`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import asyncpg
import orjson

from server.core import sql
from server.core.schema import Table
from server.core.search.derived import DerivedIndex
from server.core.values import from_convex_json
from server.errors import (
    ConnectionLost,
    RippleUsageError,
    SchemaError,
)

log = logging.getLogger("ripple.database")

BACKFILL_BATCH = 1000  # rows read and key columns written per round trip when an index changes


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary"
    )


async def reset_connection(conn: asyncpg.Connection) -> None:
    """Before a connection goes back to the pool. asyncpg's default reset costs a round trip on
    every release (unlock advisory locks, UNLISTEN, RESET ALL); pooled connections here take only
    transaction-scoped locks, never LISTEN and never SET, so ending a stray transaction is all
    there is to undo."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# The connection itself failed, rather than a statement: the socket (OSError), the server
# ending the backend (class 08, and the FATAL ones of class 57: pg_terminate_backend, shutdown,
# idle timeouts; too many connections), or asyncpg losing track of the protocol (InterfaceError:
# "connection is closed", "released back to the pool"; InternalClientError: "cannot switch to
# state N; another operation (2) is in progress", which a pooled connection raises when its
# backend was ended while it sat idle: asyncpg takes PostgreSQL's FATAL message for a protocol
# error and the connection looks open until the end of the socket is read, MagicStack/asyncpg
# #784, #1069). Whatever was in flight may or may not have reached PostgreSQL. InterfaceErrors
# that are also ValueErrors (a value that cannot be encoded, a bad setting) are the caller's.
_CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    OSError, ConnectionLost, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError,
    asyncpg.IdleSessionTimeoutError, asyncpg.IdleInTransactionSessionTimeoutError, asyncpg.TooManyConnectionsError,
)


def connection_failure(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_FAILURES) and not isinstance(exc, ValueError)


def spoils(exc: BaseException) -> bool:
    """Does a block of work that ended with `exc` leave its connection unfit for reuse? A lost
    connection, or a cancelled block: asyncpg would wait for PostgreSQL to acknowledge the
    cancelled statement, but the cancel request travels on a connection of its own and can still
    land on the next statement, someone else's."""
    return connection_failure(exc) or isinstance(exc, asyncio.CancelledError)


def usable(conn: asyncpg.Connection) -> bool:
    """Still open and still ours (asyncpg detaches a pooled connection it lost from its holder)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def discard(conn: asyncpg.Connection) -> None:
    """Close a connection that failed, at once: its pool slot opens a new one, it is never
    reused. A pooled connection asyncpg already let go of needs nothing more."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


async def rollback(conn: asyncpg.Connection) -> None:
    """Leave a failed transaction; a connection that cannot (lost, released, broken, or the
    rollback was cancelled) is discarded. Never raises (a cancellation aside): the error that
    made the caller roll back is the one to report."""
    try:
        if conn.is_closed() or not conn.is_in_transaction():
            return
        await conn.execute(sql.ROLLBACK)
    except Exception:
        discard(conn)
    except BaseException:
        discard(conn)
        raise


@dataclass(frozen=True)
class Backend:
    """The PostgreSQL process serving a connection: its pid and start time (a pid alone can
    belong to another process later)."""

    pid: int
    started: datetime.datetime


class _Lease:
    """`async with db.acquire() as conn`: a pooled connection for the block (see Database.acquire);
    one the block's end `spoils` is discarded."""

    __slots__ = ("conn", "db")

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: Any = None

    async def __aenter__(self) -> Any:
        self.conn = await self.db.checkout()
        return self.conn

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and spoils(exc):
            discard(self.conn)
        await self.db.checkin(self.conn)


class Snapshot:
    """A read-only REPEATABLE READ snapshot on a pooled connection (Database.snapshot). `close`
    it exactly once to give the connection back. Unlike `async with acquire()` it may be handed
    to a task that outlives its opener: the live-query tick hands it to a run that overran its
    slice. A connection that failed, or whose use was cancelled, is discarded, not reused."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.conn: Any = None
        self.handed_over = False  # to a run finishing apart, which closes it (not its opener)

    async def open(self, imported: str | None = None, timeout: float | None = None) -> Snapshot:
        """`imported`: a snapshot id another transaction exported (it must still be open);
        `timeout`: how long to wait for a pooled connection (TimeoutError)."""
        self.conn = await self._db.checkout(timeout)
        try:
            await self.conn.execute(sql.BEGIN["snapshot"] if imported is None else sql.begin_imported_snapshot(imported))
        except BaseException as exc:
            if spoils(exc) or not isinstance(exc, Exception):
                discard(self.conn)
            await self._db.checkin(self.conn)
            raise
        return self

    async def close(self) -> None:
        try:
            await rollback(self.conn)  # read-only: nothing to commit; a broken one is discarded
        finally:
            await self._db.checkin(self.conn)


@dataclass
class TableInfo:
    number: int
    table: Table
    sql: sql.TableSql
    index_fields: dict[str, list[str]]
    derived: list[DerivedIndex] = field(default_factory=list)  # search and vector indexes

    @property
    def name(self) -> str:
        return self.table.name


class Catalog:
    """What the runtime knows about tables: numbers (ids embed them), indexes, statements."""

    def __init__(self, tables: list[TableInfo]) -> None:
        self.by_name = {t.name: t for t in tables}
        self.by_number = {t.number: t for t in tables}
        self.names = {t.number: t.name for t in tables}  # for `Id[...]` validation
        self.batched = {one: many for t in tables for one, many in t.sql.batched.items()}  # batched_reads.py

    def table(self, name: str) -> TableInfo:
        info = self.by_name.get(name)
        if info is None:
            raise RippleUsageError(
                f"table {name!r} is not in the schema (known tables: {', '.join(sorted(self.by_name)) or 'none'})"
            )
        return info


def decode_doc(doc_id: str, creation_time: float, fields: Any) -> dict[str, Any]:
    """A stored document as functions see it: fields in Convex's order (sorted, the system
    fields among them: `_creationTime` and `_id` come after names starting with a capital)."""
    user = from_convex_json(fields)  # sorted
    if not user or next(iter(user)) > "_":
        out: dict[str, Any] = {"_creationTime": creation_time, "_id": doc_id}
        out.update(user)
        return out
    return dict(sorted({**user, "_creationTime": creation_time, "_id": doc_id}.items()))


class Database:
    """A pool of connections to one PostgreSQL schema (namespace) holding one Ripple deployment."""

    def __init__(self, url: str, namespace: str = "ripple") -> None:
        if not sql.IDENT_RE.match(namespace):
            raise SchemaError(f"database schema name {namespace!r} is invalid")
        self.url = url
        self.namespace = namespace
        self.commit_lock = sql.lock_key(namespace, "commit")
        self.schema_lock = sql.lock_key(namespace, "schema")
        self.channel = sql.notify_channel(namespace)
        # pg_catalog stays implicit, so PostgreSQL searches it first: Ripple's own SQL always
        # means the built-in types (`text`, `bytea`, ...) even when a user table is named like
        # one. User tables cannot be named like catalogs: schema.py refuses the `pg_` prefix.
        self.search_path = sql.quote_ident(namespace)
        self.pool: asyncpg.Pool | None = None
        self._backends: dict[int, datetime.datetime] = {}  # pid -> start, of this pool's connections

    async def connect(self, min_size: int = 2, max_size: int = 20) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(sql.CREATE_SCHEMA.format(schema=sql.quote_ident(self.namespace)))
        except asyncpg.UniqueViolationError:
            pass  # another process created it at the same moment
        finally:
            await conn.close()
        self.pool = await asyncpg.create_pool(
            self.url,
            min_size=min_size,
            max_size=max_size,
            init=self._init_connection,
            reset=reset_connection,
            server_settings={"search_path": self.search_path, "application_name": f"ripple {self.namespace}"[:63]},
        )

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        pid, started = conn.get_server_pid(), await conn.fetchval(sql.BACKEND_START)
        self._backends[pid] = started

        def forget(_: Any) -> None:
            if self._backends.get(pid) == started:
                del self._backends[pid]

        conn.add_termination_listener(forget)

    def backend_of(self, conn: asyncpg.Connection) -> Backend | None:
        """Which PostgreSQL process serves a pooled connection (no I/O)."""
        pid = conn.get_server_pid()
        started = self._backends.get(pid)
        return None if started is None else Backend(pid, started)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def acquire(self) -> _Lease:
        """`async with db.acquire() as conn`. A block that raises a connection failure (or is
        cancelled) closes the connection instead of giving it back; a failure to give it back
        (the pool's reset) is logged and never raised over the block's own outcome: after a
        commit, say."""
        return _Lease(self)

    async def checkout(self, timeout: float | None = None) -> Any:
        """A pooled connection to hold across several blocks; give it back with `checkin`."""
        assert self.pool is not None, "Database.connect() was not called"
        return await self.pool.acquire(timeout=timeout)

    def spare(self) -> int:
        """Connections the pool could hand out now without waiting: idle ones and room to open more."""
        assert self.pool is not None, "Database.connect() was not called"
        return int(self.pool.get_idle_size() + self.pool.get_max_size() - self.pool.get_size())

    async def checkin(self, conn: Any) -> None:
        assert self.pool is not None, "Database.connect() was not called"
        try:
            await self.pool.release(conn)
        except Exception as exc:  # the pool closed the connection: nothing else to do
            log.warning("a connection could not be reset for reuse and was closed (%s: %s)", type(exc).__name__, exc)

    async def snapshot(self, imported: str | None = None, timeout: float | None = None) -> Snapshot:
        """A read-only snapshot on a pooled connection: a new one, or the one exported as `imported`."""
        assert self.pool is not None, "Database.connect() was not called"
        return await Snapshot(self).open(imported, timeout)
