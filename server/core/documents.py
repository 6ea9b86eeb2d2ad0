"""The document API functions see as `ctx.db`, over one PostgreSQL transaction.

Every read records the index key range it covered (the read set) and every write records the
old and new index keys of the document it touched (the write set); the reactivity layer compares
the two. Ranges are half-open byte ranges [lo, hi) over the keys of `server.core.keys`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from server.core import keys
from server.core.database import Catalog, TableInfo, decode_doc
from server.core.ids import new_id, table_number_of
from server.core.schema import BY_CREATION_TIME, CREATION_TIME
from server.core.values import to_convex_json
from server.errors import (
    ForbiddenOperation,
    InvalidIdError,
    LimitExceeded,
    PaginationError,
    RippleUsageError,
    TransactionConflict,
)

MAX_DOCS_READ = 32_000
MAX_DOCS_WRITTEN = 8_192
SCAN_BATCH = 128
MAX_PAGE_ITEMS = 8_192


@dataclass(frozen=True)
class ReadRange:
    table: str
    index: str
    lo: bytes
    hi: bytes  # exclusive


@dataclass
class Write:
    table: str
    id: str
    old_keys: dict[str, bytes] | None  # None: the document did not exist
    new_keys: dict[str, bytes] | None  # None: the document was deleted

    def to_json(self) -> dict[str, Any]:
        def enc(k: dict[str, bytes] | None) -> dict[str, str] | None:
            return None if k is None else {n: base64.b64encode(v).decode() for n, v in k.items()}

        return {"table": self.table, "id": self.id, "old": enc(self.old_keys), "new": enc(self.new_keys)}


class NeedsSnapshot(BaseException):
    """A query run with a one-statement budget wants a second statement: run it again in a
    snapshot transaction. A BaseException, so that `except Exception` in function code does not
    swallow it (and Transaction.needs_snapshot is set anyway)."""


@dataclass
class Transaction:
    """One function execution's view of the database."""

    conn: asyncpg.Connection
    catalog: Catalog
    writable: bool
    reads: list[ReadRange] = field(default_factory=list)
    writes: dict[str, Write] = field(default_factory=dict)
    docs_read: int = 0
    conflicted: bool = False
    # Reactive pagination (Convex "journal"): a re-run of a subscribed query ends its first
    # paginate() at the cursor the previous run ended at, so pages never gap or overlap.
    journal_in: str | None = None
    journal_out: str | None = None
    _paginated: bool = False
    _last_creation_time: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A query first runs on a connection outside any transaction, allowed one statement (which
    # is its own consistent snapshot). A second statement aborts that run (NeedsSnapshot) and
    # the caller runs the query again in a snapshot transaction. None: no limit.
    statement_budget: int | None = None
    needs_snapshot: bool = False

    async def execute(self, method: str, query: str, *args: Any) -> Any:
        if self.statement_budget is not None:
            if self.statement_budget <= 0:
                self.needs_snapshot = True  # noticed even if function code swallows the exception
                raise NeedsSnapshot()
            self.statement_budget -= 1
        async with self._lock:  # one statement at a time, even under asyncio.gather
            try:
                return await getattr(self.conn, method)(query, *args)
            except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
                self.conflicted = True
                raise TransactionConflict("transaction conflict; it will be retried") from exc
            except asyncpg.InFailedSQLTransactionError as exc:
                self.conflicted = True
                raise TransactionConflict("transaction aborted earlier") from exc

    def count_read(self, n: int) -> None:
        self.docs_read += n
        if self.docs_read > MAX_DOCS_READ:
            raise LimitExceeded(
                f"too many documents read in one function ({MAX_DOCS_READ} at most); "
                "use an index range or paginate"
            )

    def next_creation_time(self) -> float:
        now = time.time() * 1000.0
        if now <= self._last_creation_time:
            now = self._last_creation_time + 0.001
        self._last_creation_time = now
        return now


def _resolve_id(catalog: Catalog, doc_id: Any) -> TableInfo:
    number = table_number_of(doc_id)
    info = catalog.by_number.get(number)
    if info is None:
        raise InvalidIdError(f"{doc_id!r} does not belong to any table of this deployment")
    return info


class IndexRange:
    """Built by the lambda given to `with_index`: `q.eq("a", 1).gt("b", 2).lt("b", 9)`."""

    def __init__(self, table: str, index: str, fields: list[str]) -> None:
        self._table, self._index, self._fields = table, index, fields
        self._eq: list[Any] = []
        self._lower: tuple[Any, bool] | None = None  # (value, inclusive)
        self._upper: tuple[Any, bool] | None = None
        self._range_field: str | None = None

    def _expect(self, name: str, op: str) -> None:
        where = f"index {self._table}.{self._index} ({', '.join(self._fields)})"
        if self._range_field is not None:
            if op == "eq" or name != self._range_field:
                raise RippleUsageError(
                    f"{where}: after a range on {self._range_field!r} only its other bound may follow"
                )
            return
        pos = len(self._eq)
        if pos >= len(self._fields) or self._fields[pos] != name:
            expected = self._fields[pos] if pos < len(self._fields) else "nothing"
            raise RippleUsageError(
                f"{where}: fields must be constrained in index order; expected {expected!r}, got {name!r}"
            )

    def eq(self, name: str, value: Any) -> IndexRange:
        self._expect(name, "eq")
        to_convex_json(value, name)
        self._eq.append(value)
        return self

    def _bound(self, name: str, value: Any, lower: bool, inclusive: bool) -> IndexRange:
        self._expect(name, "range")
        to_convex_json(value, name)
        if (self._lower if lower else self._upper) is not None:
            raise RippleUsageError(f"index {self._table}.{self._index}: {name!r} has two {'lower' if lower else 'upper'} bounds")
        self._range_field = name
        if lower:
            self._lower = (value, inclusive)
        else:
            self._upper = (value, inclusive)
        return self

    def gt(self, name: str, value: Any) -> IndexRange:
        return self._bound(name, value, lower=True, inclusive=False)

    def gte(self, name: str, value: Any) -> IndexRange:
        return self._bound(name, value, lower=True, inclusive=True)

    def lt(self, name: str, value: Any) -> IndexRange:
        return self._bound(name, value, lower=False, inclusive=False)

    def lte(self, name: str, value: Any) -> IndexRange:
        return self._bound(name, value, lower=False, inclusive=True)

    def bytes_range(self) -> tuple[bytes, bytes]:
        prefix = keys.encode_values(self._eq)
        lo, hi = prefix, prefix + keys.AFTER_PREFIX
        if self._lower is not None:
            value, inclusive = self._lower
            lo = prefix + keys.encode_values([value])
            if not inclusive:
                lo += keys.AFTER_PREFIX
        if self._upper is not None:
            value, inclusive = self._upper
            hi = prefix + keys.encode_values([value])
            if inclusive:
                hi += keys.AFTER_PREFIX
        return lo, hi


Predicate = Callable[[dict[str, Any]], Any]


class Query:
    """`ctx.db.query(table)`: choose an index range, order and filter, then read."""

    def __init__(self, tx: Transaction, info: TableInfo) -> None:
        self._tx, self._info = tx, info
        self._index = BY_CREATION_TIME
        self._lo, self._hi = b"", keys.AFTER_PREFIX
        self._desc = False
        self._filters: list[Predicate] = []
        self._index_chosen = False
        self._order_chosen = False

    def with_index(self, name: str, range_fn: Callable[[IndexRange], Any] | None = None) -> Query:
        if self._index_chosen:
            raise RippleUsageError("with_index may be called once per query")
        fields = self._info.index_fields.get(name)
        if fields is None:
            raise RippleUsageError(
                f"table {self._info.name!r} has no index {name!r} (indexes: {', '.join(self._info.index_fields)})"
            )
        self._index, self._index_chosen = name, True
        if range_fn is not None:
            builder = IndexRange(self._info.name, name, fields)
            result = range_fn(builder)
            if result is not None and result is not builder:
                raise RippleUsageError("the with_index range function must return the builder it was given")
            self._lo, self._hi = builder.bytes_range()
        return self

    def order(self, order: str) -> Query:
        if order not in ("asc", "desc"):
            raise RippleUsageError(f"order must be 'asc' or 'desc', not {order!r}")
        if self._order_chosen:
            raise RippleUsageError("order may be called once per query")
        self._desc, self._order_chosen = order == "desc", True
        return self

    def filter(self, predicate: Predicate) -> Query:
        if not callable(predicate):
            raise RippleUsageError("filter takes a function of the document returning a bool")
        self._filters.append(predicate)
        return self

    # -- reading ----------------------------------------------------------------------------

    async def _scan(self, lo: bytes, hi: bytes, limit: int | None) -> AsyncGenerator[tuple[bytes, dict[str, Any]], None]:
        """Yield (key, doc) in order within [lo, hi); record what was covered as read."""
        tx, info = self._tx, self._info
        statement = info.sql.range[(self._index, self._desc)]
        covered_to: bytes | None = None  # the position reached so far, for the read set
        cur_lo, cur_hi = lo, hi
        yielded = 0
        try:
            while True:
                batch = SCAN_BATCH if limit is None else min(SCAN_BATCH, max(limit - yielded, 1))
                rows = await tx.execute("fetch", statement, cur_lo, cur_hi, batch)
                tx.count_read(len(rows))
                for row in rows:
                    key = bytes(row[3])
                    covered_to = key
                    yielded_doc = decode_doc(row["id"], row["creation_time"], row["doc"])
                    yield key, yielded_doc
                    yielded += 1
                if len(rows) < batch:
                    covered_to = None  # reached the end of the range
                    return
                last = bytes(rows[-1][3])
                if self._desc:
                    cur_hi = last
                else:
                    cur_lo = last + b"\x00"
        finally:
            if covered_to is None:
                tx.reads.append(ReadRange(info.name, self._index, lo, hi))
            elif self._desc:
                tx.reads.append(ReadRange(info.name, self._index, covered_to, hi))
            else:
                tx.reads.append(ReadRange(info.name, self._index, lo, covered_to + b"\x00"))

    def _matches(self, doc: dict[str, Any]) -> bool:
        return all(f(doc) for f in self._filters)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for _, doc in self._scan(self._lo, self._hi, None):
            if self._matches(doc):
                yield doc

    async def take(self, n: int) -> list[dict[str, Any]]:
        if not isinstance(n, int) or n < 0:
            raise RippleUsageError(f"take expects a non-negative integer, not {n!r}")
        out: list[dict[str, Any]] = []
        if n == 0:
            return out
        scan = self._scan(self._lo, self._hi, None if self._filters else n)
        try:
            async for _, doc in scan:
                if self._matches(doc):
                    out.append(doc)
                    if len(out) >= n:
                        break
        finally:
            await scan.aclose()
        return out

    async def collect(self) -> list[dict[str, Any]]:
        return [doc async for doc in self]

    async def first(self) -> dict[str, Any] | None:
        docs = await self.take(1)
        return docs[0] if docs else None

    async def unique(self) -> dict[str, Any] | None:
        docs = await self.take(2)
        if len(docs) > 1:
            raise RippleUsageError(
                f"unique() found more than one document in {self._info.name} "
                f"({docs[0]['_id']}, {docs[1]['_id']})"
            )
        return docs[0] if docs else None

    # -- pagination -------------------------------------------------------------------------

    def _fingerprint(self) -> bytes:
        h = hashlib.blake2b(digest_size=6)
        for part in (self._info.name.encode(), self._index.encode(), self._lo, self._hi, b"d" if self._desc else b"a"):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def _encode_cursor(self, key: bytes) -> str:
        return base64.urlsafe_b64encode(b"\x01" + self._fingerprint() + key).decode().rstrip("=")

    def _decode_cursor(self, cursor: object) -> bytes:
        if not isinstance(cursor, str):
            raise PaginationError("InvalidCursor", f"pagination cursor must be a string, not {cursor!r}")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError as exc:
            raise PaginationError("InvalidCursor", "pagination cursor is not valid") from exc
        if len(raw) < 7 or raw[0] != 1 or raw[1:7] != self._fingerprint():
            raise PaginationError("InvalidCursor", "pagination cursor belongs to a different query")
        return raw[7:]

    async def paginate(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(opts, Mapping):
            raise RippleUsageError("paginate expects {'numItems': n, 'cursor': str | None}")
        num = opts.get("numItems")
        if isinstance(num, float) and num.is_integer():
            num = int(num)
        if not isinstance(num, int) or isinstance(num, bool) or num < 0:
            raise RippleUsageError(f"paginationOpts.numItems must be a non-negative integer, not {num!r}")
        num = min(num, MAX_PAGE_ITEMS)
        lo, hi = self._lo, self._hi
        cursor, end_cursor = opts.get("cursor"), opts.get("endCursor")
        first_paginate = not self._tx._paginated
        self._tx._paginated = True
        if first_paginate and end_cursor is None and self._tx.journal_in is not None:
            end_cursor = self._tx.journal_in
        if cursor is not None:
            position = self._decode_cursor(cursor)
            if self._desc:
                hi = min(hi, position)
            else:
                lo = max(lo, position + b"\x00")
        if end_cursor is not None:
            end = self._decode_cursor(end_cursor)
            if self._desc:
                lo = max(lo, end)
            else:
                hi = min(hi, end + b"\x00")
        page: list[dict[str, Any]] = []
        last_key: bytes | None = None
        done = True
        scan = self._scan(lo, hi, None if (self._filters or end_cursor is not None) else num + 1)
        try:
            async for key, doc in scan:
                if end_cursor is None and len(page) >= num:
                    done = False
                    break
                last_key = key
                if self._matches(doc):
                    page.append(doc)
        finally:
            await scan.aclose()
        if end_cursor is not None:
            continue_cursor = end_cursor
            done = await self._nothing_after(lo if self._desc else hi)
        elif done:
            continue_cursor = self._encode_cursor(self._lo if self._desc else self._hi)
        elif last_key is None:  # numItems == 0: stay where we are
            continue_cursor = cursor if cursor is not None else self._encode_cursor(self._hi if self._desc else b"")
        else:
            continue_cursor = self._encode_cursor(last_key)
        if first_paginate:
            self._tx.journal_out = continue_cursor
        return {
            "page": page,
            "isDone": done,
            "continueCursor": continue_cursor,
            "splitCursor": None,
            "pageStatus": None,
        }

    async def _nothing_after(self, boundary: bytes) -> bool:
        """With an endCursor: is the whole query exhausted past it?"""
        lo, hi = (self._lo, boundary) if self._desc else (boundary, self._hi)
        scan = self._scan(lo, hi, 1)
        try:
            async for _ in scan:
                return False
        finally:
            await scan.aclose()
        return True


class SystemReader:
    """`ctx.db.system`: read access to system tables (`_scheduled_functions`, ...)."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def _info(self, table: str) -> TableInfo:
        if not isinstance(table, str) or not table.startswith("_"):
            raise RippleUsageError(f"{table!r} is not a system table; use ctx.db.query for user tables")
        return self._tx.catalog.table(table)

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        info = _resolve_id(self._tx.catalog, doc_id)
        if not info.name.startswith("_"):
            raise RippleUsageError(f"{doc_id} is a document of user table {info.name}; use ctx.db.get")
        return await _get(self._tx, info, doc_id)

    def query(self, table: str) -> Query:
        return Query(self._tx, self._info(table))


async def _get(tx: Transaction, info: TableInfo, doc_id: str) -> dict[str, Any] | None:
    row = await tx.execute("fetchrow", info.sql.get, doc_id)
    tx.reads.append(ReadRange(info.name, "by_id", doc_id.encode(), doc_id.encode() + b"\x00"))
    if row is None:
        return None
    tx.count_read(1)
    return decode_doc(doc_id, row["creation_time"], row["doc"])


class DatabaseReader:
    """`ctx.db` in queries."""

    def __init__(self, tx: Transaction, system: bool = False) -> None:
        self._tx = tx
        self._system_access = system  # runtime-internal writers may touch system tables
        self.system = SystemReader(tx)

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        info = _resolve_id(self._tx.catalog, doc_id)
        if info.name.startswith("_") and not self._system_access:
            raise RippleUsageError(f"{doc_id} is a document of system table {info.name}; use ctx.db.system.get")
        return await _get(self._tx, info, doc_id)

    def query(self, table: str) -> Query:
        if self._system_access and isinstance(table, str) and table.startswith("_"):
            return Query(self._tx, self._tx.catalog.table(table))
        if not isinstance(table, str) or table.startswith("_"):
            raise RippleUsageError(f"{table!r} is not a user table; system tables are under ctx.db.system")
        return Query(self._tx, self._tx.catalog.table(table))

    def normalize_id(self, table: str, doc_id: Any) -> str | None:
        """The id if it is a valid id of `table`, else None."""
        try:
            info = _resolve_id(self._tx.catalog, doc_id)
        except InvalidIdError:
            return None
        return doc_id if info.name == table else None


class DatabaseWriter(DatabaseReader):
    """`ctx.db` in mutations: reads plus insert, patch, replace and delete."""

    def _count_write(self) -> None:
        if len(self._tx.writes) >= MAX_DOCS_WRITTEN:
            raise LimitExceeded(f"too many documents written in one mutation ({MAX_DOCS_WRITTEN} at most)")

    def _keys(self, info: TableInfo, doc: Mapping[str, Any]) -> dict[str, bytes]:
        return {name: keys.index_key(doc, fields) for name, fields in info.index_fields.items()}

    def _record(self, info: TableInfo, doc_id: str, old: dict[str, bytes] | None, new: dict[str, bytes] | None) -> None:
        prior = self._tx.writes.get(doc_id)
        if prior is not None:
            prior.new_keys = new  # keep the keys from before the transaction as "old"
        else:
            self._count_write()
            self._tx.writes[doc_id] = Write(info.name, doc_id, old, new)

    async def insert(self, table: str, doc: Mapping[str, Any]) -> str:
        if not isinstance(table, str) or (table.startswith("_") and not self._system_access):
            raise RippleUsageError(f"cannot insert into {table!r}: not a user table")
        info = self._tx.catalog.table(table)
        if not isinstance(doc, Mapping):
            raise RippleUsageError(f"insert into {table}: the document must be a dict")
        fields = {k: v for k, v in doc.items() if k not in ("_id", "_creationTime")}
        if "_id" in doc or "_creationTime" in doc:
            raise RippleUsageError(f"insert into {table}: _id and _creationTime are assigned by Ripple")
        stored = info.table.validate(fields)
        doc_id = new_id(info.number)
        creation_time = self._tx.next_creation_time()
        full = {"_id": doc_id, CREATION_TIME: creation_time, **stored}
        new_keys = self._keys(info, full)
        await self._tx.execute(
            "execute", info.sql.insert, doc_id, creation_time, to_convex_json(stored), *new_keys.values()
        )
        self._record(info, doc_id, None, new_keys)
        return doc_id

    async def _load(self, doc_id: str, verb: str) -> tuple[TableInfo, dict[str, Any]]:
        info = _resolve_id(self._tx.catalog, doc_id)
        if info.name.startswith("_") and not self._system_access:
            raise ForbiddenOperation(f"cannot {verb} documents of system table {info.name}")
        row = await self._tx.execute("fetchrow", info.sql.get, doc_id)
        self._tx.reads.append(ReadRange(info.name, "by_id", doc_id.encode(), doc_id.encode() + b"\x00"))
        if row is None:
            raise RippleUsageError(f"cannot {verb} {doc_id}: no such document in {info.name}")
        self._tx.count_read(1)
        return info, decode_doc(doc_id, row["creation_time"], row["doc"])

    async def _store(self, info: TableInfo, current: dict[str, Any], fields: dict[str, Any]) -> None:
        doc_id = current["_id"]
        stored = info.table.validate(fields, doc_id=doc_id)
        full = {"_id": doc_id, CREATION_TIME: current[CREATION_TIME], **stored}
        old_keys, new_keys = self._keys(info, current), self._keys(info, full)
        await self._tx.execute("execute", info.sql.update, doc_id, to_convex_json(stored), *new_keys.values())
        self._record(info, doc_id, old_keys, new_keys)

    @staticmethod
    def _check_system_fields(doc_id: str, value: Mapping[str, Any], verb: str, current: dict[str, Any]) -> None:
        for f in ("_id", "_creationTime"):
            if f in value and value[f] != current[f]:
                raise RippleUsageError(f"{verb} {doc_id}: {f} cannot be changed")

    async def patch(self, doc_id: str, fields: Mapping[str, Any]) -> None:
        if not isinstance(fields, Mapping):
            raise RippleUsageError(f"patch {doc_id}: fields must be a dict")
        info, current = await self._load(doc_id, "patch")
        self._check_system_fields(doc_id, fields, "patch", current)
        merged = {k: v for k, v in current.items() if k not in ("_id", "_creationTime")}
        for k, v in fields.items():
            if k in ("_id", "_creationTime"):
                continue
            merged[k] = v
        await self._store(info, current, merged)

    async def replace(self, doc_id: str, doc: Mapping[str, Any]) -> None:
        if not isinstance(doc, Mapping):
            raise RippleUsageError(f"replace {doc_id}: the document must be a dict")
        info, current = await self._load(doc_id, "replace")
        self._check_system_fields(doc_id, doc, "replace", current)
        await self._store(info, current, {k: v for k, v in doc.items() if k not in ("_id", "_creationTime")})

    async def delete(self, doc_id: str) -> None:
        info, current = await self._load(doc_id, "delete")
        await self._tx.execute("execute", info.sql.delete, doc_id)
        self._record(info, doc_id, self._keys(info, current), None)
