"""`ctx.db.query(table)`: index ranges, order, filters, reading, and reactive pagination.

A query reads one index range in key order, in batches, and records in its transaction's read
set the part of the range it actually covered (all of it when it reached the end, else up to
and including the last key returned), so a live query is re-run only for writes into that part.
Pagination cursors are index keys (see docs/internals.md, Index keys). A page is split as
Convex splits it (convex-backend crates/isolate/src/environment/udf/async_syscall.rs,
`read_page_from_query`; crates/database/src/query/index_range.rs): it stops early, "SplitRequired",
at the caller's `maximumRowsRead` / `maximumBytesRead`, is "SplitRecommended" past three quarters
of those (or of a transaction's read limits) or past 6,144 documents, and always offers a
`splitCursor` in the middle of what it read, which the clients use to split pages that grew.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from server.core import keys
from server.core.absent import UNSET
from server.core.database import TableInfo, decode_doc
from server.core.ids import ID_LENGTH, table_number_of
from server.core.limits import stored_bytes, value_size
from server.core.reading import Reads, cursor_body, make_cursor, num_items
from server.core.schema import BY_CREATION_TIME, BY_ID
from server.core.search.query import SearchFilter, SearchQuery, search_query
from server.core.transaction import MAX_DOCS_READ, ROWS_SEEN, ReadRange, Transaction
from server.core.values import to_convex_json
from server.errors import InvalidIdError, RippleUsageError

SCAN_BATCH = 128
MAX_PAGE_ITEMS = 8_192
SOFT_PAGE_ITEMS = MAX_PAGE_ITEMS * 3 // 4  # more documents in a page: SplitRecommended
MAX_READ_BYTES = 16 * 1024 * 1024  # Convex's bytes read per transaction, for SplitRecommended


def _soft(limit: int) -> int:
    """Three quarters of a limit: past it, a page is SplitRecommended."""
    return limit * 3 // 4


def _read_limit(opts: Mapping[str, Any], name: str) -> int | None:
    value = opts.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RippleUsageError(f"paginationOpts.{name} must be a positive integer, not {value!r}")
    return value


def _check(name: str, value: Any) -> None:
    """A range value is a Convex value, or UNSET: the field is absent (sorting before null)."""
    if value is not UNSET:
        to_convex_json(value, name)


class IndexRange:
    """Built by the lambda given to `with_index`: `q.eq("a", 1).gt("b", 2).lt("b", 9)`."""

    def __init__(self, table: str, index: str, fields: list[str],
                 encode: Callable[[Sequence[Any]], bytes] = keys.encode_values) -> None:
        self._table, self._index, self._fields, self._encode = table, index, fields, encode
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
        _check(name, value)
        self._eq.append(value)
        return self

    def _bound(self, name: str, value: Any, lower: bool, inclusive: bool) -> IndexRange:
        self._expect(name, "range")
        _check(name, value)
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
        prefix = self._encode(self._eq)
        lo, hi = prefix, prefix + keys.AFTER_PREFIX
        if self._lower is not None:
            value, inclusive = self._lower
            lo = prefix + self._encode([value])
            if not inclusive:
                lo += keys.AFTER_PREFIX
        if self._upper is not None:
            value, inclusive = self._upper
            hi = prefix + self._encode([value])
            if inclusive:
                hi += keys.AFTER_PREFIX
        return lo, hi


Predicate = Callable[[dict[str, Any]], Any]


def _id_keys(info: TableInfo) -> Callable[[Sequence[Any]], bytes]:
    """Keys of the built-in by_id index: the id's own bytes (as in read sets), for ids of `info`."""

    def encode(ids: Sequence[Any]) -> bytes:
        for doc_id in ids:
            if table_number_of(doc_id) != info.number:
                raise InvalidIdError(f"index {info.name}.by_id: {doc_id!r} is not an id of table {info.name}")
        return "".join(ids).encode()

    return encode


def id_bound(bound: bytes) -> str:
    """A by_id key bound as the text bound PostgreSQL compares ids with. A bound is empty, the
    end (AFTER_PREFIX), an id, or an id and one more byte (just after that id: any extension)."""
    if not bound:
        return ""
    if bound == keys.AFTER_PREFIX:
        return "z" * (ID_LENGTH + 1)  # after every id
    text = bound[:ID_LENGTH].decode("ascii")
    return text + "2" if len(bound) > ID_LENGTH else text


def _same(bound: bytes) -> bytes:
    return bound

