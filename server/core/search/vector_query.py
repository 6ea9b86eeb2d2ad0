"""`await ctx.vector_search(table, index, vector, limit=10, filter=None)` in actions: the ids of
the documents whose vectors are most similar to `vector` by cosine similarity, as
`[{"_id": id, "_score": similarity}]`, best first (ties: by id, descending), as Convex's
`ctx.vectorSearch` (npm-packages/convex/src/server/vector_search.ts; its limits and errors:
crates/vector/src/lib.rs and qdrant_index.rs, `QdrantSchema::compile`).

- `limit`: 1 to 256, default 10.
- `filter`: `lambda q: q.eq("genre", "jazz")`, or `q.or_(q.eq(...), q.eq(...))` of up to 64
  equalities on the index's filter fields (different fields too: any one of them matching
  selects a document; Convex's filters have no AND).
- `_score` is in [-1, 1].

A search runs in a read-only snapshot of its own. It is not reactive: as in Convex, only actions
search vectors. With pgvector it walks the HNSW index (approximate: `hnsw.ef_search` is
RIPPLE_VECTOR_EF_SEARCH or the limit, whichever is larger; filtered searches use pgvector 0.8's
iterative scan), and when that finds fewer than `limit` documents it runs the exact scan instead,
so a search finds `limit` documents whenever that many match. Without pgvector, or with
RIPPLE_VECTOR_SEARCH=exact, or where the index has no HNSW index (search/vector.py), every search
is an exact scan of the documents that match the filter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.core import sql
from server.core.database import Catalog
from server.core.search.text import filter_lexeme, filter_position
from server.core.search.vector import VectorColumns
from server.errors import RippleUsageError, ValueValidationError

MAX_LIMIT = 256  # Convex: MAX_VECTOR_RESULTS
DEFAULT_LIMIT = 10  # Convex: DEFAULT_VECTOR_LIMIT
MAX_FILTER_TERMS = 64  # Convex: MAX_FILTER_LENGTH, equalities in one filter

Filter = Callable[["VectorFilter"], Any]


class FilterExpression:
    """What `q.eq` and `q.or_` return: an OR of equalities, as (filter field position, value)."""

    def __init__(self, terms: list[tuple[int, Any]]) -> None:
        self.terms = terms

    def eq(self, *args: Any) -> FilterExpression:
        raise RippleUsageError(
            "a vector search filter is one q.eq(field, value) or q.or_(...) of them: conditions "
            "cannot be chained (vector filters have no AND, as in Convex)"
        )


class VectorFilter:
    """What the `filter` function receives (Convex's VectorFilterBuilder): `eq` and `or_`."""

    def __init__(self, where: str, index: VectorColumns) -> None:
        self._where = where
        self._index = index

    def eq(self, field: str, value: Any) -> FilterExpression:
        index = self._index
        try:
            position = filter_position(index.filter_fields, field, value,
                                       f"{self._where}: filter on {field!r}, which is not a filter field of the index "
                                       f"(filter_fields: {', '.join(index.filter_fields) or 'none'})")
        except ValueValidationError as exc:
            raise RippleUsageError(f"{self._where}: q.eq({field!r}, ...): {exc}") from None
        return FilterExpression([(position, value)])

    def or_(self, *expressions: FilterExpression) -> FilterExpression:
        if not expressions:
            raise RippleUsageError(f"{self._where}: q.or_() needs at least one q.eq(...)")
        terms: list[tuple[int, Any]] = []
        for e in expressions:
            if not isinstance(e, FilterExpression):
                raise RippleUsageError(f"{self._where}: q.or_ takes q.eq(...) and q.or_(...) expressions, not {e!r}")
            terms += e.terms
        return FilterExpression(terms)


@dataclass(frozen=True)
class VectorQuery:
    """A checked search: the index, the query vector scaled to length 1, the limit, and the
    filter tokens of its equalities (none: no filter)."""

    index: VectorColumns
    vector: list[float]
    limit: int
    tokens: list[str]


def _query_vector(where: str, vector: Any, dimensions: int) -> list[float]:
    if isinstance(vector, (str, bytes)) or not isinstance(vector, Sequence):
        hint = " (a numpy array: pass array.tolist())" if hasattr(vector, "tolist") else ""
        raise RippleUsageError(f"{where}: vector must be a list of numbers, not {type(vector).__name__}{hint}")
    if len(vector) != dimensions:
        raise RippleUsageError(
            f"{where}: expected a vector with {dimensions} dimensions, received {len(vector)}"
        )
    out = []
    for i, x in enumerate(vector):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise RippleUsageError(f"{where}: vector[{i}] is {type(x).__name__}, not a number")
        value = float(x)
        if not math.isfinite(value):
            raise RippleUsageError(f"{where}: vector[{i}] is {value}; a vector holds finite numbers")
        out.append(value)
    norm = math.hypot(*out)
    if norm == math.inf:
        biggest = max(abs(x) for x in out)
        out = [x / biggest for x in out]
        norm = math.hypot(*out)
    if norm == 0.0:
        raise RippleUsageError(f"{where}: the vector is all zeros, and cosine similarity is undefined for it")
    return [x / norm for x in out]


def _limit(where: str, limit: Any) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise RippleUsageError(f"{where}: limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def _tokens(where: str, index: VectorColumns, filter_fn: Filter | None) -> list[str]:
    if filter_fn is None:
        return []
    if not callable(filter_fn):
        raise RippleUsageError(f"{where}: filter must be a function such as lambda q: q.eq(field, value)")
    expression = filter_fn(VectorFilter(where, index))
    if not isinstance(expression, FilterExpression):
        raise RippleUsageError(f"{where}: the filter function must return q.eq(...) or q.or_(...), not {expression!r}")
    tokens = list(dict.fromkeys(filter_lexeme(position, value) for position, value in expression.terms))
    if len(tokens) > MAX_FILTER_TERMS:
        raise RippleUsageError(f"{where}: the filter has {len(tokens)} equalities, over the limit of {MAX_FILTER_TERMS}")
    return tokens


def prepare(catalog: Catalog, table: Any, index: Any, vector: Any, limit: Any = None,
            filter_fn: Filter | None = None) -> VectorQuery:
    """Check a search's arguments (RippleUsageError naming what is wrong). `vector` may also be
    Convex's query object, `{"vector": [...], "limit": n, "filter": fn}`."""
    if not isinstance(table, str) or table.startswith("_"):
        raise RippleUsageError(f"vector_search: {table!r} is not a user table")
    info = catalog.table(table)
    found = next((d for d in info.derived if d.name == index and isinstance(d, VectorColumns)), None)
    if found is None:
        names = [d.name for d in info.derived if isinstance(d, VectorColumns)]
        raise RippleUsageError(
            f"table {table!r} has no vector index {index!r} (vector indexes: {', '.join(names) or 'none'})"
        )
    where = f"vector search on {table}.{index}"
    if isinstance(vector, Mapping):
        unknown = sorted(set(vector) - {"vector", "limit", "filter"})
        if unknown or limit is not None or filter_fn is not None:
            raise RippleUsageError(f"{where}: give vector, limit and filter either as one dict or as arguments")
        vector, limit, filter_fn = vector.get("vector"), vector.get("limit"), vector.get("filter")
    return VectorQuery(found, _query_vector(where, vector, found.dimensions), _limit(where, limit),
                       _tokens(where, found, filter_fn))


async def run(conn: Any, query: VectorQuery, exact: bool, ef_search: int) -> tuple[list[dict[str, Any]], str]:
    """Search on `conn` (in a read-only transaction); the results and which way they were
    found: "exact", "approximate" (the HNSW index may serve it: the planner decides; a small
    table it scans), or "approximate+exact" (that found fewer than `limit`: the exact scan ran)."""
    index = query.index
    filtered = bool(query.tokens)
    args: list[Any] = [query.vector, query.limit] + ([query.tokens] if filtered else [])
    # A plan for these values: a generic plan of a prepared statement guesses how many documents
    # the filter selects (0.5%) and would then sort them all rather than walk the HNSW index.
    names, values = ["plan_cache_mode"], ["force_custom_plan"]
    approximate = index.pgvector and not exact and index.method != "exact"
    if approximate:
        names.append("hnsw.ef_search")
        values.append(str(max(ef_search, query.limit)))
        if filtered and index.iterative_scan:
            names.append("hnsw.iterative_scan")
            values.append("relaxed_order")
    await conn.execute(sql.SET_LOCAL, names, values)
    if not index.pgvector:
        rows = await conn.fetch(sql.vector_search_float8(index.table, index.name, filtered), *args)
        path = "exact"
    else:
        def statement(order: str) -> str:
            return sql.vector_search_pgvector(index.table, index.name, index.vector_schema, index.dimensions,
                                              filtered, order)

        if not approximate:
            rows, path = await conn.fetch(statement("exact"), *args), "exact"
        else:
            rows, path = await conn.fetch(statement(index.method), *args), "approximate"
            if len(rows) < query.limit:
                rows, path = await conn.fetch(statement("exact"), *args), "approximate+exact"
    ranked = sorted(((float(r["score"]), r["id"]) for r in rows), reverse=True)
    return [{"_id": doc_id, "_score": max(-1.0, min(1.0, score))} for score, doc_id in ranked], path
