"""`ctx.db.query(table).with_search_index(name, lambda q: q.search(field, text).eq(f, v))`:
full-text search in relevance order, as Convex runs it (crates/search/src/lib.rs, `search`).

The search string's first 16 terms are looked up; the last one also as a prefix, expanded to the
index's terms that start with it (alphabetically first, up to 64 terms scored in all). A document
matches when it holds at least one of those terms and equals every filter. Its score is BM25
(k1 = 1.2, b = 0.75) summed over the terms, a prefix expansion's weight halved; results come best
first, then newest first, at most 1,024 of them over all pages.

A search is one statement (server/core/sql.py `search_rank`: the statistics, then the postings),
so it needs no transaction of its own. What it read is recorded per term, as ranges of the
index's write-set keys (search/text.py: the term and the filter values, in two orders): a
committed write re-runs a live search when the document holds one of its terms (or one starting
with its last term), before or after the write, and has the filter values the search gives (when
it gives all of them or the first; otherwise those of the leading filter fields).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from server.core import keys, sql
from server.core.database import TableInfo, decode_doc
from server.core.limits import stored_bytes
from server.core.reading import Reads, cursor_body, make_cursor, num_items
from server.core.search.text import (
    MAX_CANDIDATES,
    MAX_FILTER_CONDITIONS,
    TextIndex,
    filter_lexeme,
    filter_position,
    filtered_term_key,
    prefix_range,
    query_terms,
    term_key,
)
from server.core.transaction import ReadRange, Transaction
from server.core.values import to_convex_json
from server.errors import PaginationError, RippleUsageError

Predicate = Callable[[dict[str, Any]], Any]
BATCH = 128
_CURSOR = struct.Struct(">ddH")  # score, creation time, results before it
_END = b"\xff"  # a cursor's body after the last result: where a page that ends the results ends


class SearchFilter:
    """What the function given to `with_search_index` receives: `search(field, text)` once, and
    `eq(field, value)` for filter fields."""

    def __init__(self, index: TextIndex) -> None:
        self._index = index
        self.text: str | None = None
        self.filters: list[tuple[int, Any]] = []  # (position among the filter fields, value)

    def search(self, field: str, text: str) -> SearchFilter:
        where = f"search index {self._index.table}.{self._index.name}"
        if field != self._index.search_field:
            raise RippleUsageError(
                f"{where} searches field {self._index.search_field!r}, not {field!r}"
            )
        if self.text is not None:
            raise RippleUsageError(f"{where}: search() may be called once per query")
        if not isinstance(text, str):
            raise RippleUsageError(f"{where}: the search text must be a string, not {type(text).__name__}")
        self.text = text
        return self

    def eq(self, field: str, value: Any) -> SearchFilter:
        index = self._index
        position = filter_position(index.filter_fields, field, value,
                                   f"search index {index.table}.{index.name} has no filter field {field!r} "
                                   f"(filter fields: {', '.join(index.filter_fields) or 'none'})")
        self.filters.append((position, value))
        if len(self.filters) > MAX_FILTER_CONDITIONS:
            raise RippleUsageError(
                f"search index {index.table}.{index.name}: more than {MAX_FILTER_CONDITIONS} filter conditions"
            )
        return self


class SearchQuery(Reads):
    """A search over one search index; read it with take, first, unique, collect, paginate or
    `async for`. `filter` adds a predicate checked on each result, as on other queries."""

    def __init__(self, tx: Transaction, info: TableInfo, index: TextIndex, spec: SearchFilter) -> None:
        if spec.text is None:
            raise RippleUsageError(
                f"search index {info.name}.{index.name}: the query needs q.search({index.search_field!r}, text)"
            )
        self._tx, self._info, self._index = tx, info, index
        asked = query_terms(spec.text)
        self._terms = list(dict.fromkeys(asked))
        self._prefix = asked[-1] if asked else None
        self._filters = spec.filters
        self._predicates: list[Predicate] = []
        self._read_recorded = False

    def filter(self, predicate: Predicate) -> SearchQuery:
        if not callable(predicate):
            raise RippleUsageError("filter takes a function of the document returning a bool")
        self._predicates.append(predicate)
        return self

    def order(self, order: str) -> SearchQuery:
        raise RippleUsageError("search results come in relevance order: order() cannot follow with_search_index")

    def with_index(self, *args: Any) -> SearchQuery:
        raise RippleUsageError("a query uses one index: with_index cannot follow with_search_index")

    # -- planning ----------------------------------------------------------------------------

    def _record_reads(self) -> None:
        """A range per term over the index's write-set keys (search/text.py): with every filter
        field given, the filters-first keys of all of them; else the term-first keys narrowed by
        the leading filter values given, and for the prefix term the filters-first keys of the
        first filter value when it is given (or no filter at all)."""
        index, given = self._index, dict(self._filters)
        leading = []
        for position in range(len(index.filter_fields)):
            if position not in given:
                break
            leading.append(given[position])
        every = leading if leading and len(leading) == len(index.filter_fields) else None
        for term in self._terms:
            if term == self._prefix:
                lo, hi = prefix_range(term, every if every is not None else leading[:1])
            else:
                lo = term_key(term, leading) if every is None else filtered_term_key(every, term)
                hi = lo + keys.AFTER_PREFIX
            self._tx.reads.append(ReadRange(self._info.name, index.name, lo, hi))

    # -- reading -----------------------------------------------------------------------------

    async def _ranked(
        self, after: tuple[float, float, str] | None, until: tuple[float, float, str] | None, limit: int
    ) -> list[tuple[tuple[float, float, str], dict[str, Any]]]:
        if not self._read_recorded:
            self._read_recorded = True
            self._record_reads()
        if not self._terms or limit <= 0:
            return []
        prefix = self._terms[-1] if self._prefix is None else self._prefix
        filters = sorted({filter_lexeme(position, value) for position, value in self._filters})
        statement = sql.search_rank(
            self._info.name, self._index.postings, bool(filters), after is not None, until is not None
        )
        args: list[Any] = [self._index.stats, self._terms, prefix, prefix + chr(0x10FFFF), limit]
        if filters:
            args.append(filters)
        if after is not None:
            args += after
        if until is not None:
            args += until
        rows = await self._tx.execute("fetch", statement, *args)
        self._tx.count_read(len(rows), sum(stored_bytes(r["doc"]) for r in rows))
        return [
            ((r["score"], r["creation_time"], r["id"]), decode_doc(r["id"], r["creation_time"], r["doc"]))
            for r in rows
        ]

    def _matches(self, doc: dict[str, Any]) -> bool:
        return all(p(doc) for p in self._predicates)

    async def _results(
        self, after: tuple[float, float, str] | None = None, until: tuple[float, float, str] | None = None,
        seen: int = 0, want: int | None = None,
    ) -> AsyncIterator[tuple[tuple[float, float, str], int, dict[str, Any]]]:
        """(position, results ranked up to it, document) in rank order, at most MAX_CANDIDATES
        ranked in all, in batches; `want`: how many the caller expects to need (a hint)."""
        while seen < MAX_CANDIDATES:
            batch = min(MAX_CANDIDATES - seen, BATCH if want is None or self._predicates else max(want, 1))
            rows = await self._ranked(after, until, batch)
            for position, doc in rows:
                seen += 1
                yield position, seen, doc
            if len(rows) < batch:
                return
            after = rows[-1][0]

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for _, _, doc in self._results():
            if self._matches(doc):
                yield doc

    async def take(self, n: int) -> list[dict[str, Any]]:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise RippleUsageError(f"take expects a non-negative integer, not {n!r}")
        out: list[dict[str, Any]] = []
        if n == 0:
            return out
        async for _, _, doc in self._results(want=n):
            if self._matches(doc):
                out.append(doc)
                if len(out) >= n:
                    break
        return out

    # -- pagination --------------------------------------------------------------------------

    def _fingerprint(self) -> bytes:
        h = hashlib.blake2b(digest_size=6)
        parts = [self._info.name, self._index.name, *self._terms, *(f"{p}={to_convex_json(v) if v is not keys.UNDEFINED else '?'}" for p, v in self._filters)]
        for part in parts:
            raw = str(part).encode()
            h.update(len(raw).to_bytes(4, "big") + raw)
        return h.digest()

    def _encode_cursor(self, position: tuple[float, float, str] | None, seen: int, end: bool = False) -> str:
        """A cursor at `position` (None: before the first result) with `seen` results ranked up
        to it; `end`: after the last result, wherever later writes put it."""
        if end:
            body = _END
        else:
            body = b"" if position is None else _CURSOR.pack(position[0], position[1], seen) + position[2].encode()
        return make_cursor(2, self._fingerprint(), body)

    def _decode_cursor(self, cursor: object) -> tuple[tuple[float, float, str] | None, int, bool]:
        """(position, results ranked up to it, whether it is the end cursor)."""
        body = cursor_body(cursor, 2, self._fingerprint())
        if not body or body == _END:
            return None, 0, body == _END
        if len(body) < _CURSOR.size:
            raise PaginationError("InvalidCursor", "pagination cursor is not valid")
        score, creation_time, seen = _CURSOR.unpack_from(body)
        return (score, creation_time, body[_CURSOR.size:].decode()), seen, False

    async def paginate(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        num = num_items(opts)
        cursor, end_cursor = opts.get("cursor"), opts.get("endCursor")
        first_paginate = not self._tx.paginated
        self._tx.paginated = True
        if first_paginate and end_cursor is None and self._tx.journal_in is not None:
            end_cursor = self._tx.journal_in
        after, seen, after_end = self._decode_cursor(cursor) if cursor is not None else (None, 0, False)
        until, _, to_end = self._decode_cursor(end_cursor) if end_cursor is not None else (None, 0, False)
        page: list[dict[str, Any]] = []
        last, count, more = after, seen, False
        if after_end:  # nothing comes after the end
            continue_cursor = end_cursor if end_cursor is not None else cursor
        elif end_cursor is not None:  # a fixed range: (cursor, endCursor], or to the end of the results
            if until is not None or to_end:
                async for _, ranked, doc in self._results(after, until, seen):
                    count = ranked
                    if self._matches(doc):
                        page.append(doc)
            if not to_end:
                more = count < MAX_CANDIDATES and bool(await self._ranked(until, None, 1))
            continue_cursor = end_cursor
        else:
            if num > 0:
                async for position, ranked, doc in self._results(after, None, seen, num + 1):
                    if len(page) >= num:
                        more = True
                        break
                    last, count = position, ranked
                    if self._matches(doc):
                        page.append(doc)
            else:
                more = True  # numItems 0: stay where we are
            # The last page ends at the end of the results, not at its last result, so that kept
            # live (its end is the journal) it takes in new matches that rank after that result,
            # as the last page of an index range does (server/core/query.py).
            continue_cursor = self._encode_cursor(last, count, end=not more)
        if first_paginate:
            self._tx.journal_out = continue_cursor
        return {"page": page, "isDone": not more, "continueCursor": continue_cursor, "splitCursor": None, "pageStatus": None}


def search_query(
    tx: Transaction, info: TableInfo, name: str, search_fn: Callable[[SearchFilter], Any], started: bool = False
) -> SearchQuery:
    """`ctx.db.query(table).with_search_index(name, search_fn)`; `started`: the query already
    chose an index, order or filter (refused: a search comes first)."""
    if started:
        raise RippleUsageError("with_search_index must come right after ctx.db.query(table)")
    index = next((d for d in info.derived if d.name == name and isinstance(d, TextIndex)), None)
    if index is None:
        names = [d.name for d in info.derived if isinstance(d, TextIndex)]
        raise RippleUsageError(
            f"table {info.name!r} has no search index {name!r} (search indexes: {', '.join(names) or 'none'})"
        )
    if not callable(search_fn):
        raise RippleUsageError("with_search_index takes the index name and a function of the search filter")
    spec = SearchFilter(index)
    result = search_fn(spec)
    if result is not None and result is not spec:
        raise RippleUsageError("the with_search_index function must return the filter it was given")
    return SearchQuery(tx, info, index, spec)