class Query(Reads):
    """`ctx.db.query(table)`: choose an index range, order and filter, then read."""

    def __init__(self, tx: Transaction, info: TableInfo) -> None:
        self._tx, self._info = tx, info
        self._index = BY_CREATION_TIME
        self._lo, self._hi = b"", keys.AFTER_PREFIX
        self._desc = False
        self._filters: list[Predicate] = []
        self._index_chosen = False
        self._order_chosen = False
        self._param: Callable[[bytes], Any] = _same  # an index key bound -> a statement parameter

    def with_index(self, name: str, range_fn: Callable[[IndexRange], Any] | None = None) -> Query:
        if self._index_chosen:
            raise RippleUsageError("with_index may be called once per query")
        fields = ["_id"] if name == BY_ID else self._info.index_fields.get(name)
        if fields is None:
            raise RippleUsageError(
                f"table {self._info.name!r} has no index {name!r} "
                f"(indexes: {', '.join([BY_ID, *self._info.index_fields])})"
            )
        self._index, self._index_chosen = name, True
        encode: Callable[[Sequence[Any]], bytes] = keys.encode_values
        if name == BY_ID:
            encode, self._param = _id_keys(self._info), id_bound
        if range_fn is not None:
            builder = IndexRange(self._info.name, name, fields, encode)
            result = range_fn(builder)
            if result is not None and result is not builder:
                raise RippleUsageError("the with_index range function must return the builder it was given")
            self._lo, self._hi = builder.bytes_range()
        return self

    def with_search_index(self, name: str, search_fn: Callable[[SearchFilter], Any]) -> SearchQuery:
        """Full-text search: `search_fn(q)` calls q.search(field, text), q.eq(field, value)."""
        started = self._index_chosen or self._order_chosen or bool(self._filters)
        return search_query(self._tx, self._info, name, search_fn, started)

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
        statement = self._info.sql.range[(self._index, self._desc)]
        covered_to: bytes | None = None  # the position reached so far, for the read set
        cur_lo, cur_hi = lo, hi
        yielded = 0
        try:
            while True:
                batch = SCAN_BATCH if limit is None else min(SCAN_BATCH, max(limit - yielded, 1))
                rows = await self._tx.execute("fetch", statement, self._param(cur_lo), self._param(cur_hi), batch)
                for row in self._taken(rows):
                    covered_to = row[0]
                    yield row
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
            self._covered(lo, hi, covered_to)

    async def _first(self, n: int) -> list[dict[str, Any]]:
        """`take(n)` of a query without filters, n <= SCAN_BATCH: `_scan`'s first batch, read
        with no generator to step through (the common `first()` and `unique()` of a live query)."""
        statement = self._info.sql.range[(self._index, self._desc)]
        lo, hi = self._lo, self._hi
        covered_to: bytes | None = None
        try:
            rows = await self._tx.execute("fetch", statement, self._param(lo), self._param(hi), n)
            taken = self._taken(rows)
            if len(rows) == n:
                covered_to = taken[-1][0]
            return [doc for _, doc in taken]
        finally:
            self._covered(lo, hi, covered_to)

    def _taken(self, rows: list[Any]) -> list[tuple[bytes, dict[str, Any]]]:
        """A batch of range rows, counted as read, as (key, doc)."""
        tx = self._tx
        tx.count_read(len(rows), sum(stored_bytes(row["doc"]) for row in rows))
        if tx.writable:  # a mutation: its patch of a document read here needs no second read
            for row in rows[:ROWS_SEEN]:  # noted before anything awaits (Transaction.savepoint)
                tx.saw_row(self._info.name, row["id"], row["creation_time"], row["doc"])
        return [(bytes(row[3]), decode_doc(row["id"], row["creation_time"], row["doc"])) for row in rows]

    def _covered(self, lo: bytes, hi: bytes, covered_to: bytes | None) -> None:
        """Record the part of [lo, hi) a scan covered, through `covered_to` (None: all of it)."""
        name = self._info.name
        if covered_to is None:
            self._tx.reads.append(ReadRange(name, self._index, lo, hi))
        elif self._desc:
            self._tx.reads.append(ReadRange(name, self._index, covered_to, hi))
        else:
            self._tx.reads.append(ReadRange(name, self._index, lo, covered_to + b"\x00"))

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
        if not self._filters and n <= SCAN_BATCH:
            return await self._first(n)
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

    # -- pagination -------------------------------------------------------------------------

    def _fingerprint(self) -> bytes:
        h = hashlib.blake2b(digest_size=6)
        for part in (self._info.name.encode(), self._index.encode(), self._lo, self._hi, b"d" if self._desc else b"a"):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def _encode_cursor(self, key: bytes) -> str:
        return make_cursor(1, self._fingerprint(), key)

    def _decode_cursor(self, cursor: object) -> bytes:
        return cursor_body(cursor, 1, self._fingerprint())

    async def paginate(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        num = num_items(opts)
        num = min(num, MAX_PAGE_ITEMS)
        max_rows, max_bytes = _read_limit(opts, "maximumRowsRead"), _read_limit(opts, "maximumBytesRead")
        lo, hi = self._lo, self._hi
        cursor, end_cursor = opts.get("cursor"), opts.get("endCursor")
        first_paginate = not self._tx.paginated
        self._tx.paginated = True
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
        status: str | None = None
        read: list[bytes] = []  # the key of each document read, for the split cursor
        size = 0  # of the documents read
        # With an endCursor the page is a fixed range, read whole: the limits do not apply.
        limited = end_cursor is None and (max_rows is not None or max_bytes is not None)
        wanted = [n for n in (None if self._filters else num + 1, None if max_rows is None else max_rows + 1)
                  if n is not None]
        scan = self._scan(lo, hi, None if end_cursor is not None or not wanted else min(wanted))
        try:
            async for key, doc in scan:
                if end_cursor is None and len(page) >= num:
                    done = False
                    break
                if limited and ((max_rows is not None and len(read) >= max_rows)
                                or (max_bytes is not None and size >= max_bytes)):
                    done, status = False, "SplitRequired"  # what was read may not fill the page
                    break
                last_key = key
                read.append(key)
                size += value_size(doc)
                if self._matches(doc):
                    page.append(doc)
        finally:
            await scan.aclose()
        if status is None and (len(read) > _soft(min(max_rows or MAX_DOCS_READ, MAX_DOCS_READ))
                               or size > _soft(min(max_bytes or MAX_READ_BYTES, MAX_READ_BYTES))
                               or len(page) > SOFT_PAGE_ITEMS):
            status = "SplitRecommended"
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
            "splitCursor": self._encode_cursor(read[len(read) // 2]) if len(read) > 2 else None,
            "pageStatus": status,
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
